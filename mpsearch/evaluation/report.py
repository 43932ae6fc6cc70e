"""The evaluation report: Markdown with an image grid, a Pareto plot and a per-layer bit map.

`write_report(evaluation, folder)` writes `report.md`, `grid.png` (FP vs plan vs baselines, same seeds),
`pareto.png` (denoiser bytes vs every image metric, per split), `bitmap.png` (weight and activation bits
of every layer in inventory order, coloured by group) and `results.json` (every number in the report).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mpsearch.evaluation.evaluator import Evaluation
from mpsearch.model import Inventory
from mpsearch.planning.cost import FLOAT_BITS
from mpsearch.planning.plan import Plan

GROUP_COLORS = {"quality": "#1f77b4", "content": "#d62728"}
KIND_STYLE = {"fp": ("black", "s"), "plan": ("#d62728", "*"), "uniform": ("#1f77b4", "o"),
              "random": ("#7f7f7f", "x"), "checkpoint": ("#2ca02c", "D")}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mb(n: float) -> str:
    return f"{n / 1e6:,.3f} MB"


def bit_map(inv: Inventory, plan: Plan, path: str | Path, title: str | None = None) -> Path:
    """Bars of weight bits per layer (inventory order), coloured by group; activation bits as a line."""
    plt = _plt()
    n = len(inv)
    fig, ax = plt.subplots(figsize=(min(24, max(8, n * 0.08)), 3.4))
    xs = range(n)
    w = [plan.layers[l.name].w_bits for l in inv.layers]
    a = [plan.layers[l.name].a_bits for l in inv.layers]
    ax.bar(xs, w, width=1.0, color=[GROUP_COLORS.get(l.group, "gray") for l in inv.layers], edgecolor="none")
    if any(b < FLOAT_BITS for b in a):
        ax.step(xs, a, where="mid", color="black", lw=0.8, label="activation bits")
    for g, c in GROUP_COLORS.items():
        ax.bar([0], [0], color=c, label=f"{g} (weight bits)")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, 17)
    ax.set_yticks([2, 3, 4, 5, 6, 8, 16])
    ax.set_xlabel(f"layer (inventory order, {n} layers)")
    ax.set_ylabel("bits")
    ax.set_title(title or f"{inv.model}: per-layer bits ({plan.predicted.get('mean_w_bits', '?')} mean weight bits)")
    ax.legend(loc="upper right", fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def pareto_plot(ev: Evaluation, path: str | Path) -> Path:
    """Bytes (x) against each image metric (one panel per metric and split), every candidate a point."""
    plt = _plt()
    rows = ev.rows()
    metrics = [m for m in ("adherence", "ssim") if any(r.get(m) is not None for r in rows)]
    metrics += sorted({k for r in rows for k, v in r.items() if k not in metrics and k in _image_metric_names()
                       and v is not None})
    splits = list(ev.prompts)
    fig, axes = plt.subplots(len(splits), max(1, len(metrics)), figsize=(4.2 * max(1, len(metrics)), 3.4 * len(splits)),
                             squeeze=False)
    for i, split in enumerate(splits):
        for j, m in enumerate(metrics):
            ax = axes[i][j]
            for r in (r for r in rows if r["split"] == split and r.get(m) is not None):
                color, marker = KIND_STYLE.get(r["kind"], ("gray", "."))
                ax.scatter(r["bytes"] / 1e6, r[m], color=color, marker=marker, s=70 if marker == "*" else 30,
                           label=r["kind"], zorder=3)
                ax.annotate(r["name"], (r["bytes"] / 1e6, r[m]), fontsize=6, xytext=(3, 3), textcoords="offset points")
            uni = sorted((r["bytes"], r[m]) for r in rows if r["split"] == split and r["kind"] in ("uniform", "fp")
                         and r.get(m) is not None)
            if len(uni) > 1:
                ax.plot([u[0] / 1e6 for u in uni], [u[1] for u in uni], color=KIND_STYLE["uniform"][0], lw=0.8, alpha=0.6)
            ax.set_xlabel("denoiser bytes (MB)")
            ax.set_ylabel(m)
            ax.set_title(f"{m} — {split} prompts", fontsize=9)
            ax.grid(alpha=0.3)
            handles, labels = ax.get_legend_handles_labels()
            seen = dict(zip(labels, handles, strict=True))
            ax.legend(seen.values(), seen.keys(), fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _image_metric_names() -> set[str]:
    from mpsearch.profiling.metrics import METRICS

    return {n for n, m in METRICS.items() if m.stage == "image"} | {"pixel_mse"}


def image_grid(ev: Evaluation, path: str | Path, per_split: int = 4, tile: int = 96) -> Path:
    """Rows: prompts (first `per_split` of each split); columns: FP, plans, baselines (same seeds)."""
    from mpsearch.pipelines.generate import image_grid as grid

    cols = [c for c in ev.candidates if c.images]
    images, labels = [], []
    for split, prompts in ev.prompts.items():
        for k, prompt in enumerate(prompts[:per_split]):
            for c in cols:
                images.append(c.images[split][k])
                labels.append(f"{c.name} | {prompt}" if c.kind == "fp" else c.name)
    rows = len(images) // max(1, len(cols))
    grid(images, rows=rows, cols=len(cols), labels=labels, tile=tile).save(path)
    return Path(path)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        return f"{v:.4g}"
    return str(v)


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (pandas: average ranks for ties); None below 3 pairs or for a constant side."""
    import pandas as pd

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(pd.Series(a, dtype=float).corr(pd.Series(b, dtype=float), method="spearman"))


