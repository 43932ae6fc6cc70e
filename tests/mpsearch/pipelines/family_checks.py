"""The end-to-end checks every pipeline family's test runs (`test_<family>.py`), on a tiny pipeline:
inventory → profile (exact, batched, fisher, pruning) → solve (bits, kept steps, pruning) → export → load →
generate, evaluate, distill, each asserting a result, not only that it ran. Kept small: one prompt, two
steps, a few layers profiled (the rest solved as unmeasured-lossless), so a family takes seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from typer.testing import CliRunner

from mpsearch.cli import app
from mpsearch.export.load import load_quantized
from mpsearch.export.simulate import fake_quantize
from mpsearch.export.write import export
from mpsearch.model import QUANTIZABLE, find_denoiser, inventory
from mpsearch.pipelines.generate import generate
from mpsearch.pipelines.timesteps import sampling_at, schedule
from mpsearch.planning.planner import solve
from mpsearch.planning.problem import SearchSpace
from mpsearch.profiling.profiler import profile
from mpsearch.profiling.pruning import find_units

PROMPT = "a red circle at the top left"
KEY = ["layer", "tensor", "bits", "metric", "step_group"]
runner = CliRunner()


def cli(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def check_inventory(pipe, folder: Path | None = None):
    """Every Linear/Conv2d is a layer or excluded (by name); sizes add up to the real parameter count;
    every layer runs (MACs > 0); the CLI's `inspect --json` of the saved pipeline says the same."""
    inv = inventory(pipe)
    _, den = find_denoiser(pipe)
    modules = [n for n, m in den.named_modules() if isinstance(m, QUANTIZABLE)]
    assert sorted(inv.names + list(inv.excluded)) == sorted(modules)
    assert inv.total_params == sum(p.numel() for p in den.parameters())
    assert all(layer.macs > 0 for layer in inv)
    if folder is not None:
        d = json.loads(cli("inspect", "--model", folder, "--json"))
        assert [l["name"] for l in d["layers"]] == inv.names and d["fixed_params"] == inv.fixed_params
    return inv


def check_profiles(pipe, tmp: Path, layers: str) -> None:
    """Exact and batched profiles of the `layers` regex agree to float32 rounding, on an output and an
    image metric; Fisher scores every (layer, tensor, bits) of the model, finitely."""
    kw = dict(prompts=[PROMPT], steps=2, guidance=3.0, bits=(4,), act_bits=(8, 16), metrics=("sqnr", "ssim"),
              all_metrics=True)  # fmt: skip
    exact = profile(pipe, out=tmp / "exact", mode="exact", layers=layers, **kw).df
    batched = profile(pipe, out=tmp / "batched", mode="batched", slots=4, layers=layers, **kw).df
    both = exact.merge(batched, on=KEY, suffixes=("", "_b"))
    assert len(both) == len(exact) == len(batched) > 0
    np.testing.assert_allclose(both["degradation_b"], both["degradation"], rtol=1e-4, atol=1e-6)
    assert (exact.groupby("metric")["degradation"].max() > 0).all()  # quantization moves every metric
    fisher = profile(pipe, out=None, mode="fisher", **kw).df
    assert set(fisher.layer) == set(inventory(pipe).names) and fisher["degradation"].map(math.isfinite).all()


def full_profile(pipe, tmp: Path) -> Path:
    """Every layer's weight at 4 and 8 bits on SQNR, and every prunable unit (batched: seconds): what the
    solves below read."""
    profile(pipe, out=tmp / "full", mode="batched", prune=True, tensors=("weight",), prompts=[PROMPT], steps=2,
            guidance=3.0, bits=(4, 8), metrics=("sqnr",))  # fmt: skip
    return tmp / "full"


def check_export(pipe, prof: Path, tmp: Path):
    """A solved weight-only plan: predicted bytes == bytes written; the reloaded checkpoint generates the
    fake-quant simulation's images within 1/255."""
    plan = solve(prof, "6bits", space=SearchSpace(weight_only=True))
    result = export(plan, tmp / "q", model=pipe)
    assert result.tensor_bytes == result.predicted_bytes == plan.predicted["bytes"]
    qpipe = load_quantized(tmp / "q")
    got = np.asarray(generate(qpipe, [PROMPT], steps=2)[0], dtype=np.int16)
    with fake_quantize(pipe, plan):
        want = np.asarray(generate(pipe, [PROMPT], steps=2)[0], dtype=np.int16)
    assert np.abs(got - want).max() <= 1
    return plan


