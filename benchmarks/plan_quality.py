"""Plan quality (#17 B): our default plan vs faithful MixDQ mode vs uniform vs random, budgets 2 to 8 mean bits.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/plan_quality.py [--n-prompts 48] [--rerank 10]
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/plan_quality.py --model demo-dit   # the SD3 DiT

Per mean-weight-bit budget, from the shipped profile (`profiles/<model>`), weight-only plans, `packed`:
- `default`: what `mpsearch solve --budget B --model M` gives: the ILP's plan re-ranked by sampling
  (`--rerank` distinct plans under the budget, each sampled on the profile's calibration prompts, best SSIM kept);
- `ilp`: the pure profile path (`solve` without a model: the ILP's optimum of the additive predicted loss);
- `mixdq`: faithful MixDQ mode with the model (its k sweep, candidates rendered, lowest pixel MSE kept),
  where it has a plan, and `default@mixdq-bytes`: our default at exactly its bytes (MixDQ's ±0.02-bit band
  is not a ceiling, so the equal-bytes comparison is ours at its bytes);
- `uniform` (whole widths) and `random` (equal bytes).
Every plan is sampled on fresh in-domain and held-out prompts with the same seeds: full-prompt adherence
(demo detector) and SSIM vs FP; beside it the plan's predicted loss (`mpsearch.planning.planner.predicted_loss`:
the ILP's additive objective, one scale for every plan), so the table shows where the additive model is off.
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
ORDER = ("fp", "default", "ilp", "mixdq", "default@mixdq-bytes", "uniform", "random")


def _timed_solve(profile: str, budget: str, **kw):
    from mpsearch.planning.planner import solve

    t0 = time.perf_counter()
    plan = solve(profile, budget, **kw)
    return plan, round(time.perf_counter() - t0, 1)


def plans_at(profile: str, b: float, pipe, inv, k: int, seed: int) -> tuple[list[tuple[str, object]], dict]:
    """[(method, plan)] at `b` mean bits, and what the budget's solves cost and recorded."""
    from mpsearch.evaluation.evaluator import random_plan, uniform_plan
    from mpsearch.planning.problem import SearchSpace

    budget = f"{b:g}bits"
    ilp, _ = _timed_solve(profile, budget)
    default, wall = _timed_solve(profile, budget, model=pipe, rerank=k)
    out = [("default", default), ("ilp", ilp)]
    info = {"default_solve_s": wall, "rerank": default.solver.get("rerank")}
    try:
        mix, info["mixdq_solve_s"] = _timed_solve(profile, budget, solver="mixdq", space=SearchSpace(weight_only=True),
                                                  model=pipe)  # fmt: skip
        info["mixdq_images_rendered"] = mix.solver.get("images_rendered")
        same, info["default_at_mixdq_bytes_solve_s"] = _timed_solve(profile, f"{mix.predicted['bytes']}B", model=pipe,
                                                                   rerank=k)  # fmt: skip
        out += [("mixdq", mix), ("default@mixdq-bytes", same)]
    except ValueError as e:  # faithful MixDQ: quality layers {4, 8} within [4, 8] bits cannot reach low budgets
        info["mixdq_no_plan"] = str(e).splitlines()[0]
        print(f"faithful MixDQ mode at {budget}: {info['mixdq_no_plan']}", flush=True)
    if float(b).is_integer():
        out.append(("uniform", uniform_plan(inv, int(b), ilp)))
    if b < 8:
        out.append(("random", random_plan(inv, ilp, seed=seed)))
    return out, info


def _bits_key(plan) -> tuple:
    return tuple(sorted((n, lb.w_bits, lb.a_bits) for n, lb in plan.layers.items()))


def evaluate_unique(tagged: list[tuple[str, float, object]], pipe, n_prompts: int):
    """Sample every distinct plan once (the default plan often is the ILP's optimum); one row per tag."""
    from mpsearch.evaluation.evaluator import evaluate

    unique: dict[tuple, object] = {}
    for _, _, plan in tagged:
        unique.setdefault(_bits_key(plan), plan)
    ev = evaluate(list(unique.values()), model=pipe, n_prompts=n_prompts, with_baselines=False, checkpoint=False,
                  log=lambda m: print(m, flush=True))  # fmt: skip
    by_key = {_bits_key(c.plan): c for c in ev.candidates if c.plan is not None}
    fp = next(c for c in ev.candidates if c.plan is None)
    return ev, fp, [(method, b, plan, by_key[_bits_key(plan)]) for method, b, plan in tagged]


