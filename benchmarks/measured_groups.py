"""Measured content/quality groups (`profile --groups measured`): stable across seeds? how far from the rule?

For each model and seed, the measured pass (`mpsearch.profiling.profiler.measure_groups`: every layer alone at
W4, SQNR on the output and SSIM on the images) is run and stored under `--work/<model>/seed<k>/grouping`
(resumed when rerun); the assignment is then recomputed from the stored rows at several margins (a layer
whose two percentiles differ by no more than the margin keeps the family's rule). Reported per margin: the
agreement of every pair of seeds, the agreement with the family's rule, and the number of content layers.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/measured_groups.py           # demo UNet + tiny random SD3, 3 seeds

Writes benchmarks/results/measured_groups.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.conftest: the tiny family builders

from mpsearch.model import inventory
from mpsearch.profiling.grouping import agreement, assign_groups
from mpsearch.profiling.profiler import measure_groups
from mpsearch.profiling.store import Profile

MARGINS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
RESULTS = Path(__file__).parent / "results"


def _models() -> dict:
    from tests.conftest import build_tiny_sd3_pipeline

    return {"demo": (None, {}),
            "tiny-sd3 (random)": (build_tiny_sd3_pipeline(), {"prompts": [f"a photo of thing {i}" for i in range(4)],
                                                               "steps": 4})}  # fmt: skip


def run(work: Path, seeds: list[int]) -> dict:
    out = {}
    for name, (model, kw) in _models().items():
        rule = {l.name: l.group for l in inventory(model).layers}
        profs, secs = {}, {}
        for seed in seeds:
            folder = work / name.split()[0] / f"seed{seed}"
            fresh = not (folder / "grouping").exists()
            t0 = time.perf_counter()
            measure_groups(model, out=folder, seed=seed, **kw)
            secs[seed] = time.perf_counter() - t0 if fresh else None  # a resumed pass measures nothing
            profs[seed] = Profile.load(folder / "grouping")
        rows = []
        for margin in MARGINS:
            g = {s: assign_groups(p, rule, margin) for s, p in profs.items()}
            pairs = [agreement(g[a], g[b]) for a, b in itertools.combinations(seeds, 2)]
            rows.append({"margin": margin, "seed_agreement_min": min(pairs), "seed_agreement_mean": sum(pairs) / len(pairs),
                         "rule_agreement": sum(agreement(x, rule) for x in g.values()) / len(g),
                         "content": [sum(v == "content" for v in x.values()) for x in g.values()]})  # fmt: skip
        out[name] = {"layers": len(rule), "rule_content": sum(v == "content" for v in rule.values()),
                     "seconds_per_pass": secs, "margins": rows}  # fmt: skip
    return out


def markdown(res: dict) -> str:
    lines = ["# Measured content/quality groups", "",
             "`OMP_WAIT_POLICY=PASSIVE python benchmarks/measured_groups.py` (2 CPU cores)", ""]  # fmt: skip
    for name, r in res.items():
        secs = ", ".join("resumed" if s is None else f"{s:.0f}" for s in r["seconds_per_pass"].values())
        lines += [f"## {name}: {r['layers']} layers, {r['rule_content']} content by the family's rule; "
                  f"pass {secs} s per seed", "",
                  "| margin | seed agreement (min / mean) | agreement with the rule | content layers per seed |",
                  "|---|---|---|---|"]  # fmt: skip
        for m in r["margins"]:
            lines.append(f"| {m['margin']:.2f} | {m['seed_agreement_min']:.1%} / {m['seed_agreement_mean']:.1%} | "
                         f"{m['rule_agreement']:.1%} | {', '.join(map(str, m['content']))} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--work", type=Path, default=None, help="where the passes are stored (default: a new temp dir)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="measured_groups-"))
    res = run(work, [int(s) for s in args.seeds.split(",")])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "measured_groups.json").write_text(json.dumps(res, indent=1))
    (RESULTS / "measured_groups.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
