"""Timestep search on the demo model: keep 4 of its 8 steps and spend the saved BitOPs on bits.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/timestep_search.py [--n-prompts 64]
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/timestep_search.py --model demo-dit   # the SD3 DiT

For BitOPs budgets given per image (X% of W16A16 over the demo's 8-step schedule), compare at the same
budget: all 8 steps at the best uniform bits and at ILP-mixed bits; the evenly spaced 4 steps
(999, 749, 499, 249: DDIM's own 4-step schedule) at uniform and ILP bits; and the evolution's searched
4 steps + bits (TMPQ-DM, `mpsearch.planning.steps`; every kept-step set it meets is sampled once with the
ILP's bits), without and with re-ranking its finalists by the real fitness (SSIM against the FP 8-step
images of 32 other in-domain captions, sampled through the shared QuantSession). Every plan is
simulated with the exporter's fake quantization, sampled at its kept timesteps with the same seeds, and
scored with the demo detector (full-prompt adherence) on in-domain captions and held-out combinations,
and by SSIM against the FP 8-step images. Writes benchmarks/results/timestep_search.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = ("6.25%bitops", "9.375%bitops", "12.5%bitops")
KEEP = 4


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-prompts", type=int, default=64, help="evaluation prompts per split")
    ap.add_argument("--fitness-prompts", type=int, default=32, help="in-domain captions the fitness samples")
    ap.add_argument("--model", default="demo", help="demo | demo-dit (flow matching: fractional timesteps)")
    ap.add_argument("--profile", default=None, help="default: profiles/<model>")
    ap.add_argument("--budgets", nargs="*", default=list(BUDGETS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.profile = args.profile or str(ROOT / "profiles" / args.model)

    import numpy as np
    import torch

    torch.set_flush_denormal(True)
    from mpsearch.export.simulate import fake_quantize
    from mpsearch.model import load_pipeline
    from mpsearch.pipelines.generate import generate
    from mpsearch.planning.budget import Budget
    from mpsearch.planning.inputs import load_profile
    from mpsearch.planning.plan import Plan
    from mpsearch.planning.planner import solve
    from mpsearch.profiling.calibration import reference
    from mpsearch.profiling.metrics import images_to_tensor, ssim
    from mpsearch.zoo.detector import adherence
    from mpsearch.zoo.scenes import sample_prompts

    t0 = time.perf_counter()
    _, meta, inv = load_profile(args.profile)
    s = meta["sampling"]
    pool, guidance = list(s["timesteps"]), float(s["guidance"])
    even = pool[:: len(pool) // KEEP]
    pipe = load_pipeline(args.model)
    calib = reference(pipe, s["prompts"], seeds=s["seeds"], steps=s["steps"], guidance=guidance)
    prompts = {"in-domain": sample_prompts("train", args.n_prompts, 1),
               "held-out": sample_prompts("heldout", args.n_prompts, 1)}
    fitness_prompts = sample_prompts("train", args.fitness_prompts, 100)
    img_seed = 1000  # evaluation noise differs from the fitness's (seed 0)

    def sample(plan: Plan | None, timesteps: list[int]) -> dict[str, torch.Tensor]:
        out = {}
        ctx = fake_quantize(pipe, plan, inv=inv, calib=calib) if plan is not None else None
        try:
            for split, ps in prompts.items():
                out[split] = images_to_tensor(generate(pipe, ps, seed=img_seed, guidance=guidance, timesteps=timesteps,
                                                       pool=pool))  # fmt: skip
        finally:
            if ctx is not None:
                ctx.restore()
        return out

    fp_images = sample(None, pool)

    def score(images: dict[str, torch.Tensor]) -> dict[str, float]:
        row = {}
        for split, ims in images.items():
            arrays = [(im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for im in ims]
            row[f"adherence {split}"] = adherence(arrays, prompts[split])[0]
            row[f"ssim {split}"] = ssim(fp_images[split], ims[None])[0][0]  # one slot: (value, degradation)
        return row

    fp8 = Budget.parse("100%bitops").resolve(inv) * len(pool)
    rows = [{"budget": "-", "steps": len(pool), "timesteps": pool, "method": "fp", "bitops_image": fp8,
             "guidance": guidance, **score(fp_images)},
            {"budget": "-", "steps": KEEP, "timesteps": even, "method": "fp", "bitops_image": fp8 * KEEP / len(pool),
             **score(sample(None, even))}]  # fmt: skip
    print(rows[0], rows[1], flush=True)

    w_cands = [*meta["candidates"]["weight"], 16]
    a_cands = sorted({*meta["candidates"]["act"], 16})
    for text in args.budgets:
        budget = Budget.parse(text)
        ceiling = budget.per_image(inv, len(pool))
        candidates: list[tuple[str, int, Plan, float]] = []
        for n_steps, kept in ((len(pool), pool), (KEEP, even)):
            per_call = ceiling / n_steps
            best = max((w * a for w in w_cands for a in a_cands if inv.total_macs * w * a <= per_call), default=None)
            for w, a in [(w, a) for w in w_cands for a in a_cands if w * a == best]:
                plan = Plan.uniform(inv, w, a, kept_timesteps=None if n_steps == len(pool) else kept)
                candidates.append((f"uniform W{w}A{a}", n_steps, plan, 0.0))
        t = time.perf_counter()
        ilp8 = solve(args.profile, budget)
        candidates.append(("ilp", len(pool), ilp8, time.perf_counter() - t))
        t = time.perf_counter()
        candidates.append(("ilp, even steps", KEEP, solve(args.profile, budget, steps=KEEP, solver="ilp"),
                           time.perf_counter() - t))  # fmt: skip
        for label, rerank in (("evolution, no re-rank", 0), ("evolution + real fitness", 10)):
            t = time.perf_counter()
            plan = solve(args.profile, budget, steps=KEEP, solver="evolution", model=pipe, rerank=rerank,
                         fitness_prompts=fitness_prompts, seed=args.seed)  # fmt: skip
            candidates.append((label, KEEP, plan, time.perf_counter() - t))
        for label, n_steps, plan, search_s in candidates:
            kept = plan.kept_timesteps or pool
            bitops = plan.predicted["bitops"] * len(kept)
            assert bitops <= ceiling * (1 + 1e-9), (label, bitops, ceiling)
            a_mean = sum(l.macs * plan.layers[l.name].a_bits for l in inv.layers) / inv.total_macs
            row = {"budget": text, "steps": n_steps, "timesteps": kept, "method": label, "bitops_image": bitops,
                   "mean_w_bits": plan.predicted["mean_w_bits"], "mac_mean_a_bits": round(a_mean, 3),
                   "bytes": plan.predicted["bytes"], "search_s": round(search_s, 1), **score(sample(plan, kept))}
            fit = plan.solver.get("fitness")
            if fit:
                row["fitness_adherence"] = fit["value"]
            rows.append(row)
            print({k: v for k, v in row.items() if k != "timesteps"}, kept, flush=True)
    searched = {tuple(r["timesteps"]) for r in rows if r["method"].startswith("evolution")} - {tuple(even)}
    for kept in sorted(searched, reverse=True):  # how much of a plan's quality is its schedule alone
        rows.insert(2, {"budget": "-", "steps": KEEP, "timesteps": list(kept), "method": "fp, searched steps",
                        "bitops_image": fp8 * KEEP / len(pool), **score(sample(None, list(kept)))})
    elapsed = time.perf_counter() - t0
    write(rows, args, elapsed, fp8)


def write(rows: list[dict], args, elapsed: float, fp8: float) -> None:
    cmd = "OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/timestep_search.py"
    if args.model != "demo":
        cmd += f" --model {args.model}"
    if args.n_prompts != 64:
        cmd += f" --n-prompts {args.n_prompts}"
    sfx = "" if args.model == "demo" else "_dit"
    sampler = "DDIM trailing" if args.model == "demo" else "flow-matching Euler"
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    out = {"command": cmd, "elapsed_s": round(elapsed, 1), "n_prompts": args.n_prompts,
           "fitness_prompts": args.fitness_prompts, "rows": rows}  # fmt: skip
    (res / f"timestep_search{sfx}.json").write_text(json.dumps(out, indent=1))

    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}"

    lines = [
        f"# Timestep search on the demo model (`{args.model}`)\n",
        f"`{cmd}` ({elapsed:.0f} s on 2 CPU cores, OMP_WAIT_POLICY=PASSIVE; guidance {rows[0].get('guidance', '?')}, "
        f"{sampler}, "
        f"{args.n_prompts} prompts per split, the same seeds for every row)\n",
        "Budgets are BitOPs of one image as a % of W16A16 over the demo's full 8-step schedule; a plan keeping "
        "4 steps gets twice the BitOPs per denoiser call. Adherence = shape, colour and position all right "
        "(demo detector), on in-domain captions and held-out combinations; SSIM against the FP 8-step images. "
        f"The evolution's fitness (SSIM vs FP 8-step images) samples {args.fitness_prompts} other in-domain "
        "captions with other seeds; `no re-rank`: steps scored by sampling, finalists not re-ranked. "
        "`uniform`: every uniform WxAy with the largest w·a under the budget (ties all listed).\n",
        "| budget | steps | kept timesteps | method | BitOPs/image | mean W bits | mean A bits (MAC-weighted) | "
        "adherence in-domain | adherence held-out | SSIM held-out | search s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['budget']} | {r['steps']} | {', '.join(f'{t:g}' for t in r['timesteps'])} | {r['method']} | "
            f"{100 * r['bitops_image'] / fp8:.2f}% | {r.get('mean_w_bits', 16):.2f} | {r.get('mac_mean_a_bits', 16):.2f} | "
            f"{pct(r['adherence in-domain'])} | {pct(r['adherence held-out'])} | {r['ssim held-out']:.3f} | "
            f"{r.get('search_s', '–')} |")
    lines.append("")
    for b in dict.fromkeys(r["budget"] for r in rows if r["budget"] != "-"):
        got = {r["method"]: r for r in rows if r["budget"] == b}
        evo, ilp8, even = got["evolution + real fitness"], got["ilp"], got["ilp, even steps"]
        lines.append(
            f"- {b}: searched 4 steps + bits {pct(evo['adherence held-out'])}% held-out adherence, SSIM "
            f"{evo['ssim held-out']:.3f} (kept {evo['timesteps']}), vs all 8 steps with ILP bits "
            f"{pct(ilp8['adherence held-out'])}%, {ilp8['ssim held-out']:.3f}, and the evenly spaced 4 steps with "
            f"ILP bits {pct(even['adherence held-out'])}%, {even['ssim held-out']:.3f}; half the denoiser calls.")
    (res / f"timestep_search{sfx}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
