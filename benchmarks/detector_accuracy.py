"""How often the demo detector reads the renderer's own scenes right (clean and with pixel noise).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/detector_accuracy.py [--n 3000]

Writes benchmarks/results/detector_accuracy.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mpsearch.zoo import detector, scenes

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    combos = scenes.all_combinations()
    picks = [combos[i] for i in rng.integers(0, len(combos), args.n)]
    clean = [scenes.render(*c, rng) for c in picks]
    prompts = [scenes.caption(*c) for c in picks]
    rows = {}
    for sigma in (0.0, 0.08):
        imgs = [np.clip(im / 255.0 + rng.normal(0, sigma, im.shape), 0, 1) * 255 if sigma else im for im in clean]
        full, per = detector.adherence([im.astype(np.uint8) for im in imgs], prompts)
        rows[str(sigma)] = {"full": full, **per}
    out = {"command": f"OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/detector_accuracy.py --n {args.n}",
           "n": args.n, "seed": args.seed, "by_noise_sigma": rows}
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "detector_accuracy.json").write_text(json.dumps(out, indent=1))
    lines = ["# Demo detector on the renderer's own scenes\n", f"`{out['command']}`\n",
             "| pixel noise σ (0..1 scale) | all attributes right | " + " | ".join(detector.ATTRIBUTES) + " |",
             "|---|---|" + "---|" * len(detector.ATTRIBUTES)]
    for sigma, r in rows.items():
        lines.append(f"| {sigma} | {100 * r['full']:.1f}% | "
                     + " | ".join(f"{100 * r[a]:.1f}%" for a in detector.ATTRIBUTES) + " |")
    (res / "detector_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