def predicted_vs_measured(ev: Evaluation) -> list[str]:
    """Markdown: every plan's predicted loss (the ILP's additive objective under the profile) beside its
    measured image loss (1 − SSIM vs FP, mean over splits), their rank agreement, and the plan's re-ranking
    record when `solve --model` made one, so a user sees where the additive model is off."""
    out = ["", "## Predicted vs measured loss", ""]
    pred = ev.predicted or {}
    if "error" in pred:
        out.append(f"Predicted loss not shown: {pred['error']}.")
    else:
        measured = {c.name: 1 - sum(m["ssim"] for m in c.metrics.values()) / len(c.metrics) for c in ev.candidates
                    if c.plan is not None and c.metrics and all(m.get("ssim") is not None for m in c.metrics.values())}
        names = [n for n in pred.get("loss", {}) if n in measured]
        out += [f"Predicted: the ILP's additive loss under `{pred.get('profile')}` (sum of one-layer-at-a-time "
                "degradations, normalised); measured: 1 − SSIM vs the FP images, mean over splits.", "",
                "| candidate | predicted loss | measured loss |", "|---|---:|---:|"]
        out += [f"| {n} | {pred['loss'][n]:.4g} | {measured[n]:.4g} |" for n in names]
        out += [f"| {n} | – ({why}) | {_fmt(measured.get(n))} |" for n, why in pred.get("missing", {}).items()]
        rho = spearman([pred["loss"][n] for n in names], [measured[n] for n in names])
        if rho is not None:
            out += ["", f"Rank agreement (Spearman) over {len(names)} plans: {rho:.2f}."]
        if names and min(names, key=lambda n: pred["loss"][n]) != min(names, key=lambda n: measured[n]):
            out.append(f"The plan predicted best ({min(names, key=lambda n: pred['loss'][n])}) is not the one "
                       f"measured best ({min(names, key=lambda n: measured[n])}): the additive model is off here.")
    rr = (ev.plan.solver or {}).get("rerank")
    if rr:
        metric = rr["metric"]
        out += ["", f"The plan was re-ranked by sampling (`solve --model`): {len(rr['candidates'])} plans under the "
                f"budget, each sampled on {rr['cost']['prompts']} calibration prompts ({rr['cost']['renders']} renders, "
                f"{rr['cost']['seconds']:.1f} s); kept #{rr['chosen']}, predicted best #{rr['predicted_best']}.", "",
                f"| # | found by | predicted loss | measured {metric} |", "|---|---|---:|---:|"]
        out += [f"| {i}{' (kept)' if i == rr['chosen'] else ''} | {c['how']} | {c['predicted_loss']:.4g} | "
                f"{c['measured_' + metric]:.4g} |" for i, c in enumerate(rr["candidates"])]
    return out


