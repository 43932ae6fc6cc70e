import numpy as np
import pytest

from solvers import Constraint, EvolutionConfig, Problem, StepProblem, quad_groups, solve, solve_evolution
from solvers.all_or_nothing import groups_of
from solvers.bruteforce import solve_bruteforce

from .solver_strategies import pruning_problem

BITS = [5, 6, 7, 8]


def step_problem(L=30, G=4, seed=0):
    rng = np.random.default_rng(seed)
    keys = [(w, a) for w in BITS for a in BITS]
    macs = rng.integers(100, 10_000, L).astype(float)
    bitops = macs[:, None] * np.array([w * a for w, a in keys], float)[None]
    sens = rng.lognormal(0, 1, (G, L, 1))
    step = sens * (2.0 ** -np.array([w for w, _ in keys], float) + 2.0 ** -np.array([a for _, a in keys],
                                                                                      float))[None, None]
    ceiling = float((macs * 36).sum())  # W6A6, as TMPQ-DM
    groups = quad_groups(G)
    p = Problem(keys=[keys] * L, costs={"bitops": bitops}, losses={"m": step.sum(0)},
                constraints=[Constraint("bitops", upper=ceiling)])
    tl = [rng.random(b - a) * 0.01 for a, b in groups]
    return StepProblem(p, {"m": step}, groups, timestep_loss=tl)


def test_quad_groups_match_tmpq():
    assert quad_groups(5) == [(0, 50), (50, 200), (200, 450), (450, 800), (800, 1000)]
    assert [b for _, b in quad_groups(10)][:-1] == [9, 39, 88, 158, 246, 355, 483, 632, 800]


def test_ceiling_improvement_and_reproducibility():
    sp = step_problem()
    cfg = EvolutionConfig(epochs=8, seed=3)
    a = solve_evolution(sp, config=cfg)
    b = solve_evolution(sp, config=cfg)
    c = solve_evolution(sp, config=EvolutionConfig(epochs=8, seed=4))
    assert a.keys == b.keys and a.info["kept_steps"] == b.info["kept_steps"]
    assert a.keys != c.keys or a.info["kept_steps"] != c.info["kept_steps"]
    hist = a.info["history"]
    assert all(x >= y for x, y in zip(hist, hist[1:], strict=False)) and hist[-1] < hist[0]
    assert a.constraint_totals["bitops"] <= sp.problem.constraints[0].upper
    for t, (lo, hi) in zip(a.info["kept_steps"], sp.step_groups, strict=True):
        assert lo <= t < hi


def test_every_population_member_respects_ceiling(monkeypatch):
    import solvers.evolution as ev

    sp = step_problem(L=12)
    seen = []
    real = ev.UnitModel.feasible

    def spy(self, choice, rtol=1e-9):
        ok = real(self, choice, rtol)
        seen.append(ok)
        return ok

    monkeypatch.setattr(ev.UnitModel, "feasible", spy)
    sol = solve_evolution(sp, config=EvolutionConfig(epochs=3))
    assert sol.constraint_totals["bitops"] <= sp.problem.constraints[0].upper
    assert sp.problem.violations(sol.choice) == {}
    assert len(seen) >= 50  # every candidate admitted to the population went through the check


def test_evaluate_callback_reranks_and_plain_problem_works():
    sp = step_problem(L=10)
    calls = []

    def evaluate(sol, steps):
        calls.append(steps)
        return -sol.objective  # prefer the worst by surrogate: the callback must win

    s = solve_evolution(sp, config=EvolutionConfig(epochs=2, rerank_top=5), evaluate=evaluate)
    assert len(calls) == 5 and s.info["evaluations"] is not None
    # the pick is the finalist with the lowest callback score, i.e. the worst surrogate among the top 5
    assert min(s.info["evaluations"]) == pytest.approx(-s.objective)
    assert max(s.info["evaluations"]) > min(s.info["evaluations"])
    plain = solve(sp.flatten(), "evolution", config=EvolutionConfig(epochs=3))
    assert plain.info["kept_steps"] == ()


# --- pruning: all-or-nothing groups (LAPTOP-Diff blocks) mixed with per-layer bits -------------------

def _pruned_units(p: Problem, sol) -> list[tuple[bool, ...]]:
    return [tuple(sol.keys[i] == "pruned" for i in g.items) for g in groups_of(p)]


