"""Evaluation on the tiny pipeline: baselines, metrics per split, checkpoint bytes and memory."""

from __future__ import annotations

import pytest

from mpsearch.evaluation.evaluator import (
    EvaluateOptions,
    PeakRSS,
    baselines,
    evaluate,
    nearest_uniform_bits,
    random_plan,
)
from mpsearch.model import inventory
from mpsearch.planning.cost import model_bytes
from mpsearch.planning.plan import LayerBits, Plan

PROMPTS = {"calib": ["a red circle at the top left", "a blue square in the center"],
           "heldout": ["a green triangle at the bottom right"]}


def six_bit_plan(inv) -> Plan:
    plan = Plan({l.name: LayerBits(8 if l.group == "content" else 4) for l in inv.layers}, model=inv.model,
                fingerprint=inv.fingerprint, format="packed", budget="60%")
    plan.predict(inv)
    return plan


def test_baselines_are_at_the_right_bytes(tiny_pipe):
    inv = inventory(tiny_pipe)
    plan = six_bit_plan(inv)
    target = model_bytes(inv, plan.w_bits(), "packed")
    rnd = random_plan(inv, plan, seed=1)
    got = model_bytes(inv, rnd.w_bits(), "packed")
    assert got <= target and got > 0.97 * target
    assert rnd.w_bits() != random_plan(inv, plan, seed=2).w_bits()
    near = nearest_uniform_bits(inv, plan)
    dist = {b: abs(model_bytes(inv, dict.fromkeys(inv.names, b), "packed") - target) for b in (2, 3, 4, 5, 6, 8)}
    assert dist[near] == min(dist.values())
    assert set(baselines(inv, plan)) == {"uniform-w8", "uniform-w4", f"uniform-w{near}", "random"}


