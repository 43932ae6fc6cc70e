"""Profiler: options object == keywords (unknown ones refused), batched == exact, fisher ranks like exact,
resume after SIGKILL, torn lines, shards, custom metrics."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from mpsearch.profiling import calibration as cal
from mpsearch.profiling.metrics import METRICS, register_metric, sqnr
from mpsearch.profiling.profiler import ProfileOptions, profile
from mpsearch.profiling.store import Profile, ProfileError, merge

ROOT = Path(__file__).resolve().parents[3]
PROMPTS = cal.demo_prompts(2)
# small but complete: 2 prompts, 4 steps in 2 step groups, output and image metrics
SMALL = dict(prompts=PROMPTS, steps=4, step_groups=2, bits=(2, 8), act_bits=(4, 16), metrics=["sqnr", "ssim"])


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory()


def _frame(p: Profile) -> pd.DataFrame:
    return p.df.reset_index(drop=True)


def test_profile_rows_and_meta(pipe, tmp_path):
    prof = profile(pipe, out=tmp_path / "p", layers=r"^(conv_in|down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k)$", **SMALL)
    df = prof.df
    assert list(df.columns) == ["layer", "tensor", "bits", "metric", "step_group", "value", "degradation",
                                "estimated", "from_bits"]
    assert not df.estimated.any()  # two weight widths: nothing to triage
    # quality layer on the quality metric, content layer on the content metric (MixDQ's decoupling)
    assert set(df[df.layer == "conv_in"].metric) == {"sqnr"}
    assert set(df[df.layer.str.endswith("attn2.to_k")].metric) == {"ssim"}
    assert len(df) == 2 * 3 * 2  # 2 layers × (weight 2 and 8, act 4) × 2 step groups
    assert (df.degradation >= 0).all()
    sq = df[df.metric == "sqnr"]
    assert ((10 ** (-sq.value / 10) - sq.degradation).abs() < 1e-9 * sq.degradation.abs().max()).all()
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["metrics"]["sqnr"]["kind"] == "quality" and meta["metrics"]["ssim"]["kind"] == "content"
    assert meta["step_groups"] == [[0], [1, 2, 3]]  # TMPQ-DM, 2 groups: t in [800, 1000) and [0, 800)
    assert meta["sampling"]["steps"] == 4 and meta["sampling"]["prompts_hash"] == cal.prompts_hash(PROMPTS)
    assert meta["candidates"] == {"weight": [2, 8], "act": [4, 16]}
    loaded = Profile.load(tmp_path / "p")
    pd.testing.assert_frame_equal(loaded.df, df)
    csv = loaded.to_csv(tmp_path / "p.csv")
    assert len(pd.read_csv(csv)) == len(df)
    # the 2-bit weight hurts more than the 8-bit one
    t = loaded.table("sqnr", "weight")
    assert t.loc["conv_in", 2] > t.loc["conv_in", 8] > 0


def test_options_object_and_keywords_give_the_same_profile(pipe, tmp_path):
    """`profile(pipe, ProfileOptions(...))`, the same fields as keywords, and an object with keywords
    replacing some of its fields measure the same rows under the same header."""
    kw = dict(SMALL, layers=r"^(conv_in|mid_block\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k)$")
    by_keywords = profile(pipe, out=tmp_path / "k", **kw)
    by_options = profile(pipe, ProfileOptions(out=tmp_path / "o", **kw))
    mixed = profile(pipe, ProfileOptions(out=tmp_path / "m", **dict(kw, steps=8, seed=3)), steps=4, seed=0)
    assert len(by_keywords) == 2 * 3 * 2  # 2 layers × (w2, w8, a4) × 2 step groups
    for other in (by_options, mixed):
        pd.testing.assert_frame_equal(_frame(other), _frame(by_keywords), check_exact=True)
        strip = lambda meta: {k: v for k, v in meta.items() if k != "created"}  # noqa: E731
        assert strip(other.meta) == strip(by_keywords.meta)
    assert ProfileOptions.of(ProfileOptions(seed=3), mode="batched") == ProfileOptions(seed=3, mode="batched")


def test_unknown_keyword_is_refused_naming_it(tmp_path):
    """A misspelt option is a TypeError naming it (and the field it resembles) before any work; so is an
    options argument that is not a ProfileOptions."""
    with pytest.raises(TypeError, match=r"profile\(\) got unexpected keyword argument 'n_promts' \(did you mean "
                                        r"'n_prompts'\?\)"):
        profile(None, out=tmp_path / "p", n_promts=2)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments 'frobnicate', 'colour'"):
        profile(None, ProfileOptions(out=tmp_path / "p"), frobnicate=True, colour="red")
    with pytest.raises(TypeError, match="options must be of type ProfileOptions, got dict"):
        profile(None, {"steps": 2})
    assert not (tmp_path / "p").exists()


def assert_same_rows(exact: pd.DataFrame, batched: pd.DataFrame) -> None:
    """Batched rows equal one-at-a-time rows: keys exactly, values to float32 rounding. Bitwise equality
    holds on some CPUs only: on AVX-512/AMX machines the GEMM kernel (and so the rounding) depends on the
    batch size, which moves an SQNR by ~2e-6 relative (57.996456 vs 57.996324 dB) and 1 - SSIM by ~1e-7."""
    pd.testing.assert_frame_equal(exact, batched, check_exact=False, rtol=1e-4, atol=1e-6)


def test_batched_equals_exact(pipe):
    kw = dict(SMALL, out=None, all_metrics=True, layers=r"^(conv_in|up_blocks\.0\.resnets\.0\.conv_shortcut|mid_block\.attentions\.0\.transformer_blocks\.0\.attn2\.to_v)$")
    exact = profile(pipe, mode="exact", **kw).df
    batched = profile(pipe, mode="batched", slots=4, **kw).df
    assert len(exact) == len(batched) == 3 * 3 * 2 * 2  # layers × (w2, w8, a4) × groups × metrics
    assert_same_rows(exact, batched)


def test_fp16_batched_equals_exact():
    """float16 GEMMs round a transposed input differently from a contiguous copy of it (on CPU as on GPU),
    so slot rows must reach every layer in the one-at-a-time layout. SDXL's linear `proj_in` gets a strided
    input; gathering a slot's rows used to make it contiguous (100% relative difference here)."""
    from tests.conftest import TINY_PIPELINES

    pipe = TINY_PIPELINES["sdxl"]().to(torch.float16)
    kw = dict(prompts=PROMPTS[:1], steps=2, bits=(4, 8), tensors=("weight",), metrics=["sqnr"], out=None,
              layers=r"^up_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn[12]\.to_q$")  # fmt: skip
    exact = profile(pipe, mode="exact", **kw).df
    batched = profile(pipe, mode="batched", slots=4, **kw).df
    assert len(exact) == len(batched) == 2 * 2 and (exact.degradation > 0).all()
    rel = (exact.degradation - batched.degradation).abs() / exact.degradation
    assert rel.max() <= 1e-3, rel.max()


