"""The one `solve` (profile + budget → Plan), `search` and the Pareto front, on a synthetic profile of the
SD 1.5 meta inventory; dispatch through the solver registry."""

from dataclasses import dataclass

import numpy as np
import pytest

from mpsearch.model import inventory
from mpsearch.planning.budget import Budget, BudgetInfeasible
from mpsearch.planning.cost import model_bytes, stored_mean_bits
from mpsearch.planning.planner import SolveOptions, solve
from mpsearch.planning.problem import SearchSpace, build_problem
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
    """MixDQ mode (small sweeps): weights within its band, then activations, as MixDQ; an inventory without
    activation sizes refuses the activation stage in one line and still solves weights only."""
    from dataclasses import replace

    df = synthetic_profile(inv)
    grids = dict(k_grid=[0.5, 0.7], b_points=2, act_k_grid=[0.94, 1.0], act_b_points=2)
    plan = solve((df, inv), "4bits", solver="mixdq", **grids)
    assert abs(plan.predicted["mean_w_bits"] - 4) <= 0.3 + 0.02  # B swept over [T-0.3, T] ± 0.02
    assert {b.a_bits for b in plan.layers.values()} <= {4, 8, 16} and plan.solver["mixdq"]["act"]["fp16"]
    with pytest.raises(ValueError, match="mean weight bit-width"):
        solve((df, inv), "30%", solver="mixdq")
    old = replace(inv, layers=[replace(la, act_numel=None) for la in inv.layers])  # an inventory from before
    with pytest.raises(ValueError, match="activation size, which this profile's inventory does not record"):
        solve((df, old), "4bits", solver="mixdq", **grids)
    weights = solve((df, old), "4bits", solver="mixdq", space=SearchSpace(weight_only=True), **grids)
    assert {b.a_bits for b in weights.layers.values()} == {16}


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


def test_bits_budget_counts_stored_bits_for_container_formats():
    """The demo profile measured 2..8 bits. quanto offers only the widths it stores (2, 4, 8) and a bits
    budget counts stored bits: `3bits` used to return W3 layers in 4-bit containers (3.50 stored bits,
    1,904,912 B), larger and worse than the `1.9MB` plan."""
    from mpsearch.evaluation.demo import PROFILE
    from mpsearch.planning.inputs import load_profile

    _, _, demo = load_profile(PROFILE)
    three = solve(PROFILE, "3bits", fmt="quanto")
    assert {b.w_bits for b in three.layers.values()} <= {2, 4, 8, 16}
    assert stored_mean_bits(demo, three.w_bits(), "quanto") <= 3
    assert three.predicted["bytes"] == model_bytes(demo, three.w_bits(), "quanto") == 1_642_768
    mb = solve(PROFILE, "1.9MB", fmt="quanto")
    assert three.predicted["bytes"] < mb.predicted["bytes"] == 1_899_792
    packed = solve(PROFILE, "3bits")  # packed stores every width as it is: 3-bit layers stay on offer
    assert packed.predicted["bytes"] == 1_643_280 and 3 in {b.w_bits for b in packed.layers.values()}
    with pytest.raises(ValueError, match="3-bit weights in 4-bit containers"):
        solve(PROFILE, "3bits", fmt="quanto", space=SearchSpace(w_bits=(2, 3, 4)))


# --- the solver never invents a measurement (issue 13, item 2) ---------------------------------------

@pytest.fixture(scope="module")
def demo():
    """(rows, meta, inventory) of the shipped demo profile."""
    from mpsearch.evaluation.demo import PROFILE
    from mpsearch.planning.inputs import load_profile

    return load_profile(PROFILE)


def _without(df, **match):
    hit = np.ones(len(df), dtype=bool)
    for k, v in match.items():
        hit &= (df[k] == v).to_numpy()
    assert hit.any()
    return df[~hit].reset_index(drop=True)


def test_an_unmeasured_option_is_not_offered(demo):
    """conv_in's 2-bit weight rows deleted: it used to get W2 (a free zero loss); now it keeps its W8,
    and the plan names the option. `assume_missing="zero"` is the old reading, on request."""
    df, meta, inv = demo
    full = solve((df, inv, meta), "3bits")
    assert full.layers["conv_in"].w_bits == 8 and "unmeasured" not in full.solver
    holed = _without(df, layer="conv_in", tensor="weight", bits=2)
    plan = solve((holed, inv, meta), "3bits")
    assert plan.layers["conv_in"].w_bits == 8
    assert plan.solver["unmeasured"] == ["conv_in W2"] and plan.solver["assume_missing"] == "none"
    sp = build_problem(inv, holed, "3bits")
    assert all(k[0] != 2 for k in sp.problem.keys[inv.index("conv_in")])
    assert len(sp.problem.keys[inv.index("conv_out")]) == len(sp.problem.keys[inv.index("conv_in")]) + 4
    zero = solve((holed, inv, meta), "3bits", space=SearchSpace(assume_missing="zero"))
    assert zero.layers["conv_in"].w_bits == 2 and zero.solver["unmeasured"] == ["conv_in W2"]
    # a hole inside an option (one metric of one step group) also keeps the option off that layer
    partial = _without(df, layer="conv_out", tensor="act", bits=8, metric="mse", step_group=1)
    sp = build_problem(inv, partial, "3bits")
    assert sp.info["unmeasured"] == ["conv_out A8"]
    assert all(k[1] != 8 for k in sp.problem.keys[inv.index("conv_out")])
    assert solve((holed, inv, meta), "25%bitops", solver="evolution").layers["conv_in"].w_bits != 2


