"""The one script a GPU session runs for issue #18: profiling speed and memory at SDXL size (≤ 8 min on an H100).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/gpu_scale.py                  # on a CUDA machine
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/gpu_scale.py --device cpu --model sd15 --resolution 64 \\
        --n-prompts 1 --steps 1 --output-units 8 --naive-units 4 --image-units 2 --max-memory 8GiB \\
        --layers '^down_blocks\\.1\\.attentions\\.0\\.transformer_blocks\\.0\\.attn2'

Two parts, each from the same code users run:

1. `benchmarks/profile_speed.py` on the bundled architecture with random weights (default sdxl-turbo,
   512 px, 4 prompts × 4 steps, fp16 on CUDA): naive vs batched vs Fisher rates, SSIM time per image
   measurement, peak device bytes → `benchmarks/results/profile_speed_<model>_<device>.{json,md}`.
2. `mpsearch.profile(..., max_memory=...)` (default 22 GiB) in fisher mode over every layer and in
   batched mode (sqnr + ssim) over `--layers`: the memory plan's predicted peak against the measured one
   (`torch.cuda.max_memory_allocated`), and the seconds → `benchmarks/results/gpu_scale_<device>.{json,md}`.

On a CPU (`--device cpu`) it runs the same steps at whatever small size is given, to test the script; its
peaks are then LiveBytes-free (not measured) and its figures are not GPU figures.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import profile_speed  # noqa: E402
from benchmarks.random_weights import random_pipeline  # noqa: E402
from mpsearch.profiling import calibration as cal  # noqa: E402


def memory_run(pipe, args, mode: str) -> dict:
    """One `profile` under `--max-memory`: seconds, the plan's note, predicted and measured peak bytes."""
    from mpsearch.profiling.profiler import profile

    notes: list[str] = []
    kw = dict(prompts=cal.demo_prompts(args.n_prompts), steps=args.steps, guidance=args.guidance,
              resolution=args.resolution, out=None, max_memory=args.max_memory, log=notes.append, device=args.device,
              mode=mode)  # fmt: skip
    if mode == "batched":
        kw.update(metrics=["sqnr", "ssim"], layers=args.layers, slots=args.slots, bits=(4, 8), act_bits=(8, 16))
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    prof = profile(pipe, **kw)
    seconds = time.perf_counter() - t0
    measured = torch.cuda.max_memory_allocated() if cuda else None
    plan = next((n for n in notes if n.startswith("memory plan")), None)
    return {"mode": mode, "rows": len(prof.df), "seconds": round(seconds, 2), "plan": plan,
            "measured_peak_bytes": measured}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="sdxl-turbo", help="a bundled config (random weights)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--n-prompts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=0.0)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--output-units", type=int, default=256)
    ap.add_argument("--naive-units", type=int, default=32)
    ap.add_argument("--image-units", type=int, default=16)
    ap.add_argument("--layers", default=r"^up_blocks\.0\.attentions\.0\.transformer_blocks\.[01]\.")
    ap.add_argument("--max-memory", default="22GiB")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = ap.parse_args(argv)
    command = "OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/gpu_scale.py " + shlex.join(argv or sys.argv[1:])
    dev = args.device.split(":")[0]
    speed = profile_speed.main([
        "--model", args.model, "--random-weights", "--device", args.device, "--resolution", str(args.resolution),
        "--n-prompts", str(args.n_prompts), "--steps", str(args.steps), "--guidance", str(args.guidance),
        "--slots", str(args.slots), "--output-units", str(args.output_units), "--naive-units", str(args.naive_units),
        "--image-units", str(args.image_units), "--out", str(args.out), "--max-memory", args.max_memory,
    ])  # fmt: skip
    dtype = torch.float32 if dev == "cpu" else torch.float16
    runs = []
    for mode in ("fisher", "batched"):
        pipe = random_pipeline(args.model, dtype=dtype, device=args.device)
        runs.append(memory_run(pipe, args, mode))
        print(runs[-1], flush=True)
        del pipe
        if dev == "cuda":
            torch.cuda.empty_cache()
    result = {"command": command, "model": args.model, "device": args.device, "max_memory": args.max_memory,
              "gpu": torch.cuda.get_device_name() if dev == "cuda" else None,
              "speed": {k: speed[k] for k in ("output_measurements", "image_measurements", "peak_bytes",
                                              "ssim_seconds_per_measurement", "setup_s")},
              "memory_runs": runs}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"gpu_scale_{dev}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"gpu_scale_{dev}.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    lines = ["# Profiling at scale (issue #18)", "", "```", r["command"], "```", "",
             f"Model `{r['model']}` with random weights on {r['gpu'] or r['device']}; speed figures in "
             f"`profile_speed_{r['model']}_{r['device'].split(':')[0]}.md`.", "",
             f"| profile under --max-memory {r['max_memory']} | rows | seconds | memory plan | measured peak |",
             "|---|---:|---:|---|---:|"]  # fmt: skip
    for run in r["memory_runs"]:
        peak = run["measured_peak_bytes"]
        lines.append(f"| {run['mode']} | {run['rows']} | {run['seconds']} | {run['plan']} | "
                     f"{'n/a (CPU)' if peak is None else f'{peak / 2**30:.2f} GiB'} |")  # fmt: skip
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()