def test_fisher_ranks_like_exact(pipe):
    kw = dict(prompts=PROMPTS, steps=4, bits=(2, 4, 8), act_bits=(4, 8, 16), out=None, layers=r"^down_blocks\.0")
    exact = profile(pipe, metrics=["sqnr"], all_metrics=True, **kw).df
    fisher = profile(pipe, mode="fisher", **kw).df
    assert set(fisher.metric) == {"fisher"}
    m = exact.merge(fisher, on=["layer", "tensor", "bits", "step_group"])
    assert len(m) == len(exact)
    rho = m.degradation_x.rank().corr(m.degradation_y.rank())
    assert rho > 0.8, rho


_SCRIPT = """
import sys, time
from tests.conftest import build_tiny_pipeline
from mpsearch.profiling.calibration import demo_prompts
from mpsearch.profiling.metrics import register_metric, sqnr
from mpsearch.profiling.profiler import profile

@register_metric("slow_sqnr", kind="quality", stage="output")
def slow_sqnr(reference, candidate):
    time.sleep(0.05)  # so the kill lands mid-run
    return sqnr(reference, candidate)

profile(build_tiny_pipeline(), out=sys.argv[1], prompts=demo_prompts(2), steps=4, step_groups=2,
        bits=(2, 4, 8), act_bits=(4, 16), metrics=["slow_sqnr"], layers=sys.argv[2])
"""
KILL_LAYERS = r"^(down_blocks\.0\.resnets|conv_in)"


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_then_resume_equals_uninterrupted(pipe, tmp_path):
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(out), KILL_LAYERS], cwd=ROOT, env=env)
    try:
        deadline = time.time() + 120
        while _lines(out / "measurements.jsonl") < 10 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = _lines(out / "measurements.jsonl")

    @register_metric("slow_sqnr", kind="quality", stage="output", replace=True)
    def fast_sqnr(reference, candidate):
        return sqnr(reference, candidate)

    try:
        kw = dict(prompts=PROMPTS, steps=4, step_groups=2, bits=(2, 4, 8), act_bits=(4, 16), metrics=["slow_sqnr"],
                  layers=KILL_LAYERS)  # fmt: skip
        full = profile(pipe, out=tmp_path / "full", **kw)
        assert 10 <= partial < len(full)
        resumed = profile(pipe, out=out, **kw)
    finally:
        METRICS.pop("slow_sqnr", None)
    pd.testing.assert_frame_equal(_frame(resumed), _frame(full))
    keys = ["layer", "tensor", "bits", "metric", "step_group"]
    raw = pd.read_json(out / "measurements.jsonl", lines=True)
    assert not raw.duplicated(keys).any()  # nothing measured twice


