"""Backends: the Ray profile equals the local one, also when an actor dies mid-task; the missing-Ray hint.

Runs on a real local Ray cluster (`ray.init(num_cpus=2)`), skipped only when `ray` is not importable."""

from __future__ import annotations

import builtins
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mpsearch.cli import app
from mpsearch.profiling import calibration as cal
from mpsearch.profiling.backends import RAY_HINT, get_backend
from mpsearch.profiling.metrics import METRICS, register_metric, sqnr
from mpsearch.profiling.profiler import profile
from mpsearch.profiling.store import Profile

KEYS = ["layer", "tensor", "bits", "metric", "step_group"]
# 4 layers × (w2, w8, a4) × 2 step groups; output (sqnr) and image (ssim) units
KW = dict(prompts=cal.demo_prompts(2), steps=4, step_groups=2, bits=(2, 8), act_bits=(4, 16), metrics=["sqnr", "ssim"],
          layers=r"^(conv_in|conv_out|down_blocks\.0\.resnets\.0\.conv1|mid_block\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k)$")  # fmt: skip


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    # Ray puts AF_UNIX sockets (at most 107 bytes of path) under its temp dir, which defaults to $TMPDIR:
    # a short folder of its own keeps the test independent of how long the machine's temp path is.
    short = tempfile.mkdtemp(prefix="ray", dir="/tmp" if os.path.isdir("/tmp") else None)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False, _temp_dir=short)
    yield ray
    ray.shutdown()
    shutil.rmtree(short, ignore_errors=True)


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The driver (reference, calibration) and the local run on one thread, like each CPU actor: the
    thread count changes the order of float sums, and so the last bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local(pipe, tmp_path_factory) -> Profile:
    return profile(pipe, out=tmp_path_factory.mktemp("local") / "p", **KW)


def _equal(ray_prof: Profile, local: Profile) -> None:
    """Output-metric rows bit for bit; image rows to 1e-9: the actors' pipeline is rebuilt from its
    `save_pretrained` files, whose reload decodes images that differ in the last bits (so does a local
    run of the saved folder)."""
    a, b = ray_prof.df, local.df
    pd.testing.assert_frame_equal(a[KEYS], b[KEYS])
    out = a.metric == "sqnr"
    pd.testing.assert_frame_equal(a[out], b[out], check_exact=True)
    pd.testing.assert_frame_equal(a[~out], b[~out], check_exact=False, rtol=0, atol=1e-9)


def _stored(path: Path) -> pd.DataFrame:
    return pd.read_json(path / "measurements.jsonl", lines=True)


def test_ray_profile_equals_local(ray_cluster, pipe, local, tmp_path):
    prof = profile(pipe, out=tmp_path / "p", backend="ray", workers=2, **KW)
    _equal(prof, local)
    raw = _stored(tmp_path / "p")
    assert len(raw) == len(local) == 4 * 3 * 2 and not raw.duplicated(KEYS).any()
    # resumed through the CLI (the same model from its folder): everything is stored, nothing is redone
    pipe.save_pretrained(tmp_path / "model")
    (tmp_path / "prompts.txt").write_text("\n".join(KW["prompts"]) + "\n")
    args = ["profile", "--model", str(tmp_path / "model"), "--prompts", str(tmp_path / "prompts.txt"), "--steps", "4",
            "--step-groups", "2", "--bits", "2,8", "--act-bits", "4,16", "--metrics", "sqnr,ssim", "--layers",
            KW["layers"], "--out", str(tmp_path / "p"), "--backend", "ray", "--workers", "2"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "0 evaluations" not in r.output and f"{len(raw)} already stored" in r.output
    assert len(_stored(tmp_path / "p")) == len(raw)


def test_actor_killed_mid_task_still_gives_the_full_profile(ray_cluster, pipe, local, tmp_path):
    counter, marker = tmp_path / "calls", tmp_path / "crashed"

    def crash_once(reference, candidate):
        """sqnr, except that the 5th call anywhere kills its process (an actor dying mid-task)."""
        with open(counter, "a") as f:
            f.write(".")
        if counter.stat().st_size >= 5:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return sqnr(reference, candidate)

    original = METRICS["sqnr"]
    register_metric("sqnr", kind="quality", stage="output", replace=True)(crash_once)  # shipped to the actors
    try:
        prof = profile(pipe, out=tmp_path / "p", backend="ray", workers=2, **KW)
    finally:
        METRICS["sqnr"] = original
    assert marker.exists()  # an actor did die
    _equal(prof, local)
    raw = _stored(tmp_path / "p")
    assert len(raw) == len(local) and not raw.duplicated(KEYS).any()


def test_backend_options_are_checked(monkeypatch, tmp_path):
    r = CliRunner().invoke(app, ["profile", "--workers", "2", "--out", str(tmp_path / "p")])
    assert r.exit_code != 0 and "need --backend ray" in r.output

    with pytest.raises(ValueError, match="backend must be one of"):
        get_backend("slurm")
    with pytest.raises(ValueError, match="need --backend ray"):
        get_backend("local", workers=2)
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r"pip install 'mpsearch\[ray\]'"):
        get_backend("ray")
    assert "pip install 'mpsearch[ray]'" in RAY_HINT
