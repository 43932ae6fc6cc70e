"""MixDQ's procedure on plain numbers: per-group ILPs with the ±0.02 band, the (B, k) sweep, its skip
rule, the dB objective, the candidates, the pick, and the activation stage after the weights."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers import Problem, mixdq_act_search, mixdq_search, solve

W_ALL, A_ALL = (2, 4, 8, 16), (4, 8, 16)
SMALL = dict(k_grid=[0.6, 0.8, 1.0], b_points=2)


def mixdq_problem(L=40, seed=0):
    """Weight-only keys as MixDQ offers them: quality {4, 8}, content {2, 4, 8}."""
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


def pair_problem(L=60, seed=0, abits=True):
    """(w, a) keys for every layer (2/4/8/16 × 4/8/16), losses = weight loss + activation loss (as
    `build_problem` adds them), sizes `wbits` = params·w and `abits` = act elements·a."""
    rng = np.random.default_rng(seed)
    groups = np.array(["quality"] * (L // 2) + ["content"] * (L - L // 2))
    params, acts = rng.integers(100, 5000, L).astype(float), rng.integers(50, 3000, L).astype(float)
    ws, as_ = rng.lognormal(0, 1, L), rng.lognormal(0, 1, L)
    as_[[0, L // 2]] = 1e3  # one activation per group far more sensitive than the rest
    keys = [[(w, a) for w in W_ALL for a in A_ALL] for _ in range(L)]
    wl = lambda i, w: 0.0 if w == 16 else ws[i] * 4.0 ** -w  # noqa: E731
    al = lambda i, a: 0.0 if a == 16 else as_[i] * 4.0 ** -a  # noqa: E731
    loss = [[wl(i, w) + al(i, a) for w, a in keys[i]] for i in range(L)]
    zero = [[0.0] * len(keys[i]) for i in range(L)]
    is_q = groups == "quality"
    costs = {"wbits": [[params[i] * w for w, _ in keys[i]] for i in range(L)]}
    if abits:
        costs["abits"] = [[acts[i] * a for _, a in keys[i]] for i in range(L)]
    return Problem(keys=keys, costs=costs, groups=groups, names=[f"l{i}" for i in range(L)],
                   losses={"sqnr": [loss[i] if is_q[i] else zero[i] for i in range(L)],
                           "ssim": [zero[i] if is_q[i] else loss[i] for i in range(L)]})  # fmt: skip


def group_mean(problem, solution, group, resource, index):
    idx = [i for i, g in enumerate(problem.groups) if g == group]
    ch = solution.choice
    cost = problem.costs[resource][idx, ch[idx]]
    bits = np.array([solution.keys[i][index] if index is not None else solution.keys[i] for i in idx], float)
    return cost.sum() / (cost / bits).sum()


def test_every_plan_keeps_its_band_and_the_mean():
    p = mixdq_problem()
    res = mixdq_search(p, target=5.0, backend="cbc", band=0.1, **SMALL)
    assert res.plans
    for plan in res.plans:
        for g, t in plan.group_targets.items():
            assert abs(group_mean(p, plan.solution, g, "wbits", None) - t) <= 0.1 + 1e-9
        assert plan.group_targets["content"] == pytest.approx(plan.k * plan.group_targets["quality"])


def test_default_band_on_a_fine_grained_problem():
    p = mixdq_problem(L=120, seed=3)
    res = mixdq_search(p, target=5.5, k_grid=[0.7, 0.9], b_points=2)
    for plan in res.plans:
        for g, t in plan.group_targets.items():
            assert abs(group_mean(p, plan.solution, g, "wbits", None) - t) <= 0.02 + 1e-9
    assert all("outside" in why or "infeasible" in why for *_, why in res.skipped)


def test_faithful_candidates_and_group_ranges():
    """Offered 2/4/8/16 everywhere, MixDQ still gives quality layers 4/8 and content layers 2/4/8, never
    fp16, and skips cells whose quality target leaves [4, 8] or content target [2, 8]."""
    p = pair_problem()
    res = mixdq_search(p, 3.6, act_target=None, k_grid=[0.46, 0.7, 1.2], b_points=3)
    for plan in res.plans:
        w = {g: {plan.solution.keys[i][0] for i, lab in enumerate(p.groups) if lab == g} for g in ("quality", "content")}
        assert w["quality"] <= {4, 8} and w["content"] <= {2, 4, 8}
        assert 4 <= plan.group_targets["quality"] <= 8 and 2 <= plan.group_targets["content"] <= 8
    assert any("quality outside (4.0, 8.0)" in why for *_, why in res.skipped)
    assert {k[1] for k in res.best.keys} == {16}
    with pytest.raises(ValueError, match="infinite dB"):  # fp16 has no finite SQNR to sum
        mixdq_search(p, 3.6, act_target=None, candidates=None)
    ours = mixdq_search(p, 3.6, act_target=None, candidates=None, group_ranges=None, objective="degradation",
                        k_grid=[0.46, 0.7, 1.2], b_points=3)  # fmt: skip
    assert any({plan.solution.keys[i][0] for i in range(30)} & {2, 16} for plan in ours.plans)  # quality: 2 or 16
    assert len(ours.plans) > len(res.plans)  # ranges from the candidates (2..16) skip fewer cells


def test_objective_sums_db_as_mixdq_does():
    """Two quality layers of one size, one must take 8 bits: +30 dB for A (noise 0.1 → 1e-4), +20 dB for B
    (noise 1 → 0.01). MixDQ maximises summed dB (A gets 8 bits); the noise-power objective picks B."""
    keys = [[4, 8]] * 2 + [[2, 4, 8]] * 2
    noise = [[0.1, 1e-4], [1.0, 0.01], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    ssim = [[0.0, 0.0], [0.0, 0.0], [0.3, 0.1, 0.01], [0.2, 0.05, 0.02]]
    p = Problem(keys=keys, costs={"wbits": [[4, 8], [4, 8], [2, 4, 8], [2, 4, 8]]}, groups=["quality"] * 2 + ["content"] * 2,
                losses={"sqnr": noise, "ssim": ssim})  # fmt: skip
    one_cell = dict(k_grid=[1.0], b_points=1, b_span=0.0)  # B = 6, r = 1: both group targets 6
    assert mixdq_search(p, 6.0, **one_cell).best.keys[:2] == (8, 4)
    assert mixdq_search(p, 6.0, objective="degradation", **one_cell).best.keys[:2] == (4, 8)
    with pytest.raises(ValueError, match="objective must be one of"):
        mixdq_search(p, 6.0, objective="db", **one_cell)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_group_ilp_is_mixdq_argmax(seed):
    """On small groups, each cell's quality plan maximises Σ dB within the band (brute force)."""
    rng = np.random.default_rng(seed)
    n = 6
    keys = [[4, 8]] * n + [[2, 4, 8]] * n
    size = rng.integers(1, 20, 2 * n).astype(float)
    db = np.sort(rng.uniform(0, 60, (n, 2)), axis=1)
    p = Problem(keys=keys, costs={"wbits": [size[i] * np.array(k, float) for i, k in enumerate(keys)]},
                losses={"sqnr": [10 ** (-d / 10) for d in db] + [np.zeros(3)] * n,
                        "ssim": [np.zeros(2)] * n + [rng.uniform(0, 0.1, 3) for _ in range(n)]},
                groups=["quality"] * n + ["content"] * n)  # fmt: skip
    try:
        res = mixdq_search(p, 5.5, k_grid=[0.6, 0.9], b_points=1, b_span=0.0, band=0.3)
    except ValueError:
        return  # no cell feasible for this draw
    for plan in res.plans:
        t, W = plan.group_targets["quality"], size[:n].sum()
        best = max(sum(db[i, b] for i, b in enumerate(c)) for c in itertools.product((0, 1), repeat=n)
                   if abs(sum(size[i] * (4, 8)[b] for i, b in enumerate(c)) - t * W) <= 0.3 * W + 1e-9)
        got = sum(db[i, (4, 8).index(plan.solution.keys[i])] for i in range(n))
        assert got == pytest.approx(best, abs=1e-6)


