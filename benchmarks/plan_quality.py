"""Plan quality on the demo model: our joint ILP vs MixDQ mode vs uniform vs random at equal bytes.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/plan_quality.py [--n-prompts 48]
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/plan_quality.py --model demo-dit   # the SD3 DiT

For mean-weight-bit budgets from 2 to 8, solve from the shipped profile (`profiles/demo`), generate with
each plan (fake quantization, the exporter's own quantizer) on in-domain and held-out prompts with the
same seeds, and measure full-prompt adherence (demo detector) and SSIM against the FP images.
Writes benchmarks/results/plan_quality{,_dit}.{json,md} and docs/images/plan_quality{,_dit}.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = (2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-prompts", type=int, default=48, help="prompts per split")
    ap.add_argument("--model", default="demo", help="demo | demo-dit")
    ap.add_argument("--profile", default=None, help="default: profiles/<model>")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.profile = args.profile or str(ROOT / "profiles" / args.model)
    sfx = "" if args.model == "demo" else "_dit"

    import torch

    torch.set_flush_denormal(True)
    from mpsearch.evaluation.evaluator import evaluate, random_plan, uniform_plan
    from mpsearch.model import load_pipeline
    from mpsearch.planning.inputs import load_profile
    from mpsearch.planning.planner import solve
    from mpsearch.planning.problem import SearchSpace

    t0 = time.perf_counter()
    _, _, inv = load_profile(args.profile)
    pipe = load_pipeline(args.model)
    plans, meta = [], {}
    for b in BUDGETS:
        budget = f"{b:g}bits"
        ilp = solve(args.profile, budget)
        ilp.solver["name"] = f"ilp@{budget}"
        plans.append(ilp)
        meta[ilp.solver["name"]] = ("ilp", b)
        try:
            # weight-only, as every plan here (MixDQ mode would also allocate activations, at ~7.7 mean bits)
            mix = solve(args.profile, budget, solver="mixdq", space=SearchSpace(weight_only=True))
            mix.solver["name"] = f"mixdq@{budget}"
            plans.append(mix)
            meta[mix.solver["name"]] = ("mixdq", b)
            # MixDQ's band lets it exceed the target; the fair comparison is our ILP at its exact bytes
            same = solve(args.profile, f"{mix.predicted['bytes']}B")
            same.solver["name"] = f"ilp-at-mixdq-bytes@{budget}"
            plans.append(same)
            meta[same.solver["name"]] = ("ilp@mixdq-bytes", b)
        except ValueError as e:
            print(f"MixDQ at {budget}: {e}")
        if float(b).is_integer():
            uni = uniform_plan(inv, int(b), ilp)
            uni.solver["name"] = f"uniform@{budget}"
            plans.append(uni)
            meta[uni.solver["name"]] = ("uniform", b)
        if b < 8:
            rnd = random_plan(inv, ilp, seed=args.seed)
            rnd.solver["name"] = f"random@{budget}"
            plans.append(rnd)
            meta[rnd.solver["name"]] = ("random", b)
    ev = evaluate(plans, model=pipe, n_prompts=args.n_prompts, with_baselines=False, checkpoint=False,
                  log=lambda m: print(m, flush=True))
    rows = []
    for c in ev.candidates:
        method, b = meta.get(c.plan.solver.get("name"), ("fp", 16.0)) if c.plan else ("fp", 16.0)
        row = {"method": method, "budget_bits": b, "bytes": c.bytes, "mean_w_bits": round(c.mean_bits, 3)}
        for split, m in c.metrics.items():
            row[f"adherence_{split}"] = m.get("adherence")
            row[f"ssim_{split}"] = m.get("ssim")
        rows.append(row)
    elapsed = time.perf_counter() - t0

    fp = next(r for r in rows if r["method"] == "fp")
    w8 = next(r for r in rows if r["method"] == "uniform" and r["budget_bits"] == 8)
    ilp_rows = [r for r in rows if r["method"] == "ilp"]
    beats = []
    for r in ilp_rows:
        u = next((x for x in rows if x["method"] == "uniform" and x["budget_bits"] == r["budget_bits"]), None)
        if u is not None and r["budget_bits"] < 8:
            beats.append({"bits": r["budget_bits"], "ilp": r["adherence_calib"], "uniform": u["adherence_calib"],
                          "ilp_heldout": r["adherence_heldout"], "uniform_heldout": u["adherence_heldout"]})
    reach = [r for r in ilp_rows if r["adherence_calib"] >= w8["adherence_calib"] and
             r["adherence_heldout"] >= w8["adherence_heldout"]]
    smallest = min(reach, key=lambda r: r["bytes"]) if reach else None
    summary = {
        "ilp_beats_or_ties_uniform_below_8_bits": all(x["ilp"] >= x["uniform"] and x["ilp_heldout"] >= x["uniform_heldout"] for x in beats),
        "uniform_w8_bytes": w8["bytes"],
        "smallest_ilp_reaching_w8_adherence": smallest,
        "bytes_saved_vs_w8": None if smallest is None else 1 - smallest["bytes"] / w8["bytes"],
    }
    out = {"command": "OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/plan_quality.py "
                      + ("" if args.model == "demo" else f"--model {args.model} ") + f"--n-prompts {args.n_prompts}",
           "settings": ev.settings, "rows": rows, "comparison": beats, "summary": summary,
           "elapsed_s": round(elapsed, 1)}
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"plan_quality{sfx}.json").write_text(json.dumps(out, indent=1))

    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}"

    def f3(v):
        return "–" if v is None else f"{v:.3f}"

    lines = [f"# Plan quality on the demo model (`{args.model}`)\n", f"`{out['command']}` ({elapsed:.0f} s on 2 CPU cores, "
             f"OMP_WAIT_POLICY=PASSIVE; {ev.settings['steps']} steps, guidance {ev.settings['guidance']}, "
             f"{args.n_prompts} prompts per split, same seeds for every row)\n",
             "Adherence = all three attributes right (demo detector), in-domain / held-out combinations. "
             "SSIM against the FP images. Weight-only plans (activations 16-bit), `packed` format.\n",
             "| budget | method | bytes | mean bits | adherence in-domain | adherence held-out | SSIM in-domain | SSIM held-out |",
             "|---|---|---|---|---|---|---|---|"]
    order = {"fp": 0, "ilp": 1, "mixdq": 2, "ilp@mixdq-bytes": 3, "uniform": 4, "random": 5}
    for r in sorted(rows, key=lambda r: (r["budget_bits"], order[r["method"]])):
        label = "fp16" if r["method"] == "fp" else f"{r['budget_bits']:g} bits"
        lines.append(f"| {label} | {r['method']} | {r['bytes']:,} | {r['mean_w_bits']:.2f} | "
                     f"{pct(r['adherence_calib'])} | {pct(r['adherence_heldout'])} | {f3(r['ssim_calib'])} | "
                     f"{f3(r['ssim_heldout'])} |")
    lines.append("")
    lines.append(f"- ILP ≥ uniform at equal bits everywhere below 8 bits (adherence, both splits): "
                 f"**{summary['ilp_beats_or_ties_uniform_below_8_bits']}**")
    if smallest:
        lines.append(f"- Uniform W8 adherence ({pct(w8['adherence_calib'])} / {pct(w8['adherence_heldout'])}) is "
                     f"reached by the ILP plan at {smallest['budget_bits']:g} bits: {smallest['bytes']:,} bytes, "
                     f"**{100 * summary['bytes_saved_vs_w8']:.0f}% fewer bytes** than uniform W8 ({w8['bytes']:,}).")
    else:
        lines.append("- No ILP plan reached uniform W8's adherence on both splits.")
    lines.append(f"- FP reference: adherence {pct(fp['adherence_calib'])} / {pct(fp['adherence_heldout'])}.")
    lines.append("- `ilp@mixdq-bytes`: our ILP at exactly the MixDQ-mode plan's bytes (MixDQ's ±0.02-bit band is "
                 "not a ceiling), for an equal-bytes comparison of the two allocations.")
    lines += _goals(rows, fp)
    (res / f"plan_quality{sfx}.md").write_text("\n".join(lines) + "\n")
    plot(rows, ROOT / "docs" / "images" / f"plan_quality{sfx}.png")
    print("\n".join(lines))


def _goals(rows: list[dict], fp: dict) -> list[str]:
    """Issue #16's goals, checked: ILP ≥ uniform at every budget; FP adherence (within 2 points, both
    splits) at ≤ 4 mean bits; and where the ILP loses to another method at the same budget."""
    out = []
    ilp = {r["budget_bits"]: r for r in rows if r["method"] == "ilp"}
    for b, r in sorted(ilp.items()):
        for other in (x for x in rows if x["method"] in ("uniform", "mixdq", "random") and x["budget_bits"] == b):
            for split in ("calib", "heldout"):
                a, o = r[f"adherence_{split}"], other[f"adherence_{split}"]
                if a is not None and o is not None and a < o:
                    out.append(f"- ILP loses at {b:g} bits to {other['method']} on {split}: "
                               f"{100 * a:.1f} vs {100 * o:.1f}.")
    near = [r for r in ilp.values() if r["budget_bits"] <= 4 and all(
        r[f"adherence_{s}"] >= fp[f"adherence_{s}"] - 0.02 for s in ("calib", "heldout"))]
    lowest = min(near, key=lambda r: r["budget_bits"]) if near else None
    out.append("- FP adherence within 2 points on both splits at ≤ 4 mean bits: " + (
        f"**yes**, from {lowest['budget_bits']:g} bits" if lowest else "**no**"))
    if not any(line.startswith("- ILP loses") for line in out):
        out.append("- The ILP loses to no other method at any budget.")
    return out


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    style = {"ilp": "o-", "mixdq": "s--", "uniform": "^-", "random": "x:"}
    for ax, split in zip(axes, ("calib", "heldout"), strict=True):
        for method, st in style.items():
            pts = sorted((r["bytes"] / 1e6, r[f"adherence_{split}"]) for r in rows if r["method"] == method)
            if pts:
                ax.plot(*zip(*pts, strict=True), st, label=method)
        fp = next(r for r in rows if r["method"] == "fp")
        ax.axhline(fp[f"adherence_{split}"], color="grey", lw=0.8, label="fp")
        ax.set_title({"calib": "in-domain prompts", "heldout": "held-out combinations"}[split])
        ax.set_xlabel("denoiser bytes (MB)")
        ax.set_ylabel("full-prompt adherence")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
