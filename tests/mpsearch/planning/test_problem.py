"""Inventory + profile + budget → Problem, on a synthetic profile of the SD 1.5 meta inventory."""

import numpy as np
import pytest

from mpsearch.model import inventory
from mpsearch.planning.budget import Budget
from mpsearch.planning.cost import fixed_bytes, layer_bytes
from mpsearch.planning.problem import build_problem

from .profiles import synthetic_profile


@pytest.fixture(scope="module")
def inv():
    return inventory("sd15")


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