def test_pick_callback_and_the_fallbacks():
    p = mixdq_problem()
    calls = []
    res = mixdq_search(p, target=5.0, band=0.1, pick=lambda s: calls.append(1) or -s.objective, **SMALL)
    assert len(calls) == len(res.plans) and res.pick.startswith("images")
    assert res.best.objective == pytest.approx(max(pl.solution.objective for pl in res.plans))
    assert res.best.info["record"]["mixdq"]["pick"] == res.pick
    top = max(pl.target for pl in res.plans)
    at_top = [pl for pl in res.plans if pl.target == top]
    noise = lambda s: float(p.losses["sqnr"][np.arange(p.n_items), s.choice].sum())  # noqa: E731
    fallback = solve(p, "mixdq", target=5.0, band=0.1, **SMALL)  # no images: lowest output noise at the top B
    assert noise(fallback) == pytest.approx(min(noise(pl.solution) for pl in at_top))
    assert "no images: lowest predicted output noise (sqnr) at B = 5" in fallback.info["record"]["mixdq"]["pick"]
    loss = solve(p, "mixdq", target=5.0, band=0.1, fallback="loss", **SMALL)
    assert loss.objective == pytest.approx(min(pl.solution.objective for pl in at_top))


def test_activation_stage_after_the_weights():
    """Weights first (activations fp16), then activations: the ceil(1%) worst activation of each group at
    8 bits stays fp16, the others get 4 or 8 bits with their group's mean within ±0.02 of its target."""
    p = pair_problem()
    grid = dict(k_grid=[0.6, 0.8], b_points=2, act_k_grid=[0.94, 1.0], act_b_points=2)
    res = mixdq_search(p, 4.5, **grid)
    weights_only = mixdq_search(p, 4.5, act_target=None, **grid)
    assert [k[0] for k in res.best.keys] == [k[0] for k in weights_only.best.keys]
    assert {k[1] for k in weights_only.best.keys} == {16}
    assert set(res.kept_fp16) == {"l0", "l30"}  # 1 of 30 per group: the very sensitive one
    for plan in res.act_plans:
        keys = plan.solution.keys
        assert keys[0][1] == keys[30][1] == 16
        assert {k[1] for i, k in enumerate(keys) if i not in (0, 30)} <= {4, 8}
        for g, t in plan.group_targets.items():
            idx = [i for i, lab in enumerate(p.groups) if lab == g and i not in (0, 30)]
            cost = p.costs["abits"][idx, plan.solution.choice[idx]]
            assert abs(cost.sum() / (cost / np.array([keys[i][1] for i in idx])).sum() - t) <= 0.02 + 1e-9
    record = res.best.info["record"]["mixdq"]
    assert record["act"]["fp16"] == ["l0", "l30"] and record["act"]["cells"] == len(res.act_plans)