def _row(method: str, b: float, c, predicted: float | None) -> dict:
    row = {"method": method, "budget_bits": b, "bytes": c.bytes, "mean_w_bits": round(c.mean_bits, 3),
           "predicted_loss": predicted}
    for split, m in c.metrics.items():
        row[f"adherence_{split}"] = m.get("adherence")
        row[f"ssim_{split}"] = m.get("ssim")
    ssims = [m["ssim"] for m in c.metrics.values() if m.get("ssim") is not None]
    row["measured_loss"] = 1 - sum(ssims) / len(ssims) if ssims else None  # 1 − SSIM vs FP, both splits
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-prompts", type=int, default=48, help="prompts per split")
    ap.add_argument("--model", default="demo", help="demo | demo-dit")
    ap.add_argument("--profile", default=None, help="default: profiles/<model>")
    ap.add_argument("--rerank", type=int, default=10, help="distinct plans the default path samples (solve --rerank)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", default=",".join(f"{b:g}" for b in BUDGETS), help="mean weight bits, comma-separated")
    args = ap.parse_args()
    args.profile = args.profile or str(ROOT / "profiles" / args.model)
    sfx = "" if args.model == "demo" else "_dit"

    import torch

    torch.set_flush_denormal(True)
    from mpsearch.model import load_pipeline
    from mpsearch.planning.inputs import load_profile
    from mpsearch.planning.planner import predicted_loss

    t0 = time.perf_counter()
    _, _, inv = load_profile(args.profile)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    tagged, solves = [], {}
    for b in (float(x) for x in args.budgets.split(",")):
        ps, solves[f"{b:g}"] = plans_at(args.profile, b, pipe, inv, args.rerank, args.seed)
        tagged += [(m, b, p) for m, p in ps]
        print(f"{b:g} bits: planned ({', '.join(m for m, _ in ps)})", flush=True)
    ev, fp, done = evaluate_unique(tagged, pipe, args.n_prompts)
    rows = [_row("fp", 16.0, fp, None)]
    rows += [_row(m, b, c, predicted_loss(args.profile, plan)["loss"]) for m, b, plan, c in done]
    elapsed = time.perf_counter() - t0
    cmd = ("OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/plan_quality.py "
           + ("" if args.model == "demo" else f"--model {args.model} ") + f"--n-prompts {args.n_prompts}"
           + ("" if args.rerank == 10 else f" --rerank {args.rerank}")
           + ("" if args.budgets == ",".join(f"{b:g}" for b in BUDGETS) else f" --budgets {args.budgets}"))
    out = {"command": cmd, "model": args.model, "settings": ev.settings, "rows": rows, "solves": solves,
           "goals": goals(rows), "elapsed_s": round(elapsed, 1)}
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"plan_quality{sfx}.json").write_text(json.dumps(out, indent=1))
    lines = report(out, args)
    (res / f"plan_quality{sfx}.md").write_text("\n".join(lines) + "\n")
    plot(rows, ROOT / "docs" / "images" / f"plan_quality{sfx}.png")
    print("\n".join(lines))


def _not_below(a: dict, o: dict) -> bool:
    return all(a[f"adherence_{s}"] >= o[f"adherence_{s}"] for s in ("calib", "heldout"))


def goals(rows: list[dict]) -> dict:
    """#17 B's goals: default ≥ uniform (whole widths) and ≥ faithful MixDQ mode at equal bytes (where it has a
    plan) on adherence, both splits, at every budget; ≥ 85% adherence at 2.5 bits on both splits."""
    at = {(r["method"], r["budget_bits"]): r for r in rows}
    vs_uniform, vs_mixdq = {}, {}
    for b in sorted({r["budget_bits"] for r in rows if r["method"] != "fp"}):
        if ("uniform", b) in at:
            vs_uniform[f"{b:g}"] = _not_below(at["default", b], at["uniform", b])
        if ("mixdq", b) in at:
            vs_mixdq[f"{b:g}"] = _not_below(at["default@mixdq-bytes", b], at["mixdq", b])
    d25 = at.get(("default", 2.5))
    low = None if d25 is None else [d25["adherence_calib"], d25["adherence_heldout"]]
    return {"default_ge_uniform": vs_uniform, "default_ge_mixdq_at_equal_bytes": vs_mixdq,
            "default_2.5_bits_adherence": low,
            "met": all(vs_uniform.values()) and all(vs_mixdq.values()) and low is not None and min(low) >= 0.85}


