"""Layer pruning on the demo model: quantization only vs pruning + quantization at equal bytes, before and
after distillation, the evolution solver against the ILP, and LAPTOP-Diff's additivity check.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/pruning.py [--n-prompts 24] [--distill-steps 150]

Profile: the shipped demo profile (`profiles/demo`: layer rows and unit scores, the latter from
`mpsearch profile --prune --tensors '' --out profiles/demo`). At each byte budget (the bytes of uniform
2.5 / 3-bit weights, and 90 % of uniform 2-bit, which only pruning can meet), weight-only plans:

- `quant`: the ILP without the pruning option;
- `joint`: the ILP with the pruning option (it prunes only where its additive loss model says so);
- `evolution`: TMPQ-DM's evolution with the pruning option (default config, seed 0);
- `prune-k`: the k units with the lowest single-unit score removed (LAPTOP-Diff's one-shot selection),
  the ILP choosing the other layers' bits in the bytes left.

Each plan is sampled (fake quantization + pruning, same seeds as FP) on in-domain and held-out prompts:
full-prompt adherence (demo detector) and SSIM against the FP images; then distilled (`mpsearch.recovery.distill`,
LAPTOP-Diff normalised feature KD, the plan's quantizers in the loop) and sampled again. Additivity: for
random sets of 2-4 units, the denoiser-output MSE of removing the set vs the sum of the single-unit MSEs,
on a full-precision reference sampled now with the profile's own prompts, seeds and sampler settings
(Pearson and Spearman correlation). Writes benchmarks/results/pruning.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def load_problem_inputs(path: Path):
    from mpsearch.planning.inputs import load_profile

    df, meta, inv = load_profile(path)
    if not (df.tensor == "unit").any():
        raise SystemExit(f"{path} has no unit scores: run mpsearch profile --prune --tensors '' --out {path}")
    return df, meta, inv


def plans_at(df, meta, inv, budget_bytes: int, ks=(1, 2, 3)) -> dict:
    from mpsearch.planning.budget import BudgetInfeasible
    from mpsearch.planning.planner import solve
    from mpsearch.planning.problem import SearchSpace, build_problem, solution_to_plan
    from solvers.ilp import solve_ilp

    budget = f"{budget_bytes}B"
    out = {}
    for name, solver, prune in (("quant", "ilp", False), ("joint", "ilp", True), ("evolution", "evolution", True)):
        try:
            out[name] = solve((df, inv, meta), budget, solver=solver, space=SearchSpace(weight_only=True, prune=prune))
        except BudgetInfeasible as e:
            out[name] = str(e)
    units = df[(df.tensor == "unit") & (df.metric == "mse")].groupby("layer")["degradation"].sum().sort_values()
    sp = build_problem(inv, df, budget, space=SearchSpace(weight_only=True, prune=True), units=meta["units"])
    for k in ks:
        forced = list(units.index[:k])
        fixed = {n: "pruned" for n in inv.names if any(n.startswith(u + ".") for u in forced)}
        sol = solve_ilp(sp.problem.replace(fixed=fixed))
        out[f"prune-{k}"] = (solution_to_plan(sol, inv, budget=budget, units=meta["units"])
                             if sol.status != "infeasible" else "infeasible")
    return out


def sample_metrics(pipe, plan, prompts, fp_images, seed, steps, guidance) -> tuple[dict, dict]:
    from mpsearch.evaluation.evaluator import _generate, image_metrics
    from mpsearch.export.simulate import fake_quantize

    images, metrics = {}, {}
    with fake_quantize(pipe, plan):
        for split, ps in prompts.items():
            images[split] = _generate(pipe, ps, seed, steps, guidance)
    for split, ps in prompts.items():
        m = image_metrics(fp_images[split], images[split], ps, ["adherence", "ssim"])
        metrics[split] = {"adherence": m.get("adherence"), "ssim": m.get("ssim")}
    return metrics, images


def additivity(pipe, ref, units, n_sets: int, seed: int) -> dict:
    import numpy as np
    import torch
    from scipy.stats import pearsonr, spearmanr

    from mpsearch.model import find_denoiser
    from mpsearch.profiling.pruning import pruned

    _, den = find_denoiser(pipe)
    rows = torch.arange(ref.n_rows)
    fp = ref.outputs.flatten(0, 1)

    def mse(names):
        with torch.no_grad(), pruned(pipe, names):
            return float((ref.forward(den, rows) - fp).pow(2).mean())

    single = {u: mse([u]) for u in units}
    rng = random.Random(seed)
    sets = []
    seen = set()
    while len(sets) < n_sets:
        s = tuple(sorted(rng.sample(units, rng.randint(2, min(4, len(units))))))
        if s not in seen:
            seen.add(s)
            sets.append({"units": list(s), "sum_single": sum(single[u] for u in s), "measured": mse(list(s))})
    a = np.array([s["sum_single"] for s in sets])
    b = np.array([s["measured"] for s in sets])
    return {"single_mse": single, "sets": sets, "pearson": float(pearsonr(a, b)[0]),
            "spearman": float(spearmanr(a, b)[0]), "mean_ratio_measured_over_sum": float(np.mean(b / a))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-prompts", type=int, default=24, help="prompts per split")
    ap.add_argument("--model", default="demo", help="demo | demo-dit (units: its joint blocks)")
    ap.add_argument("--profile", default=None, help="default: profiles/<model>")
    ap.add_argument("--distill-steps", type=int, default=150)
    ap.add_argument("--sets", type=int, default=40, help="random unit sets for the additivity check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", default="1.8,2.5,3", help="budgets as uniform-bit equivalents (bytes)")
    ap.add_argument("--prune-k", default="1,2", help="numbers of lowest-scoring units to force out")
    args = ap.parse_args()
    args.profile = args.profile or str(ROOT / "profiles" / args.model)

    import torch

    torch.set_flush_denormal(True)
    from mpsearch.evaluation.evaluator import _generate, default_prompts
    from mpsearch.model import load_pipeline
    from mpsearch.planning.plan import Plan
    from mpsearch.profiling import calibration as cal
    from mpsearch.recovery.distill import distill

    t0 = time.perf_counter()
    df, meta, inv = load_problem_inputs(Path(args.profile))
    pipe = load_pipeline(args.model)
    steps, guidance = cal.demo_settings(args.model)
    prompts = default_prompts(pipe, args.n_prompts)
    fp_images = {s: _generate(pipe, ps, args.seed, steps, guidance) for s, ps in prompts.items()}
    from mpsearch.evaluation.evaluator import image_metrics

    fp_adh = {s: image_metrics(fp_images[s], fp_images[s], ps, ["adherence"])["adherence"] for s, ps in prompts.items()}
    print(f"FP adherence {fp_adh}", flush=True)

    from mpsearch.model import find_denoiser, weights_fingerprint

    if weights_fingerprint(find_denoiser(pipe)[1]) != meta["fingerprint"]:
        raise SystemExit(f"{args.profile} was measured on other weights than the demo model's")
    sampling = meta["sampling"]
    ref = cal.reference(pipe, sampling["prompts"], seeds=sampling["seeds"], steps=sampling["steps"],
                        guidance=sampling["guidance"])
    add = additivity(pipe, ref, list(meta["units"]), args.sets, args.seed)
    print(f"additivity: pearson {add['pearson']:.3f} spearman {add['spearman']:.3f}", flush=True)

    def uniform_bytes(b: float) -> int:
        if b < 2:
            return int(Plan.uniform(inv, 2).predicted["bytes"] * b / 2)
        lo = int(b)
        blo, bhi = Plan.uniform(inv, lo).predicted["bytes"], Plan.uniform(inv, lo + 1).predicted["bytes"]
        return int(blo + (b - lo) * (bhi - blo))

    rows = []
    for b in [float(x) for x in args.budgets.split(",")]:
        budget = uniform_bytes(b)
        ks = tuple(int(k) for k in args.prune_k.split(",") if k)
        sampled = {}  # plan layers → method that sampled it first at this budget
        for method, plan in plans_at(df, meta, inv, budget, ks).items():
            row = {"budget_bits_equiv": b, "budget_bytes": budget, "method": method}
            if isinstance(plan, str):
                rows.append({**row, "status": "infeasible", "note": plan[:160]})
                print(f"{b} {method}: infeasible", flush=True)
                continue
            row.update(status="ok", bytes=plan.predicted["bytes"], mean_w_bits=plan.predicted["mean_w_bits"],
                       pruned_units=plan.pruned_units, predicted_loss=round(plan.predicted.get("loss", 0.0), 6))
            key = json.dumps(plan.to_dict()["layers"], sort_keys=True)
            same = sampled.get(key)
            if same is not None:
                row["note"] = f"same plan as {same}"
                row["same_as"] = same
                rows.append(row)
                print(f"{b} {method}: same as {same}", flush=True)
                continue
            sampled[key] = method
            row["before"], _ = sample_metrics(pipe, plan, prompts, fp_images, args.seed, steps, guidance)
            if args.distill_steps:
                student = load_pipeline(args.model)
                _, res = distill(plan, model=student, steps=args.distill_steps, seed=args.seed)
                row["after"], _ = sample_metrics(student, plan, prompts, fp_images, args.seed, steps, guidance)
                row["distill"] = {"seconds": res.seconds, "loss_first": round(res.loss_first, 5),
                                  "loss_last": round(res.loss_last, 5)}
                del student
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "pruned_units"}), flush=True)

    elapsed = time.perf_counter() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"schema": "mpsearch.bench.pruning/1", "model": args.model, "n_prompts": args.n_prompts, "seed": args.seed,
           "distill_steps": args.distill_steps, "fp_adherence": fp_adh, "additivity": add, "rows": rows,
           "units": meta["units"], "seconds": round(elapsed, 1),
           "torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    sfx = "" if args.model == "demo" else "_dit"
    (RESULTS / f"pruning{sfx}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"pruning{sfx}.md").write_text(markdown(out))
    print(f"done in {elapsed:.0f} s → {RESULTS / f'pruning{sfx}.md'}")


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown(r: dict) -> str:
    lines = [
        f"# Layer pruning + quantization on the demo model (`{r.get('model', 'demo')}`)",
        "",
        f"{r['n_prompts']} prompts per split (in-domain `calib`, held-out `heldout`), seed {r['seed']}, "
        f"weight-only plans, distillation {r['distill_steps']} steps. FP adherence: "
        + ", ".join(f"{k} {v:.3f}" for k, v in r["fp_adherence"].items())
        + f". Total {r['seconds']:.0f} s on CPU ({r['torch_threads']} threads).",
        "",
        "Budgets are bytes, written as the uniform weight width of the same size (1.8 = 90 % of uniform "
        "2-bit: only pruning reaches it). `quant` = ILP without pruning, `joint` = ILP with the pruning "
        "option, `evolution` = TMPQ-DM's evolution with the pruning option (default config), `prune-k` = the "
        "k lowest-scoring units removed (LAPTOP-Diff one-shot), ILP bits for the rest. Predicted loss: the "
        "solvers' objective (normalised profile degradation, lower is better; the ILP's is the optimum).",
        "",
        "| budget | method | bytes | mean w bits | pruned | predicted loss | adherence calib | adherence heldout "
        "| SSIM calib | SSIM heldout | after KD: adh. calib | adh. heldout | SSIM calib | SSIM heldout |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['budget_bits_equiv']:g} | {row['method']} | – | – | infeasible | | | | | | | | | |")
            continue
        pr = ", ".join(u.replace("_blocks.", "").replace("mid_block.", "mid.").replace("attentions.", "attn")
                       .replace("resnets.", "res")
                       for u in row["pruned_units"]) or "–"
        head = (f"| {row['budget_bits_equiv']:g} | {row['method']} | {row['bytes']:,} | {row['mean_w_bits']:.2f} | "
                f"{pr} | {row['predicted_loss']:.4f} | ")
        if "before" not in row:
            lines.append(head + f"(= {row.get('same_as', 'quant')}) | | | | | | | |")
            continue
        b, a = row["before"], row.get("after", {})
        cells = [_fmt(b.get(s, {}).get(m)) for m in ("adherence", "ssim") for s in ("calib", "heldout")]
        cells += [_fmt(a.get(s, {}).get(m)) for m in ("adherence", "ssim") for s in ("calib", "heldout")]
        lines.append(head + " | ".join(cells) + " |")
    add = r["additivity"]
    lines += [
        "",
        "## Additivity (LAPTOP-Diff)",
        "",
        f"{len(add['sets'])} random sets of 2-4 units: denoiser-output MSE of removing the set vs the sum of "
        f"the single-unit MSEs, on a reference sampled with the profile's prompts and settings: **Pearson {add['pearson']:.3f}, "
        f"Spearman {add['spearman']:.3f}**; measured / sum = {add['mean_ratio_measured_over_sum']:.2f} on average.",
        "",
        "| unit | single-unit output MSE |",
        "|---|---:|",
        *[f"| {u} | {v:.5f} |" for u, v in sorted(add["single_mse"].items(), key=lambda kv: kv[1])],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