def test_peak_rss_sees_an_allocation():
    import numpy as np

    with PeakRSS() as m:
        a = np.ones(60_000_000 // 8)  # 60 MB, touched
        a += 1
        del a
    assert m.delta > 30e6


def test_evaluate_with_baselines_and_checkpoint(tiny_pipe, tmp_path):
    inv = inventory(tiny_pipe)
    plan = six_bit_plan(inv)
    ev = evaluate(plan, model=tiny_pipe, prompts=PROMPTS, steps=2, guidance=3.0, checkpoint=tmp_path / "ckpt")
    rows = ev.rows()
    names = {r["name"] for r in rows}
    assert {"fp", "plan", "uniform-w8", "uniform-w4", "random", "checkpoint"} <= names
    by = {(r["name"], r["split"]): r for r in rows}
    assert by[("fp", "calib")]["ssim"] == 1.0 and by[("fp", "calib")]["pixel_mse"] == 0.0
    assert by[("uniform-w8", "calib")]["ssim"] > by[("uniform-w4", "calib")]["ssim"]
    assert "sqnr" in by[("plan", "calib")] and "sqnr" not in by[("plan", "heldout")]
    # the reloaded checkpoint generates what the simulation generated, and weighs what was predicted
    ck = next(c for c in ev.candidates if c.kind == "checkpoint")
    assert ck.extra["max_pixel_diff_vs_simulation"] <= 1
    assert ev.export["tensor_bytes"] == ev.export["predicted_bytes"] == plan.predicted["bytes"]
    assert ev.memory["load"]["rss_peak"] >= ev.memory["load"]["rss_before"] > 0
    assert ev.export["matches_prediction"] is True  # the report of an evaluation: test_report.py

    # evaluating again into the same folder replaces its own earlier checkpoint whole
    w8 = Plan.uniform(inv, 8)
    again = evaluate(w8, model=tiny_pipe, prompts={"calib": PROMPTS["calib"][:1]}, steps=2, guidance=3.0,
                     with_baselines=False, checkpoint=tmp_path / "ckpt")
    assert again.export["predicted_bytes"] == w8.predicted["bytes"]
    assert Plan.load(tmp_path / "ckpt" / "plan.json").w_bits() == w8.w_bits()


def test_peak_rss_does_not_depend_on_polling():
    """A peak shorter than any polling interval is still seen (the kernel's high-water mark, on Linux)."""
    import numpy as np

    with PeakRSS(interval=3600) as m:
        a = np.ones(60_000_000 // 8)
        del a
    if m._thread is not None:
        pytest.skip("no /proc high-water mark on this system: PeakRSS polls")
    assert m.delta > 50e6


def test_baselines_use_only_widths_the_format_stores(tiny_pipe):
    """quanto stores 3 bits in a 4-bit container: a W4-sized plan's nearest uniform width is W4, not W3
    (equal bytes, worse weights), and the random baseline never picks 3, 5 or 6 bits."""
    inv = inventory(tiny_pipe)
    plan = Plan.uniform(inv, 4, fmt="quanto")
    assert nearest_uniform_bits(inv, plan) == 4
    assert set(baselines(inv, plan)) == {"uniform-w8", "uniform-w4", "random"}
    assert {b.w_bits for b in random_plan(inv, six_bit_plan(inv), seed=3).layers.values()} <= {2, 3, 4, 5, 6, 8, 16}
    quanto_random = random_plan(inv, Plan.uniform(inv, 6, fmt="quanto"), seed=3)
    assert {b.w_bits for b in quanto_random.layers.values()} <= {2, 4, 8, 16}


def test_evaluate_shows_a_bar_over_every_image_it_samples(tiny_pipe, capsys):
    """progress=True: one rich bar on stderr over prompts × candidates (+ the FP calibration reference):
    2 calibration prompts, then FP and the plan on 3 prompts each = 8 images."""
    inv = inventory(tiny_pipe)
    lines = []
    evaluate(six_bit_plan(inv), model=tiny_pipe, prompts=PROMPTS, steps=1, guidance=3.0, with_baselines=False,
             log=lines.append, progress=True)
    out, err = capsys.readouterr()
    assert "evaluating" in err and "8/8" in err and "ETA" in err
    assert out == ""
    assert lines[0] == "calibration reference (FP)" and lines[-1].startswith("plan: ")


def test_options_object_and_keywords_evaluate_the_same(tiny_pipe):
    """`evaluate(plan, EvaluateOptions(...))`, the same fields as keywords, and an object with keywords
    replacing some of its fields give the same results; a misspelt keyword is a TypeError naming it."""
    plan = six_bit_plan(inventory(tiny_pipe))
    kw = dict(model=tiny_pipe, prompts={"calib": PROMPTS["calib"][:1]}, steps=1, guidance=3.0, uniform=(8,))
    by_keywords = evaluate(plan, **kw).to_dict()
    by_options = evaluate(plan, EvaluateOptions(**kw)).to_dict()
    mixed = evaluate(plan, EvaluateOptions(**dict(kw, steps=3, uniform=(2,))), steps=1, uniform=(8,)).to_dict()
    names = [r["name"] for r in by_keywords["results"]]
    assert names == ["fp", "plan", "uniform-w8", *names[3:]] and "random" in names
    assert by_options == by_keywords and mixed == by_keywords
    assert all(r["pixel_mse"] == 0 for r in by_keywords["results"] if r["name"] == "fp")
    with pytest.raises(TypeError, match=r"evaluate\(\) got unexpected keyword argument 'baselines' \(did you mean "
                                        r"'with_baselines'\?\)"):
        evaluate(plan, model=tiny_pipe, baselines=False)
    with pytest.raises(TypeError, match="options must be of type EvaluateOptions, got dict"):
        evaluate(plan, {"steps": 1})


def test_every_plan_gets_its_predicted_loss_under_the_profile(tiny_pipe):
    """With the profile, each candidate's predicted loss is the ILP's objective of its plan; a baseline with
    widths the profile never measured has none and says why; without a profile the evaluation says so."""
    from mpsearch.planning.planner import predicted_loss
    from mpsearch.planning.planner import solve as run_solve
    from tests.mpsearch.planning.profiles import synthetic_profile

    inv = inventory(tiny_pipe)
    profile = (synthetic_profile(inv), inv, {})
    plan = run_solve(profile, "4bits")
    ev = evaluate(plan, model=tiny_pipe, prompts={"calib": PROMPTS["calib"][:1]}, steps=1, guidance=3.0,
                  uniform=(8, 2), profile=profile)  # fmt: skip
    pred = ev.predicted
    assert pred["loss"]["plan"] == pytest.approx(plan.predicted["loss"], rel=1e-12)
    for c in ev.candidates:
        if c.plan is not None and c.name in pred["loss"]:
            assert pred["loss"][c.name] == pytest.approx(predicted_loss(profile, c.plan)["loss"], rel=1e-12)
    assert {"uniform-w8", "uniform-w2"} <= set(pred["loss"])
    assert pred["loss"]["uniform-w2"] > pred["loss"]["plan"] > pred["loss"]["uniform-w8"]
    widths = {b.w_bits for b in next(c for c in ev.candidates if c.name == "random").plan.layers.values()}
    assert widths & {3, 5, 6}  # the random baseline uses widths the format stores that the profile never measured
    assert "is not an option of the profile's problem" in pred["missing"]["random"] and "random" not in pred["loss"]
    assert evaluate(plan, model=tiny_pipe, prompts={"calib": PROMPTS["calib"][:1]}, steps=1, guidance=3.0,
                    with_baselines=False).predicted == {
        "error": "no profile: pass --profile (the plan records none that exists here)"}