def _pct(v):
    return "–" if v is None else f"{100 * v:.1f}"


def _f(v, spec=".3f"):
    return "–" if v is None else format(v, spec)


def report(out: dict, args) -> list[str]:
    rows, g = out["rows"], out["goals"]
    lines = [f"# Plan quality on the demo model (`{out['model']}`)\n",
             f"`{out['command']}` ({out['elapsed_s']:.0f} s on 2 shared CPU cores, OMP_WAIT_POLICY=PASSIVE; "
             f"{out['settings']['steps']} steps, guidance {out['settings']['guidance']}, {args.n_prompts} prompts per "
             "split, same seeds for every row)\n",
             "Weight-only plans, `packed` format. Adherence = all three attributes right (demo detector), in-domain / "
             "held-out combinations; SSIM vs the FP images. Predicted loss: the ILP's additive objective for every "
             "plan (one scale); measured loss: 1 − SSIM (mean of both splits). `default` = `solve --model` (re-ranked by "
             "sampling), `ilp` = `solve` from the profile alone, `mixdq` = faithful MixDQ mode (pick by images), "
             "`default@mixdq-bytes` = ours at MixDQ's exact bytes.\n",
             "| budget | method | bytes | mean bits | predicted loss | measured loss | adherence in-domain | "
             "adherence held-out | SSIM in-domain | SSIM held-out |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["budget_bits"], ORDER.index(r["method"]))):
        label = "fp16" if r["method"] == "fp" else f"{r['budget_bits']:g} bits"
        lines.append(f"| {label} | {r['method']} | {r['bytes']:,} | {r['mean_w_bits']:.2f} | "
                     f"{_f(r['predicted_loss'], '.4f')} | {_f(r['measured_loss'], '.4f')} | {_pct(r['adherence_calib'])} | "
                     f"{_pct(r['adherence_heldout'])} | {_f(r['ssim_calib'])} | {_f(r['ssim_heldout'])} |")
    lines += ["", "## What the default path cost, and what the additive model got wrong\n",
              "| budget | re-ranked plans | renders (images) | sampling s | whole solve s | kept | predicted best | "
              "MixDQ mode |", "|---|---|---|---|---|---|---|---|"]
    for b, s in out["solves"].items():
        rr = s.get("rerank") or {}
        c = rr.get("cost", {})
        mix = (f"{s['mixdq_images_rendered']} images, {s['mixdq_solve_s']} s" if "mixdq_solve_s" in s
               else f"no plan ({s.get('mixdq_no_plan', '?')})")
        lines.append(f"| {b} | {len(rr.get('candidates', []))} | {c.get('renders', '–')} ({c.get('images', '–')}) | "
                     f"{c.get('seconds', '–')} | {s['default_solve_s']} | #{rr.get('chosen', '–')} "
                     f"({rr.get('chosen_how', '–')}) | #{rr.get('predicted_best', '–')} | {mix} |")
    lines += ["", "## Goals (#17 B)\n",
              "- default ≥ uniform on adherence, both splits: " + ", ".join(
                  f"{b} bits {'yes' if ok else '**no**'}" for b, ok in g["default_ge_uniform"].items()),
              "- default ≥ faithful MixDQ mode at its bytes, both splits: " + (", ".join(
                  f"{b} bits {'yes' if ok else '**no**'}" for b, ok in g["default_ge_mixdq_at_equal_bytes"].items())
                  or "MixDQ mode has no plan at any budget"),
              "- default at 2.5 bits: " + (" / ".join(_pct(v) for v in g["default_2.5_bits_adherence"])
                                           if g["default_2.5_bits_adherence"] else "not measured") + " (goal ≥ 85 on both)",
              f"- all met: **{g['met']}**"]
    return lines


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    style = {"default": "o-", "ilp": ".:", "mixdq": "s--", "uniform": "^-", "random": "x:"}
    fp = next(r for r in rows if r["method"] == "fp")
    for ax, split in zip(axes, ("calib", "heldout"), strict=True):
        for method, st in style.items():
            pts = sorted((r["bytes"] / 1e6, r[f"adherence_{split}"]) for r in rows if r["method"] == method)
            if pts:
                ax.plot(*zip(*pts, strict=True), st, label=method)
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