@pytest.mark.parametrize("resource", ["bytes", "bitops"])
def test_evolution_with_pruning_reaches_the_bruteforce_optimum(resource):
    """15 random 6-layer problems per resource (6·7^5 = 100,842 choices; budgets 5-60 % of the largest
    total, so some optima prune a unit and some do not) against brute force.

    Tolerance: TMPQ-DM's evolution is a heuristic with no optimality guarantee. Measured on 60 seeds per
    resource (default config: 50 × 20 epochs), it found the exact optimum on 58/59 feasible byte problems
    and 59/60 BitOPs problems, the two misses 25 % and 9 % above it (local optima: another seed finds
    them). So: exact on at least 90 % of the feasible instances, and never more than 30 % worse. A search
    that could not prune would fail it: the optimum prunes in about a third of the instances."""
    exact, feasible, prunes = 0, 0, 0
    for seed in range(15):
        p = pruning_problem(seed, resource=resource)
        best = solve_bruteforce(p)
        if best.status == "infeasible":
            with pytest.raises(ValueError, match="no candidate"):
                solve_evolution(p)
            continue
        feasible += 1
        sol = solve_evolution(p, seed=seed)
        assert p.violations(sol.choice) == {}
        assert sol.constraint_totals["budget"] <= p.constraint("budget").upper
        assert all(len(set(u)) == 1 for u in _pruned_units(p, sol)), sol.keys
        assert sol.objective <= 1.3 * best.objective + 1e-12, (seed, sol.keys, best.keys)
        exact += sol.objective == pytest.approx(best.objective, rel=1e-9)
        prunes += any(all(u) for u in _pruned_units(p, best))
    assert exact >= 0.9 * feasible and feasible >= 10
    assert prunes >= 2


def test_evolution_prunes_when_only_pruning_fits_and_records_the_group():
    # below what bits alone can reach: 90 % of the cheapest all-4-bit plan
    p = pruning_problem(1)
    cheapest_bits = sum(min(c for k, c in zip(ks, row, strict=False) if k != "pruned")
                        for ks, row in zip(p.keys, p.costs["bytes"], strict=True))
    p = p.replace(constraints=[*p.constraints[:-1], Constraint("bytes", upper=0.9 * cheapest_bits, name="budget")])
    sol = solve_evolution(p)
    best = solve_bruteforce(p)
    assert sol.objective == pytest.approx(best.objective)
    assert sol.info["groups_taken"] and all(g.startswith("pruned:") for g in sol.info["groups_taken"])
    taken = {g.name for g in groups_of(p) if all(sol.keys[i] == "pruned" for i in g.items)}
    assert taken == set(sol.info["groups_taken"])


def test_partial_pruning_never_enters_the_population(monkeypatch):
    """Layers 1-2 and 4 would take "pruned" alone at no loss and no bytes; every candidate the search
    admits is checked, and none prunes part of a unit."""
    import solvers.evolution as ev

    p = pruning_problem(3, budget_frac=0.3)
    groups = groups_of(p)
    admitted = []
    real = ev.UnitModel.feasible

    def spy(self, choice, rtol=1e-9):
        ok = real(self, choice, rtol)
        if ok:
            item = self.decode(choice)
            admitted.append([{p.keys[i][item[i]] == "pruned" for i in g.items} for g in groups])
        return ok

    monkeypatch.setattr(ev.UnitModel, "feasible", spy)
    solve_evolution(p, config=EvolutionConfig(epochs=5))
    assert len(admitted) >= 50
    assert all(len(s) == 1 for cand in admitted for s in cand)
    assert any(s == {True} for cand in admitted for s in cand)  # pruning was explored


def test_start_with_a_pruned_unit_and_partial_start_refused():
    p = pruning_problem(2, budget_frac=0.6)
    full = [p.keys[i].index("pruned") if i in (0, 1, 2) else 0 for i in range(p.n_items)]
    sol = solve_evolution(p, start=full, config=EvolutionConfig(epochs=1))
    assert p.violations(sol.choice) == {}
    with pytest.raises(ValueError, match="only some"):
        solve_evolution(p, start=[p.keys[0].index("pruned")] + [0] * (p.n_items - 1))


def test_step_fitness_scores_whole_step_sets_once_each():
    """A measured cost of the whole kept set (steps that only work together) replaces the per-group sum."""
    from solvers.problem import Constraint, Problem, StepProblem

    p = Problem(keys=[[4, 8]] * 3, costs={"bits": [[4, 8]] * 3}, losses={"q": [[1.0, 0.0]] * 3},
                constraints=[Constraint("bits", upper=24)])
    sp = StepProblem(p, {"q": [[[1.0, 0.0]] * 3] * 2}, [(0, 2), (2, 4)])
    calls = []

    def joint(ts):  # only the pair (1, 3) is good; neither step alone helps (not additive)
        calls.append(ts)
        return 0.0 if ts == (1, 3) else 1.0

    sol = solve_evolution(sp, step_fitness=joint, seed=0)
    assert sol.info["kept_steps"] == (1, 3)
    assert len(calls) == len(set(calls)) <= 4 and sol.info["step_sets_measured"][(1, 3)] == 0.0
