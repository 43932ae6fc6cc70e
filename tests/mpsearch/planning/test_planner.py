"""The one `solve` (profile + budget → Plan), `search` and the Pareto front, on a synthetic profile of the
SD 1.5 meta inventory; dispatch through the solver registry."""

from dataclasses import dataclass

import numpy as np
import pytest

from mpsearch.model import inventory
from mpsearch.planning.budget import Budget, BudgetInfeasible
from mpsearch.planning.cost import model_bytes
from mpsearch.planning.planner import SolveOptions, solve
from mpsearch.planning.problem import SearchSpace
from solvers.registry import SOLVERS, register_solver

from .profiles import synthetic_profile


@pytest.fixture(scope="module")
def inv():
    return inventory("sd15")


def test_solve_respects_byte_budget_and_prefers_sensitive_layers(inv):
    df = synthetic_profile(inv)
    plan = solve((df, inv), "30%", space=SearchSpace(weight_only=True))
    limit = Budget.parse("30%").resolve(inv)
    assert plan.predicted["bytes"] == model_bytes(inv, plan.w_bits()) <= limit
    assert plan.predicted["bytes"] > 0.97 * limit  # it spends the budget
    plan.validate(inv)
    assert {b.a_bits for b in plan.layers.values()} == {16}
    # the most sensitive layer gets at least as many bits as the least sensitive one
    sens = df[(df.tensor == "weight") & (df.bits == 2)].set_index("layer").degradation
    assert plan.layers[sens.idxmax()].w_bits >= plan.layers[sens.idxmin()].w_bits


def test_mean_bits_and_bitops_budgets(inv):
    df = synthetic_profile(inv)
    plan = solve((df, inv), "4bits", space=SearchSpace(weight_only=True))
    assert plan.predicted["mean_w_bits"] <= 4 + 1e-9
    plan = solve((df, inv), "20%bitops")
    assert plan.predicted["bitops"] <= Budget.parse("20%bitops").resolve(inv) * (1 + 1e-9)


def test_infeasible_budget_names_the_smallest_feasible(inv):
    df = synthetic_profile(inv)
    with pytest.raises(BudgetInfeasible, match="smallest") as e:
        solve((df, inv), "10%", space=SearchSpace(weight_only=True))
    smallest = e.value.smallest_feasible
    all2 = model_bytes(inv, {l.name: 2 for l in inv.layers})
    assert smallest == pytest.approx(all2)
    ok = solve((df, inv), f"{int(np.ceil(smallest))}B", space=SearchSpace(weight_only=True))
    assert ok.predicted["bytes"] <= int(np.ceil(smallest))


def test_protect_keeps_layers_at_16_bits(inv):
    df = synthetic_profile(inv)
    plan = solve((df, inv), "30%", space=SearchSpace(protect=[r"^conv_(in|out)$"], protect_top=0.01))
    assert plan.layers["conv_in"].w_bits == plan.layers["conv_out"].a_bits == 16
    assert sum(b.w_bits == 16 and b.a_bits == 16 for b in plan.layers.values()) >= 2 + 2


def test_pareto_front_is_monotone_and_within_budgets(inv):
    from mpsearch.planning.planner import pareto_front

    df = synthetic_profile(inv)
    front = pareto_front((df, inv), "20%", "50%", 8, space=SearchSpace(weight_only=True))
    assert len(front) >= 2
    assert (front["bytes"].diff().dropna() > 0).all()
    assert (front["loss"].diff().dropna() < 0).all()
    assert front["bytes"].max() <= Budget.parse("50%").resolve(inv)


def test_mixdq_mode_keeps_its_band(inv):
    df = synthetic_profile(inv)
    plan = solve((df, inv), "4bits", solver="mixdq", backend="cbc")
    assert abs(plan.predicted["mean_w_bits"] - 4) <= 0.3 + 0.02  # B swept over [T-0.3, T] ± 0.02
    with pytest.raises(ValueError, match="mean weight bit-width"):
        solve((df, inv), "30%", solver="mixdq")


def test_evolution_respects_the_budget(inv):
    df = synthetic_profile(inv, step_groups=2)
    plan = solve((df, inv), "25%bitops", solver="evolution", seed=0)
    assert plan.predicted["bitops"] <= Budget.parse("25%bitops").resolve(inv) * (1 + 1e-9)
    again = solve((df, inv), "25%bitops", solver="evolution", seed=0)
    assert again.to_dict()["layers"] == plan.to_dict()["layers"]


