import numpy as np
import pytest

from solvers import Problem, mixdq_search, solve


def mixdq_problem(L=40, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.where(rng.random(L) < 0.5, "content", "quality")
    params = rng.integers(100, 5000, L).astype(float)
    keys = [[2, 4, 8] if g == "content" else [4, 8] for g in groups]
    wbits = [params[i] * np.array(k, float) for i, k in enumerate(keys)]
    sens = rng.lognormal(0, 1, L)
    sqnr = [sens[i] * 4.0 ** -np.array(k, float) if g == "quality" else np.zeros(len(k))
            for i, (k, g) in enumerate(zip(keys, groups, strict=True))]
    ssim = [sens[i] * 2.0 ** -np.array(k, float) if g == "content" else np.zeros(len(k))
            for i, (k, g) in enumerate(zip(keys, groups, strict=True))]
    return Problem(keys=keys, costs={"wbits": wbits}, losses={"sqnr": sqnr, "ssim": ssim}, groups=groups)


def test_every_plan_keeps_its_band_and_the_mean():
    p = mixdq_problem()
    res = mixdq_search(p, target=5.0, backend="cbc", band=0.1, k_grid=[0.6, 0.8, 1.0], b_points=2)
    assert res.plans
    params = p.costs["wbits"][:, 0] / np.array([k[0] for k in p.keys])
    for plan in res.plans:
        for g, t in plan.group_targets.items():
            idx = [i for i, lab in enumerate(p.groups) if lab == g]
            mean = plan.solution.constraint_totals.get(g, None)
            bits = np.array([plan.solution.keys[i] for i in idx], float)
            mean = (bits * params[idx]).sum() / params[idx].sum()
            assert abs(mean - t) <= 0.1 + 1e-9
        assert plan.group_targets["content"] == pytest.approx(plan.k * plan.group_targets["quality"])


def test_default_band_on_a_fine_grained_problem():
    p = mixdq_problem(L=120, seed=3)
    res = mixdq_search(p, target=5.5, backend="scip", k_grid=[0.7, 0.9], b_points=2)
    params = p.costs["wbits"][:, 0] / np.array([k[0] for k in p.keys])
    for plan in res.plans:
        for g, t in plan.group_targets.items():
            idx = [i for i, lab in enumerate(p.groups) if lab == g]
            bits = np.array([plan.solution.keys[i] for i in idx], float)
            assert abs((bits * params[idx]).sum() / params[idx].sum() - t) <= 0.02 + 1e-9
    assert all("outside" in why or "infeasible" in why for *_, why in res.skipped)


def test_pick_callback_chooses_and_registry_entry():
    p = mixdq_problem()
    res = mixdq_search(p, target=5.0, backend="cbc", band=0.1, pick=lambda s: -s.objective, k_grid=[0.6, 0.8, 1.0], b_points=2)
    assert res.best.objective == pytest.approx(max(pl.solution.objective for pl in res.plans))
    best = solve(p, "mixdq", target=5.0, backend="cbc", band=0.1, k_grid=[0.6, 0.8, 1.0], b_points=2)
    assert best.objective == pytest.approx(min(pl.solution.objective for pl in res.plans))


def test_needs_groups():
    p = mixdq_problem().replace(groups=None)
    with pytest.raises(ValueError, match="groups"):
        mixdq_search(p, target=5.0)
