"""MixDQ's final pick by images on the tiny pipeline: one image per candidate plan, pixel MSE (float) against
the FP image, and `solve(..., solver="mixdq", model=...)` rendering every cell of both sweeps."""

import pytest

from mpsearch.model import inventory
from mpsearch.planning.pick import image_pick
from mpsearch.planning.planner import solve
from mpsearch.planning.problem import build_problem
from tests.mpsearch.planning.profiles import tiny_profile


@pytest.fixture()
def profile(tiny_pipe):
    return tiny_profile(inventory(tiny_pipe))


def test_pixel_mse_is_zero_for_fp_and_grows_with_fewer_bits(tiny_pipe, profile):
    df, inv, meta = profile
    problem = build_problem(inv, df, None).problem
    pick = image_pick(tiny_pipe, meta, inv.names)
    try:
        at = lambda w, a: problem.evaluate([problem.option_index(i, (w, a)) for i in range(len(inv))])  # noqa: E731
        fp, w8, w2 = pick(at(16, 16)), pick(at(8, 16)), pick(at(2, 16))
    finally:
        pick.close()
    assert fp == 0.0 and 0.0 < w8 < w2 and pick.renders == 3
    assert len(pick.fit.prompts) == 1  # MixDQ renders one image per plan: the first calibration prompt
    assert not any(hasattr(m, "_mpsearch_orig_forward") for m in tiny_pipe.unet.modules())  # restored


def test_mixdq_mode_picks_by_images_with_a_model(tiny_pipe, profile):
    grids = dict(k_grid=[0.5, 0.7, 0.9], b_points=2, act_k_grid=[0.94, 1.0], act_b_points=2)
    plan = solve(profile, "5bits", solver="mixdq", model=tiny_pipe, **grids)
    record = plan.solver["mixdq"]
    assert record["pick"] == record["act"]["pick"] == "images (pixel MSE vs FP)"
    assert plan.solver["images_rendered"] == record["cells"] + record["act"]["cells"]
    assert not any(hasattr(m, "_mpsearch_orig_forward") for m in tiny_pipe.unet.modules())
    without = solve(profile, "5bits", solver="mixdq", **grids)
    assert without.solver["mixdq"]["pick"].startswith("no images") and "images_rendered" not in without.solver