def check_kept_steps(pipe, prof: Path, tmp: Path, folder: Path | None = None) -> None:
    """Sampling at the pipeline's own schedule through the kept-steps path is the pipeline's own sampling,
    exactly; a kept subset steps between the pool's own sigmas; `solve --steps` keeps evenly spaced ones and
    `generate --plan` samples at them."""
    res = int(json.loads((prof / "meta.json").read_text())["sampling"]["resolution"])
    pool = schedule(pipe, 4, res)
    own = _latents(pipe, res, num_inference_steps=4)
    with sampling_at(pipe, pool, pool=pool, resolution=res) as kw:
        assert torch.equal(_latents(pipe, res, **kw), own)
    with sampling_at(pipe, pool[::2], pool=pool, resolution=res):
        assert _timesteps_seen(pipe, res, 2) == pool[::2]
    plan = solve(prof, "6bits", steps=1, space=SearchSpace(weight_only=True))
    assert plan.kept_timesteps == [json.loads((prof / "meta.json").read_text())["sampling"]["timesteps"][0]]
    plan = solve(prof, "6bits", steps=2, pool=4, model=pipe, space=SearchSpace(weight_only=True))
    assert plan.kept_timesteps == pool[::2] and plan.solver["pool"] == pool  # fractional for flow matching
    plan.save(tmp / "steps.json")
    if folder is not None:  # the plan file round-trips its timesteps; the CLI samples at them
        cli("generate", "--plan", tmp / "steps.json", "--model", folder, "-p", PROMPT, "-o", tmp / "steps.png")


def _latents(pipe, res: int, prompts: tuple[str, ...] = (PROMPT,), **kw) -> torch.Tensor:
    """The pipeline's own `__call__` (guidance 3 unless given), its final latents."""
    gen = torch.Generator().manual_seed(0)
    call = dict(prompt=list(prompts), guidance_scale=3.0, height=res, width=res, output_type="latent", generator=gen)
    from mpsearch.pipelines.capture import call_kwargs

    with torch.no_grad():
        return pipe(**call_kwargs(pipe, {**call, **kw})).images


def _timesteps_seen(pipe, res: int, steps: int) -> list:
    """The scheduler timesteps the pipeline steps through when asked for `steps` steps."""
    seen = []
    step = pipe.scheduler.step

    def spy(output, t, *args, **kwargs):
        seen.append(float(t))
        return step(output, t, *args, **kwargs)

    pipe.scheduler.step = spy
    try:
        _latents(pipe, res, num_inference_steps=steps)
    finally:
        del pipe.scheduler.step
    return [int(t) if float(t).is_integer() else t for t in seen]


def check_pruning(pipe, prof: Path, expected_units: int):
    """Every unit of the family is scored (removed, the denoiser still runs: shapes kept), and a pruning
    solve only ever removes scored units."""
    units = find_units(pipe)
    assert len(units) == expected_units
    df = pd.read_json(prof / "measurements.jsonl", lines=True)
    scores = df[df.tensor == "unit"]
    assert set(scores.layer) == {u.name for u in units}
    assert scores["degradation"].map(math.isfinite).all() and (scores["degradation"] > 0).all()
    plan = solve(prof, "90%", space=SearchSpace(weight_only=True, prune=True))
    assert set(plan.pruned_units) <= {u.name for u in units}
    return plan


def check_evaluate_and_distill(pipe, plan, fresh) -> None:
    """`evaluate` scores the plan against FP on both splits; `distill` trains a fresh copy one step."""
    from mpsearch.evaluation.evaluator import evaluate
    from mpsearch.recovery.distill import distill

    ev = evaluate([plan], model=pipe, prompts={"calib": [PROMPT], "heldout": [PROMPT]}, steps=2, guidance=3.0,
                  with_baselines=False)  # fmt: skip
    assert len(ev.candidates) >= 2  # FP and the plan
    _, result = distill(plan, model=fresh, steps=2, batch=2, n_prompts=1, sample_steps=2, guidance=3.0)
    assert result.steps == 2 and all(map(math.isfinite, result.history))


def check_every_command(pipe, tmp_path, layers: str, *, units: int, fresh) -> None:
    """Every command on a family's tiny pipeline, saved to a folder: inventory, profiles (batched == exact),
    kept steps, export/load within 1/255, pruning with `units` prunable blocks, evaluate and distill
    (`fresh()` builds an untouched copy of the pipeline for distill's student)."""
    folder = tmp_path / "model"
    pipe.save_pretrained(folder)
    check_inventory(pipe, folder)
    check_profiles(pipe, tmp_path, layers)
    prof = full_profile(pipe, tmp_path)
    check_kept_steps(pipe, prof, tmp_path, folder)
    check_export(pipe, prof, tmp_path)
    plan = check_pruning(pipe, prof, expected_units=units)
    check_evaluate_and_distill(pipe, plan, fresh())