_HOLDER = """
import json, sys, time
from pathlib import Path
from tests.conftest import build_tiny_pipeline
from mpsearch.profiling.calibration import demo_prompts
from mpsearch.profiling.metrics import register_metric, sqnr
from mpsearch.profiling.profiler import profile

@register_metric("held_sqnr", kind="quality", stage="output")
def held_sqnr(reference, candidate):
    Path(sys.argv[2]).touch()  # measuring, the folder's lock held
    time.sleep(3600)  # until killed

profile(build_tiny_pipeline(), out=sys.argv[1], **json.loads(sys.argv[3]))
"""


def test_one_writer_per_profile_folder_until_sigkill(pipe, tmp_path):
    """A second run on a folder another process is measuring into is refused (one line naming that
    process, exit 2) and writes nothing; the lock dies with its holder (SIGKILL) and the next run resumes.
    Two runs on one --out used to measure and store everything twice."""
    from typer.testing import CliRunner

    from mpsearch.cli import app
    from mpsearch.profiling.lock import FolderLocked

    out, started = tmp_path / "p", tmp_path / "started"
    kw = dict(prompts=PROMPTS, steps=2, bits=(2, 8), tensors=("weight",), metrics=["held_sqnr"], layers="^conv_in$")
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out), str(started), json.dumps(kw)], cwd=ROOT, env=env)
    try:
        deadline = time.time() + 600  # a guard against a hang, not a speed requirement
        while not started.exists():
            assert proc.poll() is None and time.time() < deadline, "the first run ended before measuring"
            time.sleep(0.05)
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        holder = f"mpsearch profile (pid {proc.pid} on {socket.gethostname()}, started "
        with pytest.raises(FolderLocked, match=re.escape(f"{out} is in use by {holder}")):
            profile(pipe, out=out, **dict(kw, metrics=["sqnr"]))
        result = CliRunner().invoke(app, ["profile", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert result.stderr.splitlines() == [result.stderr.strip()]
        assert result.stderr.startswith(f"error: {out} is in use by {holder}")
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    @register_metric("held_sqnr", kind="quality", stage="output", replace=True)
    def fast_sqnr(reference, candidate):
        return sqnr(reference, candidate)

    try:
        resumed = profile(pipe, out=out, **kw)
    finally:
        METRICS.pop("held_sqnr", None)
    assert len(resumed) == 2  # conv_in × (w2, w8), one step group (2 steps)
    assert not (out / ".lock").exists()


def test_torn_reference_cache_is_recomputed(pipe, tmp_path):
    """A cached FP reference cut short (a run killed while writing it, before writes were atomic) is
    measured again with one warning, not a failure of every resume."""
    kw = dict(SMALL, layers=r"^conv_in$")
    full = profile(pipe, out=tmp_path / "p", **kw)
    [cache] = (tmp_path / "p" / "cache").iterdir()
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    (tmp_path / "p" / "measurements.jsonl").unlink()  # so the run measures against the recomputed reference
    logs: list[str] = []
    again = profile(pipe, out=tmp_path / "p", log=logs.append, **kw)
    warnings = [m for m in logs if m.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {cache}: not a readable reference (")
    pd.testing.assert_frame_equal(_frame(again), _frame(full), check_exact=True)
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # whole again, no temporary left
    assert cal.Reference.load(cache).settings()["prompts_hash"] == cal.prompts_hash(PROMPTS)


def test_torn_last_line_is_redone(pipe, tmp_path):
    kw = dict(SMALL, layers=r"^conv_(in|out)$")
    full = profile(pipe, out=tmp_path / "p", **kw)
    path = tmp_path / "p" / "measurements.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-2]) + lines[-2][:17])  # drop the last row, tear the one before
    assert len(Profile.load(tmp_path / "p")) == len(full) - 2
    again = profile(pipe, out=tmp_path / "p", **kw)
    pd.testing.assert_frame_equal(_frame(again), _frame(full))
    assert _lines(path) == len(full)


def test_shards_merge_to_one_run(pipe, tmp_path):
    kw = dict(SMALL, layers=r"^(conv_in|down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn2\.to_q)$")
    whole = profile(pipe, out=tmp_path / "whole", **kw)
    parts = [profile(pipe, out=tmp_path / f"s{i}", shard=f"{i}/2", **kw) for i in range(2)]
    assert sum(len(p) for p in parts) == len(whole) and all(len(p) for p in parts)
    merged = merge(tmp_path / "merged", [tmp_path / f"s{i}" for i in range(2)])
    pd.testing.assert_frame_equal(_frame(Profile.load(tmp_path / "merged")), _frame(whole))
    assert merged.meta["shard"] is None
    with pytest.raises(ProfileError, match="already holds"):
        merge(tmp_path / "merged", [tmp_path / "s0"])


def test_other_model_is_refused(pipe, tiny_pipe_factory, tmp_path):
    kw = dict(SMALL, layers=r"^conv_in$")
    profile(pipe, out=tmp_path / "p", **kw)
    other = tiny_pipe_factory(seed=1)
    with pytest.raises(ProfileError, match="fingerprint"):
        profile(other, out=tmp_path / "p", **kw)
    with pytest.raises(ProfileError, match="sampling"):
        profile(pipe, out=tmp_path / "p", **dict(kw, steps=8))


def test_custom_metric_is_profiled_and_stored(pipe, tmp_path):
    @register_metric("mean_shift", kind="content", stage="image", version="2", replace=True)
    def mean_shift(reference: torch.Tensor, candidate: torch.Tensor, prompts):
        assert len(prompts) == len(reference)
        d = float((candidate.mean() - reference.mean()).abs())
        return -d, d

    try:
        kw = dict(SMALL, metrics=["sqnr", "mean_shift"], layers=r"^(conv_in|mid_block\.attentions\.0\.transformer_blocks\.0\.ff\.net\.2)$")
        prof = profile(pipe, out=tmp_path / "p", **kw)
        rows = prof.df[prof.df.metric == "mean_shift"]
        assert set(rows.layer) == {"mid_block.attentions.0.transformer_blocks.0.ff.net.2"}  # a content layer
        assert len(rows) == 3 * 2 and (rows.degradation >= 0).all() and (rows.value == -rows.degradation).all()
        meta = Profile.load(tmp_path / "p").meta
        assert meta["metrics"]["mean_shift"] == {"kind": "content", "stage": "image", "version": "2"}
    finally:
        METRICS.pop("mean_shift", None)


FAMILY_LAYERS = {  # a conv, the added conditioning, a cross-attention (content) layer, a split shortcut / output
    "sdxl": r"^(conv_in|add_embedding\.linear_1|down_blocks\.1\.attentions\.0\.transformer_blocks\.1\.attn2\.to_k"
            r"|up_blocks\.0\.resnets\.0\.conv_shortcut)$",
    "pixart": r"^(pos_embed\.proj|caption_projection\.linear_1|transformer_blocks\.0\.attn2\.to_v|proj_out)$",
}  # fmt: skip


@pytest.mark.parametrize("name", list(FAMILY_LAYERS))
def test_other_pipelines_profile_batched_equals_exact(name):
    """SDXL (added text/time conditioning, Euler, restarts mid-trajectory) and PixArt-alpha (T5 mask,
    learned sigma, multistep DPM-Solver from step 0): output and image (ssim) metrics, batched == exact."""
    from tests.conftest import TINY_PIPELINES

    pipe = TINY_PIPELINES[name]()
    kw = dict(SMALL, out=None, all_metrics=True, layers=FAMILY_LAYERS[name], step_groups=[[0, 1], [2, 3]])
    exact = profile(pipe, mode="exact", **kw).df
    batched = profile(pipe, mode="batched", slots=4, **kw).df
    assert len(exact) == 4 * 3 * 2 * 2  # layers × (w2, w8, a4) × groups × (sqnr, ssim)
    assert_same_rows(exact, batched)
    assert (exact.degradation >= 0).all() and set(exact.metric) == {"sqnr", "ssim"}
    w = exact[exact.tensor == "weight"].pivot_table(index=["layer", "metric", "step_group"], columns="bits",
                                                    values="degradation")  # fmt: skip
    assert (w[2] >= w[8]).mean() > 0.9 and (w[2] > 0).all()  # 2-bit weights hurt, and more than 8-bit
    fisher = profile(pipe, mode="fisher", **dict(kw, metrics=None, all_metrics=False)).df
    assert len(fisher) == 4 * 3 * 2 and fisher.degradation.gt(0).all()


def test_shipped_demo_profile_is_still_accepted(tmp_path):
    """The demo reference (fingerprint, prompts hash, timesteps) is what the shipped profile was measured
    with: resuming a copy of it measures nothing new and refuses nothing."""
    import shutil

    shutil.copytree(ROOT / "profiles" / "demo", tmp_path / "demo")
    before = Profile.load(tmp_path / "demo")
    after = profile(None, out=tmp_path / "demo", tensors=("weight",), layers=r"^conv_in$")
    assert after.meta["sampling"] == before.meta["sampling"] and after.meta["fingerprint"] == before.meta["fingerprint"]
    pd.testing.assert_frame_equal(_frame(after), _frame(before))