def markdown(ev: Evaluation, files: dict[str, str]) -> str:
    inv, plan = ev.inventory, ev.plan
    rows = ev.rows()
    metric_cols = []
    for r in rows:
        for k in r:
            if k not in ("name", "kind", "split", "bytes", "mean_w_bits") and k not in metric_cols:
                metric_cols.append(k)
    fp16 = next((c.bytes for c in ev.candidates if c.kind == "fp"), 0)
    out = [f"# mpsearch evaluation: {inv.model}", ""]
    out.append(f"Plan: format `{plan.format}`, budget `{plan.budget}`, {len(inv)} layers, "
               f"{plan.predicted.get('mean_w_bits', '?')} mean weight bits, predicted "
               f"{plan.predicted.get('bytes', 0):,} bytes ({plan.predicted.get('bytes', 0) / max(fp16, 1):.1%} of fp16). "
               + (f"Sampling: FP at {ev.settings['steps']} steps, the plan and its baselines at its kept timesteps "
                  f"{plan.kept_timesteps}" if plan.kept_timesteps else f"Sampling: {ev.settings['steps']} steps")
               + f", guidance {ev.settings['guidance']}, seeds from "
               f"{ev.settings['seed']}; prompts: " + ", ".join(f"{len(v)} {k}" for k, v in ev.prompts.items()) + ".")
    out += ["", "Image metrics compare with the FP images of the same prompts and seeds; `sqnr`/`mse` are the "
            "denoiser outputs on the calibration reference inputs (calib rows only).", ""]
    if ev.export:
        e = ev.export
        out += ["## Bytes", "", "| | bytes |", "|---|---:|",
                f"| fp16 denoiser | {e['fp16_bytes']:,} |",
                f"| predicted (cost model, `{e['format']}`) | {e['predicted_bytes']:,} |",
                f"| written tensors | {e['tensor_bytes']:,} |",
                f"| safetensors header | {e['header_bytes']:,} |",
                f"| file | {e['file_bytes']:,} ({(e['file_bytes'] - e['predicted_bytes']) / e['predicted_bytes']:+.2%} vs predicted) |",
                f"| BOS rows (bos.safetensors) | {e['bos_bytes']:,} |"]
        if e.get("budget_bytes"):
            out.append(f"| budget `{e['budget']}` | {e['budget_bytes']:,} |")
        out += ["", f"Written tensors equal the prediction: **{e['tensor_bytes'] == e['predicted_bytes']}**.", ""]
    if ev.memory:
        out += ["## Peak memory (process RSS)", "", "| stage | before | peak | growth |", "|---|---:|---:|---:|"]
        for stage, m in ev.memory.items():
            out.append(f"| {stage} | {_mb(m['rss_before'])} | {_mb(m['rss_peak'])} | {_mb(m['rss_delta'])} |")
        ck = next((c for c in ev.candidates if c.kind == "checkpoint"), None)
        if ck is not None:
            out += ["", f"Loaded checkpoint vs simulation: max pixel difference "
                    f"{ck.extra.get('max_pixel_diff_vs_simulation')} (0..255)."]
        out.append("")
    out += ["## Results", "", "| candidate | split | bytes | % fp16 | mean w bits | " + " | ".join(metric_cols) + " |",
            "|---|---|---:|---:|---:|" + "---:|" * len(metric_cols)]
    for r in rows:
        out.append(f"| {r['name']} | {r['split']} | {r['bytes']:,} | {r['bytes'] / max(fp16, 1):.1%} | "
                   f"{r['mean_w_bits']} | " + " | ".join(_fmt(r.get(k)) for k in metric_cols) + " |")
    out += predicted_vs_measured(ev)
    out += ["", "## Images", "", f"![grid]({files['grid']})", "",
            "Columns: " + ", ".join(c.name for c in ev.candidates if c.images) + ". Same seed per row.", "",
            "## Pareto", "", f"![pareto]({files['pareto']})", "", "## Per-layer bits", "", f"![bits]({files['bitmap']})", ""]
    hist: dict[int, int] = {}
    for b in plan.layers.values():
        hist[b.w_bits] = hist.get(b.w_bits, 0) + 1
    out.append("Weight-bit histogram (layers): " + ", ".join(f"W{b}: {n}" for b, n in sorted(hist.items())) + ".")
    return "\n".join(out) + "\n"


def write_report(ev: Evaluation, folder: str | Path) -> Path:
    """Write report.md, grid.png, pareto.png, bitmap.png and results.json into `folder`; return report.md."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"grid": "grid.png", "pareto": "pareto.png", "bitmap": "bitmap.png"}
    image_grid(ev, folder / files["grid"])
    pareto_plot(ev, folder / files["pareto"])
    bit_map(ev.inventory, ev.plan, folder / files["bitmap"])
    (folder / "results.json").write_text(json.dumps(ev.to_dict(), indent=1, default=str))
    path = folder / "report.md"
    path.write_text(markdown(ev, files))
    return path
