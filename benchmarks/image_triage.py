"""Image triage on the demo: a triaged default profile against the full measurement (`profiles/demo`).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/image_triage.py [--profile DIR] [--screen]

`--profile`: a demo profile measured with this tree's defaults (`image_widths="triage"`), e.g. the one
`benchmarks/profile_default.py --keep DIR` leaves; without it one is measured here (and timed). The
reference is the shipped `profiles/demo`, a full measurement with the default options (`image_widths="all"`);
the settings that decide a measurement (model fingerprint, sampling, quantizers, step groups, candidates,
groups) must match, else the script stops.

Reports: image evaluations made vs the full measurement's; how the content layers' image degradations
agree (Spearman over every row, over the estimated rows alone, and over per-layer totals; estimate/measured
ratios); the measured rows' largest difference from the reference; and the default solver's plans at mean-bit
and BitOPs budgets on both profiles: identical or not, and the regret (the triaged plan's objective under the
reference's losses, relative to the reference plan's). `--screen` also measures (and times) what the
alternative designs need, the content layers' output metric (sqnr, mse) at every width, and simulates on
the reference's rows the rules the default was chosen against: image metrics only where the output metric
is above a floor (the others scaled from the nearest measured width by the output metric's ratio), image
metrics from the lowest width up until they fall below a floor (the rest scaled by 4^-bits), and the
default rule itself (its simulation must reproduce the measured triaged profile's plans).

Writes `benchmarks/results/image_triage.{json,md}`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's mpsearch, whatever PYTHONPATH says
BUDGETS = ["2.5bits", "3bits", "3.5bits", "4bits", "30%bitops", "50%bitops"]
SAME = ("fingerprint", "sampling", "quant", "step_groups", "candidates", "groups", "all_metrics", "tensors")
KEY = ["layer", "tensor", "bits", "metric", "step_group"]


def _spearman(a: pd.Series, b: pd.Series) -> float:
    return float(a.rank().corr(b.rank())) if len(a) > 1 else float("nan")


def agreement(ref: pd.DataFrame, tri: pd.DataFrame, content: set[str], image: list[str]) -> dict:
    """How the triaged profile's rows agree with the reference's."""
    m = ref.merge(tri, on=KEY, suffixes=("_ref", "_tri"))
    if len(m) != len(ref) or len(tri) != len(ref):
        raise SystemExit(f"rows differ: reference {len(ref)}, triaged {len(tri)}, matched {len(m)}")
    measured = m[~m.estimated_tri]
    rel = (measured.degradation_ref - measured.degradation_tri).abs() / measured.degradation_ref.abs().clip(lower=1e-300)
    out = {"rows": len(m), "estimated_rows": int(m.estimated_tri.sum()),
           "measured_max_rel_diff": float(rel.max()), "metrics": {}}  # fmt: skip
    for metric in image:
        c = m[(m.metric == metric) & m.layer.isin(content)]
        est = c[c.estimated_tri]
        ratio = est.degradation_tri / est.degradation_ref.where(est.degradation_ref > 0)
        per_layer = c.groupby(["layer", "tensor"])[["degradation_ref", "degradation_tri"]].sum()
        out["metrics"][metric] = {
            "rows": len(c), "estimated": len(est),
            "spearman_all_rows": _spearman(c.degradation_ref, c.degradation_tri),
            "spearman_estimated_rows": _spearman(est.degradation_ref, est.degradation_tri),
            "spearman_per_layer_totals": _spearman(per_layer.degradation_ref, per_layer.degradation_tri),
            "estimate_over_measured_p10_p50_p90": [float(x) for x in np.nanpercentile(ratio, [10, 50, 90])]
            if ratio.notna().any() else None,
            "estimated_zero_where_measured_zero": int(((est.degradation_ref == 0) & (est.degradation_tri == 0)).sum()),
            "estimated_nonzero_where_measured_zero": int(((est.degradation_ref == 0) & (est.degradation_tri > 0)).sum()),
        }  # fmt: skip
    return out


def plans(ref_dir: Path, tri_dir: Path) -> dict:
    """The default solver's plans on both profiles per budget, and the triaged plan's regret under the
    reference's losses."""
    import mpsearch
    from mpsearch.planning.inputs import load_profile
    from mpsearch.planning.problem import build_problem

    ref_df, _, inv = load_profile(ref_dir)
    out = {}
    for budget in BUDGETS:
        pr, pt = mpsearch.solve(str(ref_dir), budget), mpsearch.solve(str(tri_dir), budget)
        lr = {k: (v.w_bits, v.a_bits) for k, v in pr.layers.items()}
        lt = {k: (v.w_bits, v.a_bits) for k, v in pt.layers.items()}
        problem = build_problem(inv, ref_df, budget).problem
        best, got = (problem.evaluate([problem.option_index(i, keys[n]) for i, n in enumerate(inv.names)]).objective
                     for keys in (lr, lt))  # fmt: skip
        out[budget] = {"identical": lr == lt, "layers_differing": sum(lr[k] != lt[k] for k in lr),
                       "regret": (got - best) / best if best else 0.0}  # fmt: skip
    return out