def test_search_profiles_then_solves(tmp_path, tiny_pipe):
    """mpsearch.search = profile + solve, on a tiny pipeline; the profile folder is reused on a second call."""
    from mpsearch.model import inventory as inv_of
    from mpsearch.planning.planner import search

    opts = dict(bits=(2, 4, 8), tensors=("weight",), metrics=("sqnr",), prompts=["a cat", "a dog"], steps=2,
                guidance=1.0)
    plan = search(tiny_pipe, "4bits", profile_dir=tmp_path / "p", profile_options=opts)
    inv = inv_of(tiny_pipe)
    plan.validate(inv)
    assert plan.predicted["mean_w_bits"] <= 4 + 1e-9
    assert {b.w_bits for b in plan.layers.values()} <= {2, 4, 8, 16}
    rows = (tmp_path / "p" / "measurements.jsonl").read_text().count("\n")
    assert rows == len(inv) * 3
    again = search(tiny_pipe, "4bits", profile_dir=tmp_path / "p", profile_options=opts)
    assert (tmp_path / "p" / "measurements.jsonl").read_text().count("\n") == rows  # nothing measured twice
    assert again.to_dict()["layers"] == plan.to_dict()["layers"]


@dataclass(frozen=True)
class CheapestOptions:
    backend: str = "none"


def cheapest(problem, *, backend="none", target=None):
    """Each layer's least-byte option: the smallest plan, whatever its loss."""
    choice = np.where(problem.valid, problem.costs["bytes"], np.inf).argmin(axis=1)
    return problem.evaluate(choice, backend=f"{backend}/{target}")


@pytest.fixture()
def registered():
    """Register test solvers for one test, then take them out of the registry."""
    names = []

    def add(name, **contract):
        register_solver(name, options=CheapestOptions, **contract)(cheapest)
        names.append(name)

    yield add
    for name in names:
        SOLVERS.pop(name)


def test_a_new_solver_is_one_registration_and_solve_feeds_it_by_its_contract(inv, registered):
    df = synthetic_profile(inv)
    registered("_test_cheapest")
    plan = solve((df, inv), "30%", solver="_test_cheapest", backend="b1")
    smallest = model_bytes(inv, {l.name: 2 for l in inv.layers})
    assert plan.predicted["bytes"] == smallest  # 2-bit weights everywhere, activations at their least
    assert plan.solver["name"] == "_test_cheapest" and plan.solver["backend"] == "b1/None"  # ceiling: no target
    registered("_test_target", budget="target", budget_kinds=("bits",), weight_only=True, prunes=False)
    plan = solve((df, inv), "4bits", solver="_test_target")
    assert plan.solver["backend"] == "none/4.0"  # the budget's value as target=, the solver's default backend
    assert {b.a_bits for b in plan.layers.values()} == {16}  # weight-only: no activation options offered
    with pytest.raises(ValueError, match="solver '_test_target' targets a mean weight bit-width: use e.g. "
                                         "--budget 4bits, not 30%"):
        solve((df, inv), "30%", solver="_test_target")
    with pytest.raises(ValueError, match="solver '_test_target' allocates bits only: search pruning with the "):
        solve((df, inv), "4bits", solver="_test_target", space=SearchSpace(prune=True))
    with pytest.raises(ValueError, match="solver '_test_cheapest' has no option seed; its options: backend"):
        solve((df, inv), "30%", solver="_test_cheapest", seed=1)


def test_solve_options_route_keywords():
    opts = SolveOptions.of(solver="evolution", steps=4, rerank=0, pool=16, seed=3, config="cfg")
    assert (opts.solver, opts.steps, opts.step.rerank, opts.step.pool) == ("evolution", 4, 0, 16)
    assert opts.solver_options == {"seed": 3, "config": "cfg"}
    again = SolveOptions.of(opts, grouping="quad", band=0.1)
    assert again.step.grouping == "quad" and again.step.pool == 16 and again.solver_options["band"] == 0.1
    assert opts.step.grouping == "uniform"  # the options given are not changed
    with pytest.raises(ValueError, match="step grouping must be one of"):
        SolveOptions.of(grouping="cubic")


def test_the_same_plan_from_options_or_keywords(inv):
    df = synthetic_profile(inv)
    space = SearchSpace(weight_only=True)
    by_keywords = solve((df, inv), "30%", backend="cpsat", space=space)
    by_options = solve((df, inv), "30%", SolveOptions(backend="cpsat", space=space))
    assert by_options.solver["backend"] == "cpsat"
    assert by_options.to_dict()["layers"] == by_keywords.to_dict()["layers"]
