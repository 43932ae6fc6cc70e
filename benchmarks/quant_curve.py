"""Uniform quantization curve of a bundled model: weights W8…W2 (activations FP) and activations A8…A4
(weights FP), plus W8A8 and W4A8, with mpsearch's own quantizers (the evaluator's simulation, as every
plan is scored), against FP.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/quant_curve.py --model demo-dit [--n-prompts 48]

Adherence = shape, colour and position all right (demo detector), on in-domain captions and held-out
combinations, at the model's default steps and guidance; SSIM against the FP images (same seeds).
Writes benchmarks/results/quant_curve_<model>.{json,md}. This is how one tells whether quantization is
visible on a model: if uniform W3 or W2 keeps FP adherence, plans cannot be told apart on it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (weight bits, activation bits); 16 = left in floating point
POINTS = ((8, 16), (6, 16), (5, 16), (4, 16), (3, 16), (2, 16), (16, 8), (16, 6), (16, 4), (8, 8), (4, 8))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo-dit", help="demo | demo-dit")
    ap.add_argument("--n-prompts", type=int, default=48, help="prompts per split")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    torch.set_flush_denormal(True)
    from mpsearch.evaluation.evaluator import evaluate
    from mpsearch.model import inventory, load_pipeline
    from mpsearch.planning.plan import Plan

    t0 = time.perf_counter()
    pipe = load_pipeline(args.model)
    inv = inventory(pipe)
    plans = []
    for w, a in POINTS:
        plan = Plan.uniform(inv, w, a)
        plan.solver = {"name": f"W{w}A{a}"}
        plans.append(plan)
    ev = evaluate(plans, model=pipe, n_prompts=args.n_prompts, seed=args.seed, with_baselines=False,
                  checkpoint=False, log=lambda m: print(m, flush=True))  # fmt: skip
    rows = []
    for c in ev.candidates:
        name = c.plan.solver["name"] if c.plan is not None else "FP"
        row = {"point": name, "bytes": c.bytes, "mean_w_bits": round(c.mean_bits, 3)}
        for split, m in c.metrics.items():
            row[f"adherence_{split}"] = m.get("adherence")
            row[f"ssim_{split}"] = m.get("ssim")
        rows.append(row)
    cmd = f"OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/quant_curve.py --model {args.model} " \
          f"--n-prompts {args.n_prompts}"  # fmt: skip
    out = {"command": cmd, "model": args.model, "layers": len(inv), "settings": ev.settings, "rows": rows,
           "elapsed_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"quant_curve_{args.model}.json").write_text(json.dumps(out, indent=1) + "\n")
    (res / f"quant_curve_{args.model}.md").write_text(markdown(out))
    print(markdown(out))
    return out


def markdown(out: dict) -> str:
    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}"

    def f3(v):
        return "–" if v is None else f"{v:.3f}"

    s = out["settings"]
    lines = [f"# Uniform quantization curve: `{out['model']}`", "",
             f"`{out['command']}` ({out['elapsed_s']:.0f} s on 2 CPU cores; {s['steps']} steps, guidance "
             f"{s['guidance']}, seed {s['seed']}; all {out['layers']} quantizable layers of the denoiser, "
             "mpsearch's quantizers: weights per-output-channel symmetric, activations calibrated on the FP "
             "calibration prompts)", "",
             "Adherence = shape, colour and position all right (demo detector). SSIM against the FP images.", "",
             "| point | bytes | adherence in-domain % | adherence held-out % | SSIM in-domain | SSIM held-out |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in out["rows"]:
        lines.append(f"| {r['point']} | {r['bytes']:,} | {pct(r.get('adherence_calib'))} | "
                     f"{pct(r.get('adherence_heldout'))} | {f3(r.get('ssim_calib'))} | {f3(r.get('ssim_heldout'))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
