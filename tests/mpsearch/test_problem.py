"""Inventory + profile + budget → Problem → Plan, on a synthetic profile of the SD 1.5 meta inventory."""

import numpy as np
import pandas as pd
import pytest

from mpsearch.budget import Budget
from mpsearch.cost import fixed_bytes, layer_bytes, model_bytes, stored_mean_bits
from mpsearch.model import inventory
from mpsearch.planner import BudgetInfeasible, solve
from mpsearch.problem import SearchSpace, build_problem

W_BITS, A_BITS = (2, 4, 8), (4, 8)


@pytest.fixture(scope="module")
def inv():
    return inventory("sd15")


def synthetic_profile(inv, seed=0, step_groups=1):
    """Degradation falls ~4x per extra bit; heavy-tailed sensitivity across layers."""
    rng = np.random.default_rng(seed)
    rows = []
    for layer in inv.layers:
        s = rng.lognormal(0, 1.5)
        metric = "sqnr" if layer.group == "quality" else "ssim"
        for g in range(step_groups):
            for tensor, bits in (("weight", W_BITS), ("act", A_BITS)):
                for b in bits:
                    d = s * 4.0 ** (-b) * (1 + g)
                    rows.append(dict(layer=layer.name, tensor=tensor, bits=b, metric=metric, step_group=g,
                                     value=-10 * np.log10(d) if metric == "sqnr" else 1 - d, degradation=d))
    return pd.DataFrame(rows)


def test_problem_costs_match_cost_model(inv):
    df = synthetic_profile(inv)
    sp = build_problem(inv, df, "30%")
    p = sp.problem
    assert p.keys[0] == tuple((w, a) for w in (2, 4, 8, 16) for a in (4, 8, 16))
    i = inv.index("conv_out")
    k = p.keys[i].index((4, 8))
    assert p.costs["bytes"][i, k] == layer_bytes(inv["conv_out"], 4)
    assert p.costs["bitops"][i, k] == inv["conv_out"].macs * 32
    budget = p.constraint("budget")
    assert budget.offset == fixed_bytes(inv) and budget.upper == Budget.parse("30%").resolve(inv)
    # additivity: loss of (w, a) = loss(w) + loss(a); 16 bits costs nothing
    row = df[(df.layer == "conv_out")]
    lw = row[(row.tensor == "weight") & (row.bits == 4)].degradation.item()
    la = row[(row.tensor == "act") & (row.bits == 8)].degradation.item()
    assert p.losses["sqnr"][i, k] == pytest.approx(lw + la)
    assert p.losses["sqnr"][i, p.keys[i].index((16, 16))] == 0
    assert p.losses["ssim"][i].sum() == 0  # quality layer: not measured on the content metric


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


def test_profile_for_another_model_is_refused(inv):
    df = synthetic_profile(inventory("sdxl-base"))
    with pytest.raises(ValueError, match="not a quantizable layer of 'sd15'"):
        build_problem(inv, df, "30%")
    partial = synthetic_profile(inv)
    partial = partial[partial.layer != "conv_in"]
    with pytest.raises(ValueError, match="no measurement for layer 'conv_in'"):
        build_problem(inv, partial, "30%")


def test_step_groups_are_kept_for_the_timestep_search(inv):
    df = synthetic_profile(inv, step_groups=3)
    sp = build_problem(inv, df, "30%")
    assert sp.step_losses["sqnr"].shape[0] == 3
    np.testing.assert_allclose(sp.problem.losses["sqnr"], sp.step_losses["sqnr"].sum(axis=0))


def test_pareto_front_is_monotone_and_within_budgets(inv):
    from mpsearch.planner import pareto_front

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
    from mpsearch.planner import search

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


def test_bits_budget_counts_stored_bits_for_container_formats():
    """The demo profile measured 2..8 bits. quanto offers only the widths it stores (2, 4, 8) and a bits
    budget counts stored bits: `3bits` used to return W3 layers in 4-bit containers (3.50 stored bits,
    1,904,912 B), larger and worse than the `1.9MB` plan."""
    from mpsearch.demo import PROFILE
    from mpsearch.planner import load_profile

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
    from mpsearch.demo import PROFILE
    from mpsearch.planner import load_profile

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


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1e-3])
def test_a_bad_degradation_is_an_error_not_a_zero(inv, bad):
    df = synthetic_profile(inv)
    df.loc[5, "degradation"] = bad
    with pytest.raises(ValueError, match=r"measurement \('time_embedding.linear_1', 'weight', 2, 'sqnr', 0\) has "
                                         "degradation "
                                         f"{bad!r}: it must be a finite number ≥ 0"):
        build_problem(inv, df, "30%")


def test_duplicate_rows_must_agree_in_a_frame(inv):
    df = synthetic_profile(inv)
    same = pd.concat([df, df.iloc[[3]]], ignore_index=True)  # an identical copy is one measurement
    np.testing.assert_array_equal(build_problem(inv, same, "30%").problem.losses["sqnr"],
                                  build_problem(inv, df, "30%").problem.losses["sqnr"])
    other = df.iloc[[3]].assign(degradation=df.degradation[3] * 2)
    with pytest.raises(ValueError, match=r"measurement \('conv_in', 'act', 4, 'sqnr', 0\) has two different"):
        build_problem(inv, pd.concat([df, other], ignore_index=True), "30%")


def _reference_step_losses(df, inv, pairs):
    """The row-by-row loss tables the builder had before it was vectorised (its meaning, kept as the
    reference): metric → (G, L, options) with w and a degradations added, unmeasured = 0."""
    groups = sorted(df.step_group.unique())
    out = {}
    for m in sorted(df.metric.unique()):
        t = np.zeros((len(groups), len(inv), len(pairs)))
        for row in df[df.metric == m].itertuples(index=False):
            for k, (w, a) in enumerate(pairs):
                if (row.tensor, row.bits) in (("weight", w), ("act", a)):
                    t[groups.index(row.step_group), inv.index(row.layer), k] += row.degradation
        out[m] = t
    return out


def test_vectorised_build_matches_the_row_by_row_reference(inv):
    rng = np.random.default_rng(3)
    df = synthetic_profile(inv, seed=3, step_groups=2)
    df = df.drop(index=rng.choice(len(df), 40, replace=False)).reset_index(drop=True)  # holes everywhere
    sp = build_problem(inv, df, "30%", space=SearchSpace(assume_missing="zero"))
    pairs = [(w, a) for w in (*W_BITS, 16) for a in (*A_BITS, 16)]
    assert sp.problem.keys == tuple(tuple(pairs) for _ in inv.layers)
    for m, ref in _reference_step_losses(df, inv, pairs).items():
        np.testing.assert_array_equal(sp.step_losses[m], ref)
    assert len(sp.info["unmeasured"]) == len({(r.layer, r.tensor, r.bits) for r in
                                              synthetic_profile(inv, 3, 2).merge(df, how="left", indicator=True)
                                              .query("_merge == 'left_only'").itertuples()})
    offered = build_problem(inv, df, "30%")  # the same numbers, only measured options kept per layer
    for i, keys in enumerate(offered.problem.keys):
        for k, key in enumerate(keys):
            j = pairs.index(key)
            assert offered.problem.costs["bytes"][i, k] == sp.problem.costs["bytes"][i, j]
            assert offered.step_losses["sqnr"][:, i, k].tolist() == sp.step_losses["sqnr"][:, i, j].tolist()


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