def _simulated(ref: pd.DataFrame, content: set[str], image: list[str], cands: dict, rule, screen: dict) -> tuple:
    """(reference rows with the image rows `rule` skips replaced by its estimates, image evaluations made).
    `rule(widths, sq, img)` → {skipped width: (source width, factor)}, from the output (`sq`) and image
    (`img`, first image metric) degradations per width of one layer, tensor and step group."""
    df = ref.copy()
    idx = {k: i for i, k in enumerate(zip(*(df[c] for c in KEY), strict=True))}
    deg, made = df["degradation"].to_numpy().copy(), 0
    for layer in sorted(content):
        for t in ("weight", "act"):
            widths = sorted(b for b in cands[t] if b < 16)
            for g in sorted(df.step_group.unique()):
                sq = {b: screen.get((layer, t, b, g)) for b in widths}
                img = {b: deg[idx[layer, t, b, image[0], g]] for b in widths}
                skip = rule(widths, sq, img)
                made += len(widths) - len(skip)
                for b, (src, factor) in skip.items():
                    for m in image:
                        deg[idx[layer, t, b, m, g]] = deg[idx[layer, t, src, m, g]] * factor
    return df.assign(degradation=deg), made


def _screen_rule(rho: float):
    def rule(widths, sq, img):
        kept = [b for b in widths if b == widths[0] or sq[b] >= rho * sq[widths[0]]]
        out = {}
        for b in widths:
            if b not in kept:
                src = min(kept, key=lambda k: (abs(k - b), k))
                out[b] = (src, sq[b] / sq[src] if sq[src] > 0 else 1.0)
        return out
    return rule


def _floor_rule(rho: float):
    def rule(widths, sq, img):
        for i, b in enumerate(widths):
            if img[b] <= rho * img[widths[0]]:
                return {c: (b, 4.0 ** (b - c)) for c in widths[i + 1:]}
        return {}
    return rule


def _default_rule(widths, sq, img):
    from mpsearch.profiling.triage import RULES, estimate

    return {b: (src, estimate(1.0, src, b)) for b, src in RULES.lookup("triage")(widths).items()}


def alternatives(ref_dir: Path, screen_dir: Path, content: set[str], image: list[str]) -> dict:
    """Plans at the mean-bit budgets under each simulated rule, vs the reference's."""
    import mpsearch
    from mpsearch.planning.inputs import load_profile
    from mpsearch.profiling.store import Profile

    ref, meta, inv = load_profile(ref_dir)
    scr = Profile.load(screen_dir).df
    scr = scr[scr.metric == "sqnr"]
    screen = dict(zip(zip(scr.layer, scr.tensor, scr.bits, scr.step_group, strict=True), scr.degradation, strict=True))
    rules = {"default (top width, 4^-bits)": _default_rule, "output screen, floor 1/16": _screen_rule(1 / 16),
             "output screen, floor 1/256": _screen_rule(1 / 256), "image floor 1e-2": _floor_rule(1e-2),
             "image floor 1e-3": _floor_rule(1e-3)}  # fmt: skip
    base = {b: mpsearch.solve(str(ref_dir), b).layers for b in BUDGETS[:4]}
    out = {}
    for name, rule in rules.items():
        df, made = _simulated(ref, content, image, meta["candidates"], rule, screen)
        differ = {}
        for b in base:
            got = mpsearch.solve((df, inv, meta), b).layers
            differ[b] = sum(base[b][k] != got[k] for k in got)
        out[name] = {"image_evaluations": made, "layers_differing": differ}
    return out


