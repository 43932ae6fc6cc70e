"""Image triage: the rules, the evaluations it skips (counted), the marked estimates, resume, shards and
the solver reading them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mpsearch.profiling import triage
from mpsearch.profiling.engine import Profiler
from mpsearch.profiling.profiler import profile
from mpsearch.profiling.store import Profile, ProfileError, merge
from tests.mpsearch.profiling.test_profiler import PROMPTS

QUALITY, CONTENT = "conv_in", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
# 3 weight and 3 activation widths: W4 and A8 are the tops; 2 step groups
KW = dict(prompts=PROMPTS, steps=4, step_groups=2, bits=(2, 3, 4), act_bits=(4, 6, 8, 16),
          metrics=["sqnr", "ssim"], layers=rf"^({QUALITY}|{CONTENT.replace('.', '[.]')})$")


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory()


@pytest.fixture()
def evaluated(monkeypatch):
    """Every unit `Profiler.evaluate` is given, in order."""
    seen = []
    original = Profiler.evaluate

    def counting(self, units):
        seen.extend(units)
        return original(self, units)

    monkeypatch.setattr(Profiler, "evaluate", counting)
    return seen


def test_rules():
    assert triage.RULES.lookup("triage")([2, 3, 4, 5, 6, 8]) == {8: 6}
    assert triage.RULES.lookup("triage")([4, 6, 8]) == {8: 6}
    assert triage.RULES.lookup("triage")([2, 8]) == {}  # one width would be left measured
    assert triage.RULES.lookup("triage")([2, 4, 8]) == {}  # 4 bits is too far to scale across
    assert triage.RULES.lookup("all")([2, 3, 4]) == {}
    assert triage.estimate(1e-4, 6, 8) == pytest.approx(1e-4 / 16)
    with pytest.raises(ValueError, match="image_widths must be one of all, triage, got 'some'"):
        triage.RULES.lookup("some")


def test_skipped_widths_are_not_evaluated_and_their_rows_are_marked(pipe, tmp_path, evaluated):
    prof = profile(pipe, out=tmp_path / "p", **KW)
    images = {(u.tensor, u.bits) for u in evaluated if u.stage == "image"}
    assert images == {("weight", 2), ("weight", 3), ("act", 4), ("act", 6)}  # not W4, not A8
    assert sum(u.stage == "image" for u in evaluated) == 4 * 2  # 4 widths × 2 step groups
    assert all(u.layer == QUALITY for u in evaluated if u.stage == "output")  # no output screen of content
    df = prof.df
    est = df[df.estimated]
    assert set(zip(est.tensor, est.bits, strict=True)) == {("weight", 4), ("act", 8)} and len(est) == 2 * 2
    assert (est.layer == CONTENT).all() and (est.metric == "ssim").all() and est.value.isna().all()
    assert set(df[~df.estimated].from_bits.isna()) == {True}
    for r in est.itertuples():
        src = df[(df.layer == r.layer) & (df.tensor == r.tensor) & (df.bits == r.from_bits)
                 & (df.metric == r.metric) & (df.step_group == r.step_group)]
        assert not src.estimated.iloc[0]
        assert r.degradation == pytest.approx(src.degradation.iloc[0] * 4.0 ** -(r.bits - r.from_bits), rel=1e-12)
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["schema"] == "mpsearch.profile/2" and meta["image_widths"]["rule"] == "triage"
    line = next(json.loads(x) for x in (tmp_path / "p" / "measurements.jsonl").read_text().splitlines()
                if '"estimated"' in x)
    assert line["estimated"] is True and line["value"] is None and line["from_bits"] in (3, 6)
    pd.testing.assert_frame_equal(Profile.load(tmp_path / "p").df, df)


def test_all_measures_every_width(pipe, tmp_path, evaluated):
    prof = profile(pipe, out=tmp_path / "p", image_widths="all", **KW)
    assert sum(u.stage == "image" for u in evaluated) == 6 * 2 and not prof.df.estimated.any()
    assert prof.meta["schema"] == "mpsearch.profile/1" and prof.meta["image_widths"] == "all"


def test_resume_measures_nothing_twice_and_keeps_its_setting(pipe, tmp_path, evaluated):
    whole = profile(pipe, out=tmp_path / "whole", **KW)
    profile(pipe, out=tmp_path / "p", **dict(KW, tensors=("weight",)))
    first = len(evaluated)
    resumed = profile(pipe, out=tmp_path / "p", **KW)  # adds the activations
    assert all(u.tensor == "act" for u in evaluated[first:])
    cols = ["layer", "tensor", "bits", "metric", "step_group"]
    pd.testing.assert_frame_equal(resumed.df.sort_values(cols).reset_index(drop=True),
                                  whole.df.sort_values(cols).reset_index(drop=True))
    again = len(evaluated)
    profile(pipe, out=tmp_path / "p", **KW)
    assert len(evaluated) == again  # complete: nothing measured, no estimate rewritten
    with pytest.raises(ProfileError, match="image_widths .* resume it with --image-widths triage"):
        profile(pipe, out=tmp_path / "p", image_widths="all", **KW)
    profile(pipe, out=tmp_path / "full", image_widths="all", **dict(KW, tensors=("weight",)))
    with pytest.raises(ProfileError, match="resume it with --image-widths all"):
        profile(pipe, out=tmp_path / "full", image_widths="triage", **KW)
    assert Profile.load(tmp_path / "full").meta["image_widths"] == "all"
    assert not profile(pipe, out=tmp_path / "full", **KW).df.estimated.any()  # None: the folder's own rule


def test_shards_merge_to_one_run(pipe, tmp_path):
    whole = profile(pipe, out=tmp_path / "whole", **KW)
    parts = [profile(pipe, out=tmp_path / f"s{i}", shard=f"{i}/3", **KW) for i in range(3)]
    assert sum(len(p) for p in parts) == len(whole)
    merged = merge(tmp_path / "merged", [tmp_path / f"s{i}" for i in range(3)])
    pd.testing.assert_frame_equal(Profile.load(tmp_path / "merged").df, whole.df)
    assert merged.meta["schema"] == "mpsearch.profile/2" and merged.df.estimated.sum() == 4


def test_the_solver_consumes_the_estimates(pipe, tmp_path):
    import dataclasses

    import mpsearch
    from mpsearch.planning.inputs import load_profile
    from mpsearch.planning.problem import build_problem

    prof = profile(pipe, out=tmp_path / "p", **KW)
    df, _, inv = load_profile(tmp_path / "p")
    inv = dataclasses.replace(inv, layers=[inv[QUALITY], inv[CONTENT]])  # the two profiled layers
    sp = build_problem(inv, df, None)
    assert not sp.info["unmeasured"]  # W4 and A8 of the content layer are offered
    keys = sp.problem.keys[1]
    d = prof.df[(prof.df.layer == CONTENT) & (prof.df.metric == "ssim")]
    w4 = d[(d.tensor == "weight") & (d.bits == 4)]
    a8 = d[(d.tensor == "act") & (d.bits == 8)]
    assert w4.estimated.all() and a8.estimated.all() and w4.degradation.sum() > 0
    assert np.isclose(sp.problem.losses["ssim"][1][keys.index((4, 8))],
                      w4.degradation.sum() + a8.degradation.sum(), rtol=1e-12)
    plan = mpsearch.solve((df, inv), "4bits")
    assert plan.layers[CONTENT].w_bits == 4  # the estimated width is chosen where the budget calls for it
    assert plan.solver["estimated"] == [f"{CONTENT} W4"]  # and the plan says it rests on an estimate
