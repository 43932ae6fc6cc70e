"""float16: slot-batched profiling vs the one-at-a-time loop on the demo model (issue #13, item 8).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/fp16_batched_check.py --device cuda

Profiles `--layers` layers spread over the demo UNet (weight 4/8 bits, activation 8 bits, sqnr, every
step group: 54 measurements by default) in float16, `--mode exact` and `--mode batched`, and prints the
largest relative difference of the degradations. Goal: ≤ 1e-3. Writes
`benchmarks/results/fp16_batched_<device>.json`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mpsearch.model import inventory, load_pipeline
from mpsearch.profiling import calibration as cal
from mpsearch.profiling.profiler import profile

GOAL = 1e-3


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda | cpu (float16 matmuls run on both)")
    ap.add_argument("--layers", type=int, default=6, help="layers, evenly spread in execution order")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="default: the demo's own")
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    command = "OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/fp16_batched_check.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    pipe = load_pipeline(None, dtype=torch.float16, device=args.device)
    names = inventory(pipe).names
    chosen = [names[i] for i in np.unique(np.linspace(0, len(names) - 1, args.layers).round().astype(int))]
    kw = dict(out=None, layers=chosen, bits=(4, 8), act_bits=(8, 16), metrics=["sqnr"], all_metrics=True,
              prompts=cal.demo_prompts(args.n_prompts), steps=args.steps, device=args.device)  # fmt: skip
    t0 = time.perf_counter()
    naive = profile(pipe, mode="exact", **kw).df
    t_naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = profile(pipe, mode="batched", slots=args.slots, **kw).df
    t_batched = time.perf_counter() - t0
    keys = ["layer", "tensor", "bits", "metric", "step_group"]
    m = naive.merge(batched, on=keys, suffixes=("_naive", "_batched"))
    assert len(m) == len(naive) == len(batched), (len(m), len(naive), len(batched))
    rel = (m.degradation_naive - m.degradation_batched).abs() / m.degradation_naive.abs().clip(lower=1e-300)
    worst = m.loc[rel.idxmax()]
    result = {
        "command": command,
        "env": {"device": args.device, "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                "dtype": "float16", "torch": torch.__version__, "python": platform.python_version(),
                "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "torch_threads": torch.get_num_threads()},
        "model": "demo", "layers": chosen, "prompts": args.n_prompts, "slots": args.slots,
        "measurements": len(m),
        "max_rel_diff": float(rel.max()),
        "median_rel_diff": float(rel.median()),
        "worst": {k: (worst[k].item() if hasattr(worst[k], "item") else worst[k]) for k in keys}
                 | {"naive": float(worst.degradation_naive), "batched": float(worst.degradation_batched)},
        "seconds": {"naive": round(t_naive, 2), "batched": round(t_batched, 2)},
        "goal_max_rel_diff_1e-3": bool(rel.max() <= GOAL),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fp16_batched_{args.device.split(':')[0]}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{len(m)} measurements in float16 on {result['env']['gpu'] or args.device}: max relative difference "
          f"batched vs naive {rel.max():.3g} (goal ≤ {GOAL:g}: {'met' if result['goal_max_rel_diff_1e-3'] else 'NOT met'}); "
          f"naive {t_naive:.1f} s, batched {t_batched:.1f} s → {path}")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