def measure(out: Path, **kw) -> float:
    import mpsearch

    t0 = time.perf_counter()
    mpsearch.profile(None, out=out, **kw)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", type=Path, help="a triaged demo profile (default: measure one now)")
    ap.add_argument("--reference", type=Path, default=ROOT / "profiles/demo")
    ap.add_argument("--screen", action="store_true", help="also time an output-metric screen of the content layers")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = ap.parse_args(argv)
    command = "OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/image_triage.py " + shlex.join(argv or sys.argv[1:])
    from mpsearch.profiling.store import Profile

    with tempfile.TemporaryDirectory(prefix="mpsearch-triage-") as tmp:
        tri_dir, seconds = args.profile, None
        if tri_dir is None:
            tri_dir = Path(tmp) / "triaged"
            seconds = round(measure(tri_dir), 1)
        ref, tri = Profile.load(args.reference), Profile.load(tri_dir)
        ref.df = ref.df[ref.df.tensor != "unit"]  # the shipped profile also scores prunable units (--prune)
        differ = [k for k in SAME if ref.meta.get(k) != tri.meta.get(k)]
        if differ or tri.meta.get("image_widths", "all") == "all":
            raise SystemExit(f"not comparable: {differ or 'the profile is not triaged'}")
        content = {n for n, g in ref.meta["groups"].items() if g == "content"}
        image = [m for m, d in ref.meta["metrics"].items() if d["stage"] == "image"]
        evals = lambda df: len(df[df.metric.isin(image) & df.tensor.isin(["weight", "act"]) & ~df.estimated].drop_duplicates(KEY[:3] + ["step_group"]))  # noqa: E731
        result = {"command": command, "profile": str(args.profile) if args.profile else None,
                  "reference": str(args.reference.relative_to(ROOT) if args.reference.is_relative_to(ROOT) else args.reference),
                  "image_widths": tri.meta["image_widths"], "profile_seconds": seconds,
                  "image_evaluations": {"full": evals(ref.df), "triaged": evals(tri.df)},
                  **agreement(ref.df, tri.df, content, image), "plans": plans(args.reference, tri_dir)}  # fmt: skip
        if args.screen:
            names = "|".join(f"^{n}$" for n in sorted(content)).replace(".", "[.]")
            result["screen_seconds"] = round(measure(Path(tmp) / "screen", metrics=["sqnr", "mse"], layers=names,
                                                     image_widths="all"), 1)  # fmt: skip
            result["alternatives"] = alternatives(args.reference, Path(tmp) / "screen", content, image)
    ev = result["image_evaluations"]
    ev["saved"] = ev["full"] - ev["triaged"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "image_triage.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "image_triage.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    ev = r["image_evaluations"]
    lines = ["# Image triage on the demo: triaged default profile vs the full measurement", "", "```", r["command"],
             "```", "", f"Triaged profile: {r['profile'] or 'measured by this run'}"
             + (f" ({r['profile_seconds']} s)" if r["profile_seconds"] else "") + f"; reference: `{r['reference']}`"
             " (every width measured). CPU, **OMP_WAIT_POLICY=PASSIVE**.", "",
             f"- image evaluations: full {ev['full']}, triaged {ev['triaged']}: **{ev['saved']} saved "
             f"({ev['saved'] / ev['full']:.0%})**; {r['estimated_rows']} rows stored as estimated (marked)",
             f"- measured rows: {r['rows'] - r['estimated_rows']}, largest relative difference from the reference "
             f"{r['measured_max_rel_diff']:.3g}", "",
             "| content layers' metric | rows | estimated | Spearman, all rows | Spearman, estimated rows | "
             "Spearman, per-layer totals | estimate / measured (p10, p50, p90) |",
             "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for m, a in r["metrics"].items():
        q = a["estimate_over_measured_p10_p50_p90"]
        lines.append(f"| {m} | {a['rows']} | {a['estimated']} | {a['spearman_all_rows']:.4f} | "
                     f"{a['spearman_estimated_rows']:.4f} | {a['spearman_per_layer_totals']:.4f} | "
                     + (", ".join(f"{x:.2f}" for x in q) if q else "n/a (measured 0)") + " |")  # fmt: skip
    lines += ["", "| budget | plan | layers differing | regret (objective under the reference's losses) |",
              "|---|---|---:|---:|"]
    for b, p in r["plans"].items():
        lines.append(f"| {b} | {'identical' if p['identical'] else 'differs'} | {p['layers_differing']} | "
                     f"{p['regret']:.2e} |")
    if "screen_seconds" in r:
        lines += ["", f"**Rules the default was chosen against**, simulated on the reference's rows. Measuring the "
                      f"content layers' output metric at every width (what an output screen needs) took "
                      f"{r['screen_seconds']} s in this run.", "",
                  "| rule | image evaluations | layers differing at " + ", ".join(BUDGETS[:4]) + " |", "|---|---:|---|"]
        for name, a in r["alternatives"].items():
            lines.append(f"| {name} | {a['image_evaluations']} | "
                         + ", ".join(str(v) for v in a["layers_differing"].values()) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
