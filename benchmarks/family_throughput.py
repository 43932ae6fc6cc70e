"""Profiling throughput per pipeline family: measurements per second on tiny Flux, SD3 and Sana fixtures
against SD UNet fixtures of similar parameter count and MACs, exact (one at a time) and batched (slots).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/family_throughput.py

Every fixture: the test builder's pipeline (text encoders, VAE, scheduler) with a denoiser widened to
~0.5-1 M parameters; 2 prompts, 2 steps, every layer's weight (4, 8 bits) and input activation (8 bits) on
SQNR. MACs are per denoiser call as `inventory` counts them at the profiled resolution (the DiTs' text
tokens included: Flux's pipeline pads T5 to 512 tokens, SD3 to 256 after CLIP's). Only the measurement
phase is timed (the FP reference and the activation calibration are set-up). Fixtures run interleaved,
`--repeats` times, and the median is kept: the machine is shared.

Goal (issue #15): a DiT family's time per measurement, per GMAC of one call, within 1.5x of the SD UNet's.
Writes `benchmarks/results/family_throughput.{json,md}`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.conftest: the tiny family builders

from mpsearch.model import inventory
from mpsearch.profiling import calibration as cal
from mpsearch.profiling.engine import Profiler, plan_units, unit_batches
from mpsearch.profiling.metrics import get_metric
from mpsearch.profiling.session import Candidates, QuantSession


def fixtures() -> dict:
    """name -> (pipeline, resolution in px)."""
    from diffusers import FluxTransformer2DModel, SanaTransformer2DModel, SD3Transformer2DModel

    from tests import conftest as c

    torch.manual_seed(0)
    flux = c.build_tiny_flux_pipeline()
    flux.register_modules(transformer=FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=40, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(8, 16, 16)))
    sd3 = c.build_tiny_sd3_pipeline()
    sd3.register_modules(transformer=SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=48, num_attention_heads=2,
        caption_projection_dim=96, joint_attention_dim=64, pooled_projection_dim=64, out_channels=4))
    sana = c.build_tiny_sana_pipeline()
    sana.register_modules(transformer=SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=32, num_layers=4,
        num_cross_attention_heads=4, cross_attention_head_dim=32, cross_attention_dim=128, caption_channels=32,
        sample_size=8, patch_size=1))
    for p in (flux, sd3, sana):
        p.transformer.eval().requires_grad_(False)
    # two copies: each fixture holds its own quantization session
    return {"sd-unet@32px": (c.build_tiny_pipeline(), 32), "sd-unet@48px": (c.build_tiny_pipeline(), 48),
            "sd3": (sd3, 32), "flux": (flux, 32),
            "sana": (sana, 64)}


def setup(pipe, resolution: int, prompts: list[str]):
    inv = inventory(pipe, resolution=resolution)
    ref = cal.reference(pipe, prompts, steps=2, guidance=3.0, resolution=resolution)
    cands = Candidates(weight=(4, 8), act=(8, 16))
    session = QuantSession(pipe, cands)
    session.calibrate(ref)
    groups = cal.step_groups(ref.timesteps)
    prof = Profiler(pipe, ref, session, groups)
    units = plan_units(inv.layers, groups, cands, ("weight", "act"), [get_metric("sqnr")], all_metrics=True)
    for g in range(len(groups)):
        prof.fp_output(g)
    return inv, session, prof, units


def timed(prof: Profiler, units, slots: int) -> float:
    t0 = time.perf_counter()
    for batch in unit_batches(units, slots):
        prof.evaluate(batch)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    command = "OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/family_throughput.py " + shlex.join(argv or sys.argv[1:])
    prompts = cal.demo_prompts(2)
    ready = {}
    for name, (pipe, res) in fixtures().items():
        inv, session, prof, units = setup(pipe, res, prompts)
        ready[name] = (inv, session, prof, units, res)
        print(f"{name}: {sum(p.numel() for p in prof.denoiser.parameters()):,} params, {inv.total_macs:,} MACs, "
              f"{len(units)} measurements", flush=True)  # fmt: skip
    times: dict[str, dict[str, list[float]]] = {n: {"exact": [], "batched": []} for n in ready}
    for _ in range(args.repeats):
        for name, (_, _, prof, units, _) in ready.items():
            times[name]["exact"].append(timed(prof, units, 1))
            times[name]["batched"].append(timed(prof, units, args.slots))
    rows = {}
    for name, (inv, session, prof, units, res) in ready.items():
        session.remove()
        gmac = inv.total_macs / 1e9
        med = {mode: statistics.median(ts) for mode, ts in times[name].items()}
        rows[name] = {"params": sum(p.numel() for p in prof.denoiser.parameters()), "macs": inv.total_macs,
                      "resolution": res, "layers": len(inv), "measurements": len(units),
                      **{f"{m}_ms_per_measurement": round(1e3 * t / len(units), 2) for m, t in med.items()},
                      **{f"{m}_ms_per_measurement_per_gmac": round(1e3 * t / len(units) / gmac, 1) for m, t in med.items()}}
    ref_rows = [r for n, r in rows.items() if n.startswith("sd-unet")]
    for r in rows.values():
        base = min(ref_rows, key=lambda u: abs(u["macs"] - r["macs"]))  # the UNet nearest in MACs
        for m in ("exact", "batched"):
            k = f"{m}_ms_per_measurement_per_gmac"
            r[f"{m}_vs_unet"] = round(r[k] / base[k], 2)
    result = {"command": command, "env": {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                                          "python": platform.python_version(), "torch": torch.__version__,
                                          "load_average": os.getloadavg()},
              "repeats": args.repeats, "slots": args.slots, "fixtures": rows,
              "goal_within_1.5x": {n: bool(r["exact_vs_unet"] <= 1.5 and r["batched_vs_unet"] <= 1.5)
                                   for n, r in rows.items() if not n.startswith("sd-unet")}}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "family_throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "family_throughput.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    lines = [f"Profiling throughput per family (`{r['command']}`; CPU, {r['env']['torch_threads']} threads, load "
             f"average {r['env']['load_average'][0]:.1f}; median of {r['repeats']}).", "",
             "| fixture | params | MACs / call | measurements | exact ms / meas. | batched ms / meas. "
             "| exact ms / meas. / GMAC | batched ms / meas. / GMAC | vs the UNet nearest in MACs (exact, batched) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for n, x in r["fixtures"].items():
        lines.append(f"| {n} | {x['params']:,} | {x['macs'] / 1e6:.0f} M | {x['measurements']} | "
                     f"{x['exact_ms_per_measurement']} | {x['batched_ms_per_measurement']} | "
                     f"{x['exact_ms_per_measurement_per_gmac']} | {x['batched_ms_per_measurement_per_gmac']} | "
                     f"{x['exact_vs_unet']}x, {x['batched_vs_unet']}x |")  # fmt: skip
    goals = ", ".join(f"{n}: {'met' if ok else 'NOT met'}" for n, ok in r["goal_within_1.5x"].items())
    return "\n".join(lines + ["", f"Goal (within 1.5x of the UNet per GMAC): {goals}.", ""])


if __name__ == "__main__":
    main()