def test_an_asked_width_nobody_measured_is_refused(demo, tmp_path):
    """`--a-bits 3` on the demo used to give all 119 layers A3 at zero loss: A3 was never measured."""
    from typer.testing import CliRunner

    from mpsearch.cli import app

    df, meta, inv = demo
    with pytest.raises(ValueError, match=r"activations at 3 bits were never measured in this profile \(measured: "
                                         r"4, 6, 8\)"):
        solve((df, inv, meta), "3bits", space=SearchSpace(a_bits=[3]))
    with pytest.raises(ValueError, match=r"weights at 5 bits were never measured in this profile \(measured: "
                                         r"2, 3, 4, 6, 8\)"):
        build_problem(inv, _without(df, tensor="weight", bits=5), "3bits", space=SearchSpace(w_bits=[4, 5]))
    result = CliRunner().invoke(app, ["solve", "-b", "3bits", "--a-bits", "3", "-o", str(tmp_path / "p.json")])
    errors = [line for line in result.output.splitlines() if "error" in line]
    assert result.exit_code == 2 and not (tmp_path / "p.json").exists()
    assert len(errors) == 1 and errors[0].startswith("error: activations at 3 bits were never measured")
    result = CliRunner().invoke(app, ["solve", "-b", "3bits", "--a-bits", "3", "--assume-missing", "zero",
                                      "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert "note: 119 option(s) the profile never measured were offered at zero loss: conv_in A3" in result.output
    result = CliRunner().invoke(app, ["solve", "-b", "3bits", "--assume-missing", "maybe"])
    assert result.exit_code == 2 and "--assume-missing 'maybe': choose none or zero" in result.output


def test_the_demo_plans_are_unchanged(demo):
    """The shipped profile is complete: the stricter reading and the vectorised build give exactly the
    plans the README's figures were made with (digests recorded before the change)."""
    import hashlib
    import json

    df, meta, inv = demo
    expected = {"3bits": ("f509bbc59fd7d1f5", 1_643_280), "2MB": ("f891b2d936005bb9", 1_999_880),
                "30%bitops": ("f099470ae2e8c22c", 3_588_488)}
    for budget, (digest, size) in expected.items():
        plan = solve((df, inv, meta), budget)
        layers = json.dumps(plan.to_dict()["layers"], sort_keys=True).encode()
        assert (hashlib.sha256(layers).hexdigest()[:16], plan.predicted["bytes"]) == (digest, size), budget
    pruned = solve((df, inv, meta), "1MB", space=SearchSpace(prune=True))
    assert hashlib.sha256(json.dumps(pruned.to_dict()["layers"], sort_keys=True).encode()).hexdigest()[:16] == \
        "f6888bf3d7e9828b"


def test_predicted_loss_scores_any_plan_on_the_ilps_scale(inv):
    from mpsearch.planning.plan import LayerBits, Plan
    from mpsearch.planning.planner import predicted_loss

    df = synthetic_profile(inv)
    plan = solve((df, inv), "4bits")
    assert predicted_loss((df, inv), plan)["loss"] == pytest.approx(plan.predicted["loss"], rel=1e-12)
    uniform = Plan({l.name: LayerBits(2) for l in inv.layers}, model=inv.model, fingerprint=inv.fingerprint)
    got = predicted_loss((df, inv), uniform)
    # every layer at its cheapest, most damaging weight option and unquantized activations: the raw totals are
    # the 2-bit weight rows, and each metric's share of its worst total is theirs over weight + act at the lowest
    w2 = df[(df.tensor == "weight") & (df.bits == 2)].groupby("metric").degradation.sum()
    a4 = df[(df.tensor == "act") & (df.bits == 4)].groupby("metric").degradation.sum()
    assert got["losses"] == pytest.approx(w2.to_dict(), rel=1e-9)
    assert got["loss"] == pytest.approx(sum(w2[m] / (w2[m] + a4[m]) for m in w2.index), rel=1e-9)
    assert got["loss"] > plan.predicted["loss"]


def test_predicted_loss_refuses_a_width_the_profile_never_measured_and_other_weights(inv):
    from mpsearch.planning.plan import LayerBits, Plan
    from mpsearch.planning.planner import predicted_loss

    df = synthetic_profile(inv)
    three = Plan({l.name: LayerBits(3) for l in inv.layers}, model=inv.model, fingerprint=inv.fingerprint)
    with pytest.raises(ValueError, match=rf"layer '{inv.names[0]}': W3A16 is not an option"):
        predicted_loss((df, inv), three)
    other = Plan({l.name: LayerBits(4) for l in inv.layers}, model=inv.model, fingerprint="f" * 64)
    with pytest.raises(ValueError, match="the plan is for weights ffffffffffff"):
        predicted_loss((df, inv), other)