def test_act_search_alone_and_its_refusals():
    p = pair_problem()
    weights = [p.keys[i].index((8, 16)) for i in range(p.n_items)]
    res = mixdq_act_search(p, weights, 7.7, k_grid=[0.94, 1.02], b_points=2)
    assert all(k[0] == 8 for k in res.best.keys) and res.plans
    assert math.ceil(0.01 * 30) * 2 == len(res.kept_fp16)
    with pytest.raises(ValueError, match="needs activation sizes"):
        mixdq_search(pair_problem(abits=False), 4.5, k_grid=[0.6], b_points=1)
    assert mixdq_search(pair_problem(abits=False), 4.5, k_grid=[0.6, 0.8], b_points=2, act_target=None).plans


def test_needs_groups_and_candidates():
    p = mixdq_problem().replace(groups=None)
    with pytest.raises(ValueError, match="groups"):
        mixdq_search(p, target=5.0)
    only8 = Problem(keys=[[8], [8]], costs={"wbits": [[8], [8]]}, losses={"sqnr": [[0.1], [0.0]], "ssim": [[0.0], [0.1]]},
                    groups=["quality", "content"], names=["a", "b"])  # fmt: skip
    with pytest.raises(ValueError, match="layer 'b' offers none of MixDQ's weight bits"):
        mixdq_search(only8, target=8.0, candidates={"quality": (8,), "content": (2, 4)})
