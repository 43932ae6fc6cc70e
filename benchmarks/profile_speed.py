"""Profiling speed: naive one-at-a-time loop vs slot batching vs the Fisher proxy, on the demo model.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/profile_speed.py
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/profile_speed.py --model sdxl-turbo --random-weights \
        --resolution 64 --n-prompts 2 --output-units 64 --naive-units 16 --image-units 8

`--random-weights` builds a bundled architecture (`mpsearch/configs/<name>.json`) with random weights
(`benchmarks/random_weights.py`), so anyone can measure at real size without downloads: small resolution
on a CPU, the real one (`--resolution 512 --device cuda`) on a GPU. `--output-units` measures an evenly
spread subset of the output measurements in batched mode (the rates extrapolate to the whole profile).

Measures, with the same FP reference and calibrated quantizers for every mode (their setup is timed
separately, not in the rates):

- denoiser-output measurements (`sqnr`, every layer × tensor × bit-width × step group): naive loop on an
  evenly spread subset of `--naive-units` measurements, slot batching on all of them (and on that subset,
  for the exact comparison), the Fisher proxy on all of them;
- image measurements (`ssim` + `adherence`, content layers): naive vs batched on a subset.

Writes `benchmarks/results/profile_speed.{json,md}`. Goals: batched ≥ 3x naive with relative difference
≤ 1e-4; fisher ≥ 20x naive with Spearman ≥ 0.8 against the exact values.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.random_weights` when run as a script

from mpsearch.model import find_denoiser, inventory, load_pipeline
from mpsearch.profiling import calibration as cal
from mpsearch.profiling.engine import Profiler, Unit, plan_units, unit_batches
from mpsearch.profiling.metrics import get_metric
from mpsearch.profiling.session import Candidates, QuantSession

KEY = ["layer", "tensor", "bits", "step_group"]


def run(prof: Profiler, units: list[Unit], slots: int) -> tuple[pd.DataFrame, float]:
    t0 = time.perf_counter()
    rows = []
    for batch in unit_batches(units, slots):
        rows += prof.evaluate(batch)
    return pd.DataFrame(rows), time.perf_counter() - t0


def prefix_bound(pipe, ref, units: list[Unit], inv) -> float:
    """Speedup of slot batching when compute, not per-call overhead, is the limit: each measurement still
    pays for everything downstream of its layer (the suffix); only the upstream part is shared. Bound =
    Σ full forwards / Σ suffixes, with layer MACs in execution order as the cost."""
    _, denoiser = find_denoiser(pipe)
    order: list[str] = []
    mods = {m: n for n, m in denoiser.named_modules() if n in inv}
    hooks = [m.register_forward_pre_hook(lambda m, a: order.append(mods[m])) for m in mods]
    with torch.no_grad():
        ref.forward(denoiser, torch.arange(min(2, ref.n_rows)))
    for h in hooks:
        h.remove()
    macs = np.array([inv[n].macs for n in order], dtype=float)
    after = {n: macs[i:].sum() / macs.sum() for i, n in enumerate(order)}
    return len(units) / sum(after[u.layer] for u in units)


def spread(units: list[Unit], n: int) -> list[Unit]:
    if n >= len(units):
        return list(units)
    idx = np.unique(np.linspace(0, len(units) - 1, n).round().astype(int))
    return [units[i] for i in idx]


def rel_diff(a: pd.DataFrame, b: pd.DataFrame, on: list[str]) -> float:
    m = a.merge(b, on=on, suffixes=("_a", "_b"))
    assert len(m) == len(a) == len(b), (len(m), len(a), len(b))
    den = m[["degradation_a", "degradation_b"]].abs().max(axis=1).clip(lower=1e-300)
    return float(((m.degradation_a - m.degradation_b).abs() / den).max())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the bundled demo model")
    ap.add_argument("--random-weights", action="store_true", help="--model names a bundled config; random weights")
    ap.add_argument("--resolution", type=int, default=None, help="image side in pixels (default the model's)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--output-units", type=int, default=None, help="batched output measurements (default all)")
    ap.add_argument("--max-memory", default=None, help="fit batches and caches to this peak (e.g. 22GiB)")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--naive-units", type=int, default=240, help="output measurements in the naive loop")
    ap.add_argument("--image-units", type=int, default=24, help="image measurements for naive and batched")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--device", default="cpu", help="cpu | cuda (results go to profile_speed_<device>.*)")
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                    help="default: float32 on cpu, float16 on cuda")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    command = "OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/profile_speed.py " + shlex.join(argv or sys.argv[1:])

    pipe, steps, guidance = _pipeline(args)
    _, denoiser = find_denoiser(pipe)
    inv = inventory(pipe, resolution=args.resolution)
    prompts = cal.demo_prompts(args.n_prompts)
    t0 = time.perf_counter()
    ref = cal.reference(pipe, prompts, steps=steps, guidance=guidance, resolution=args.resolution)
    t_ref = time.perf_counter() - t0
    groups = cal.step_groups(ref.timesteps)
    cands = Candidates()
    session = QuantSession(pipe, cands)
    t0 = time.perf_counter()
    session.calibrate(ref)
    t_cal = time.perf_counter() - t0
    prof = Profiler(pipe, ref, session, groups)
    plan = fit_memory(prof, inv, args) if args.max_memory else None
    for g in range(len(groups)):
        prof.fp_output(g)

    sqnr = [get_metric("sqnr")]
    out_units = plan_units(inv.layers, groups, cands, ("weight", "act"), sqnr, all_metrics=True)
    subset = spread(out_units, args.naive_units)
    print(f"{len(inv)} layers, {len(out_units)} output measurements, step groups {groups}", flush=True)

    all_units = len(out_units)
    out_units = spread(out_units, args.output_units or len(out_units))
    naive, t_naive = run(prof, subset, 1)
    print(f"naive: {len(subset)} in {t_naive:.1f} s", flush=True)
    batched_sub, _ = run(prof, subset, args.slots)
    with peak(args.device) as mem_batched:
        batched, t_batched = run(prof, out_units, args.slots)
    print(f"batched: {len(out_units)} in {t_batched:.1f} s", flush=True)
    t0 = time.perf_counter()
    with peak(args.device) as mem_fisher:
        fisher = pd.DataFrame(prof.fisher(inv.names, ("weight", "act")))
    t_fisher = time.perf_counter() - t0
    print(f"fisher: {len(fisher)} in {t_fisher:.1f} s", flush=True)

    # image measurements: content layers, ssim + adherence
    img_metrics = [get_metric("ssim"), get_metric("adherence")]
    content = [l for l in inv.layers if l.group == "content"]
    img_units = spread(plan_units(content, groups, cands, ("weight", "act"), img_metrics, False), args.image_units)
    prof.decode_batch = None  # one decode per slot, as before decodes were batched across slots
    img_naive, t_img_naive = run(prof, img_units, 1)
    prof.decode_batch = 64
    with peak(args.device) as mem_images:
        img_batched, t_img_batched = run(prof, img_units, args.slots)
    t_ssim = ssim_seconds(prof, img_units[0].group)
    print(f"images: naive {t_img_naive:.1f} s, batched {t_img_batched:.1f} s for {len(img_units)}", flush=True)
    session.remove()

    bound = prefix_bound(pipe, ref, out_units, inv)
    rate = {"naive": len(subset) / t_naive, "batched": len(out_units) / t_batched, "fisher": len(fisher) / t_fisher}
    max_rel_subset = rel_diff(naive, batched_sub, KEY + ["metric"])
    batched_on_subset = batched.merge(naive[KEY], on=KEY)
    max_rel = rel_diff(naive, batched_on_subset, KEY + ["metric"])
    m = batched.merge(fisher, on=KEY, suffixes=("_exact", "_fisher"))
    rho = float(m.degradation_exact.rank().corr(m.degradation_fisher.rank()))
    per = m.groupby(["tensor", "bits"]).apply(
        lambda d: d.degradation_exact.rank().corr(d.degradation_fisher.rank()), include_groups=False
    )
    img_rate = {"naive": len(img_units) / t_img_naive, "batched": len(img_units) / t_img_batched}
    img_rel = rel_diff(img_naive, img_batched, KEY + ["metric"])
    result = {
        "command": command,
        "env": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                "device": args.device, "dtype": str(pipe.dtype).removeprefix("torch."),
                "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "model": args.model or "demo", "random_weights": args.random_weights, "resolution": ref.resolution,
        "memory_plan": None if plan is None else {"max_memory": args.max_memory, **plan.__dict__},
        "peak_bytes": {"batched": mem_batched.get("bytes"), "fisher": mem_fisher.get("bytes"),
                       "images": mem_images.get("bytes")},
        "ssim_seconds_per_measurement": round(t_ssim, 5), "layers": len(inv), "prompts": len(prompts), "steps": steps,
        "guidance": guidance, "step_groups": groups, "slots": args.slots,
        "setup_s": {"reference": round(t_ref, 2), "calibration": round(t_cal, 2)},
        "output_measurements": {
            "total": len(out_units), "all": all_units, "naive_subset": len(subset),
            "seconds": {"naive_subset": round(t_naive, 2), "batched_all": round(t_batched, 2), "fisher_all": round(t_fisher, 2)},
            "per_second": {k: round(v, 3) for k, v in rate.items()},
            "batched_over_naive": round(rate["batched"] / rate["naive"], 2),
            "fisher_over_naive": round(rate["fisher"] / rate["naive"], 1),
            "max_rel_diff_batched_vs_naive": max_rel,
            "max_rel_diff_batched_vs_naive_same_batches": max_rel_subset,
            "prefix_sharing_bound": round(bound, 2),
            "spearman_fisher_vs_exact": round(rho, 4),
            "spearman_per_tensor_bits": {f"{t}{b}": round(float(v), 4) for (t, b), v in per.items()},
        },
        "image_measurements": {
            "units": len(img_units), "metrics": ["ssim", "adherence"],
            "seconds": {"naive": round(t_img_naive, 2), "batched": round(t_img_batched, 2)},
            "per_second": {k: round(v, 3) for k, v in img_rate.items()},
            "batched_over_naive": round(img_rate["batched"] / img_rate["naive"], 2),
            "max_rel_diff_batched_vs_naive": img_rel,
        },
    }  # fmt: skip
    o = result["output_measurements"]
    result["goals"] = {
        "batched_3x_identical": bool(o["batched_over_naive"] >= 3 and max(max_rel, img_rel) <= 1e-4),
        "fisher_20x_spearman_0.8": bool(o["fisher_over_naive"] >= 20 and rho >= 0.8),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "profile_speed" + (f"_{args.model}" if args.random_weights else "")
    stem += "" if args.device == "cpu" else f"_{args.device.split(':')[0]}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return result


def _pipeline(args):
    """(pipeline, steps, guidance): the demo, a loaded model, or a bundled architecture with random weights."""
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.random_weights:
        from benchmarks.random_weights import random_pipeline
        from mpsearch.model import bundled_config

        dtype = dtype or (torch.float32 if args.device == "cpu" else torch.float16)
        pipe = random_pipeline(args.model, dtype=dtype, device=args.device)
        steps = args.steps or bundled_config(args.model)["default_steps"]
        guidance = args.guidance if args.guidance is not None else (0.0 if "turbo" in args.model else 5.0)
        return pipe, steps, guidance
    pipe = load_pipeline(args.model, dtype=dtype, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    steps, guidance = cal.demo_settings() if args.model in (None, "demo") else (cal.DEFAULT_STEPS, cal.DEFAULT_GUIDANCE)
    return pipe, args.steps or steps, guidance if args.guidance is None else args.guidance


def fit_memory(prof: Profiler, inv, args):
    """Apply `--max-memory` as `profile(max_memory=...)` does (rows, image slots, decodes, caches)."""
    from mpsearch.profiling.memory import fit, parse_bytes, probe

    model = probe(prof, fisher=True, images=True, layers=list(inv.names), tensors=("weight", "act"))
    kw = dict(rows_per_step=prof.ref.rows_per_step, max_batch=prof.max_batch, slots=args.slots, images=True)
    plan = fit(model, parse_bytes(args.max_memory), fisher=False, **kw)
    fisher_rows = fit(model, parse_bytes(args.max_memory), fisher=True, **kw).max_batch
    prof.max_batch, prof.decode_batch, prof.image_slots = min(plan.max_batch, fisher_rows), plan.decode_batch, plan.image_slots
    prof.session.cache_limit, prof.session.weight_cache_limit = plan.cache_limit, plan.weight_cache_limit
    print(f"memory plan: {plan}", flush=True)
    return plan


@contextlib.contextmanager
def peak(device: str):
    """Peak bytes allocated on a CUDA device while inside (`{"bytes": …}`; empty on the CPU)."""
    out: dict = {}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield out
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        out["bytes"] = torch.cuda.max_memory_allocated()


def ssim_seconds(prof: Profiler, group: int, repeat: int = 5) -> float:
    """Seconds of one SSIM measurement (torch, on the images' device) on the reference's own images."""
    ref = prof.ref.images.to(prof.pipe.device)
    cand = (ref + 0.01).clamp(0, 1)
    metric = get_metric("ssim")
    metric(ref, cand)
    if ref.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        metric(ref, cand)
    return (time.perf_counter() - t0) / repeat


def _gib(n: int | None) -> str:
    return "n/a (CPU)" if n is None else f"{n / 2**30:.2f} GiB"


def where(env: dict) -> str:
    if env.get("device", "cpu") == "cpu":
        return "CPU"
    return f"{env.get('gpu') or env['device']} ({env.get('dtype')})"


def markdown(r: dict) -> str:
    o, im = r["output_measurements"], r["image_measurements"]
    env = r["env"]
    lines = [
        "# Profiling speed: naive vs slot batching vs Fisher proxy",
        "",
        "```",
        r["command"],
        "```",
        "",
        f"Model `{r['model']}` ({r['layers']} layers), {r['prompts']} prompts × {r['steps']} steps, guidance "
        f"{r['guidance']}, step groups {r['step_groups']}, {r['slots']} slots. {where(env)}, {env['torch_threads']} torch "
        f"threads on {env['cpu_count']} cores, **OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}**, torch {env['torch']}. "
        f"Setup shared by all modes (not in the rates): FP reference {r['setup_s']['reference']} s, activation "
        f"calibration {r['setup_s']['calibration']} s.",
        "",
        f"- weights: {'random (bundled config)' if r.get('random_weights') else 'the model own'}, resolution "
        f"{r.get('resolution')} px; one SSIM measurement (torch, on the device): {r.get('ssim_seconds_per_measurement')} s; "
        f"peak device bytes batched / fisher / images: "
        + " / ".join(_gib(r.get("peak_bytes", {}).get(k)) for k in ("batched", "fisher", "images")),
        "",
        f"## Denoiser-output measurements (sqnr; {o['total']} = layers × tensors × bits × step groups)",
        "",
        "| mode | measurements | seconds (OMP_WAIT_POLICY=PASSIVE) | per second | vs naive |",
        "|---|---|---|---|---|",
        f"| naive (one at a time) | {o['naive_subset']} (even subset) | {o['seconds']['naive_subset']} | "
        f"{o['per_second']['naive']} | 1.0x |",
        f"| batched (slots) | {o['total']}{'' if o['total'] == o.get('all', o['total']) else ' (even subset)'} | {o['seconds']['batched_all']} | {o['per_second']['batched']} | "
        f"**{o['batched_over_naive']}x** |",
        f"| fisher (1 backward) | {o.get('all', o['total'])} | {o['seconds']['fisher_all']} | {o['per_second']['fisher']} | "
        f"**{o['fisher_over_naive']}x** |",
        "",
        f"- max relative difference batched vs naive: **{o['max_rel_diff_batched_vs_naive']:.3g}** "
        f"(on the naive subset; batching that subset alone: {o['max_rel_diff_batched_vs_naive_same_batches']:.3g})",
        f"- why batched stays near {o['batched_over_naive']}x on this CPU: at these batch sizes the denoiser is "
        f"compute-bound on 2 cores (a bigger batch costs proportionally more), so batching only saves the "
        f"work upstream of each perturbed layer (computed once per batch, and cached across batches for the "
        f"same inputs). Every measurement still pays for everything downstream of its layer; with layer MACs "
        f"in execution order that bounds the speedup at **{o['prefix_sharing_bound']}x** here. On a GPU, where "
        f"small batches leave the device idle, the batch itself is the gain.",
        f"- Spearman rank correlation fisher vs exact (all {o['total']} measurements): "
        f"**{o['spearman_fisher_vs_exact']}**",
        "- per tensor/bits (ranking layers at one bit-width): "
        + ", ".join(f"{k} {v}" for k, v in o["spearman_per_tensor_bits"].items()),
        "",
        f"## Image measurements (ssim + adherence on content layers; {im['units']} measurements)",
        "",
        "| mode | seconds (OMP_WAIT_POLICY=PASSIVE) | per second | vs naive |",
        "|---|---|---|---|",
        f"| naive | {im['seconds']['naive']} | {im['per_second']['naive']} | 1.0x |",
        f"| batched | {im['seconds']['batched']} | {im['per_second']['batched']} | **{im['batched_over_naive']}x** |",
        "",
        f"- max relative difference batched vs naive: **{im['max_rel_diff_batched_vs_naive']:.3g}**",
        "",
        "## Goals",
        "",
        f"- batched ≥ 3x naive with relative difference ≤ 1e-4: **{'met' if r['goals']['batched_3x_identical'] else 'NOT met'}**",
        f"- fisher ≥ 20x naive with Spearman ≥ 0.8: **{'met' if r['goals']['fisher_20x_spearman_0.8'] else 'NOT met'}**",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
