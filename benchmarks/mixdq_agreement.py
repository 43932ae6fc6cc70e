"""Agreement of our faithful MixDQ mode with MixDQ's published SDXL-turbo configurations.

Given a copy of MixDQ's repository (A-suozhang/MixDQ: its root, its `mixed_precision_scripts/` folder, or a
copy of that folder's `sensitivity_log/`, `optimize/` and `mixed_percision_config/`), this script

1. imports their sensitivity logs as an mpsearch profile (`mpsearch import-profile mixdq`; sizes from the
   bundled sdxl-turbo meta inventory, checked against their ratio configs);
2. runs our faithful weight sweep (`solvers.mixdq.mixdq_search`, activations off) at the target of each
   published final weight config (`weight_<T>.yaml`: T = 3.66, 4.00, 4.08, 5.02, 8.00) and reports, per
   target, the share of the 794 layers whose bits equal the published ones for the best-matching sweep cell
   and for the cell we pick without images (our fallback), plus the same for our improvements
   (noise-power objective, every width and fp16, ranges from the candidates) to show what they change;
3. runs our activation stage (`mixdq_act_search`) with the published weight_5.02 plan fixed (their
   W5A8 example pairs it with act_7.77) at each published act config's target (7.38, 7.77, 7.84, 8.00),
   with the same two agreements over 794 layers (a layer their act config omits is fp16) and whether our
   fp16-kept set is exactly the set their configs omit;
4. compares, cell by cell, their per-group ILP (maximise Σ metric value under the ±0.02 band, OR-Tools SCIP,
   as `optimize/integer_programming.py` states it, written here from that description) with ours (minimise
   C − dB / 1 − SSIM with `solvers.ilp`), at SCIP's default relative gap (1e-4, their setting) and at gap 0:
   identical plans, and the summed metric of each.

    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/mixdq_agreement.py --mixdq-repo /tmp/mixdq

Writes benchmarks/results/mixdq_agreement.{json,md}. Their files are read, never copied into this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mpsearch.planning.inputs import load_profile  # noqa: E402
from mpsearch.planning.problem import SearchSpace, build_problem  # noqa: E402
from mpsearch.profiling.importers import import_profile  # noqa: E402
from solvers.mixdq import ACT_GRID, BAND, GROUP_RANGES, WEIGHT_GRID, mixdq_act_search, mixdq_search  # noqa: E402

COMMAND = ("OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/mixdq_agreement.py "
           "--mixdq-repo /tmp/mixdq")
OUT = Path(__file__).parent / "results"
PAIRING = {"quality": "sqnr", "content": "ssim"}
THEIR_BITS = {("weight", "quality"): (4, 8), ("weight", "content"): (2, 4, 8), ("act", "quality"): (4, 8),
              ("act", "content"): (4, 8)}
ACT_WEIGHTS = "5.02"  # the weight config their W5A8 example runs with act_7.77


def scripts_root(repo: Path) -> Path:
    return repo / "mixed_precision_scripts" if (repo / "mixed_precision_scripts").is_dir() else repo


def published(root: Path, model: str, tensor: str) -> dict[str, dict[str, int]]:
    """target text → {layer: bits} of each published final config of `tensor`."""
    folder = root / "mixed_percision_config" / model / "final_config" / tensor  # sic: their folder name
    out = {}
    for path in sorted(folder.glob(f"{tensor}_*.yaml")):
        out[path.stem.split("_", 1)[1]] = {k.removeprefix("model."): int(v) for k, v in yaml.safe_load(path.read_text()).items()}
    if not out:
        raise SystemExit(f"no {tensor}_<T>.yaml under {folder}")
    return out


def bits_of(solution, index: int) -> np.ndarray:
    return np.array([k[index] for k in solution.keys], dtype=float)


def agreement(solution, want: np.ndarray, index: int) -> float:
    return float(np.mean(bits_of(solution, index) == want))


def cell_row(plan, want, index) -> dict:
    return {"B": round(plan.target, 4), "k": round(plan.k, 4), "agreement": round(agreement(plan.solution, want, index), 4)}


def weight_rows(pw, inv, configs: dict, improved: bool) -> list[dict]:
    params = np.array([la.params for la in inv.layers], float)
    is_q = np.array([la.group == "quality" for la in inv.layers])
    rows = []
    for text, config in configs.items():
        want = np.array([config[n] for n in inv.names], float)
        row = {"target": float(text), "published_mean_bits": round(float((want * params).sum() / params.sum()), 4),
               "published_quality_bits": round(float((want * params)[is_q].sum() / params[is_q].sum()), 4),
               "published_content_bits": round(float((want * params)[~is_q].sum() / params[~is_q].sum()), 4)}
        t0 = time.perf_counter()
        res = mixdq_search(pw, float(text), group_metric=PAIRING, act_target=None)
        row["time_s"] = round(time.perf_counter() - t0, 2)
        row.update(cells=len(res.plans), skipped=len(res.skipped))
        row["best_cell"] = cell_row(max(res.plans, key=lambda p: agreement(p.solution, want, 0)), want, 0)
        row["pick_noise"] = cell_row(next(p for p in res.plans if p.solution.keys == res.best.keys), want, 0)
        top = max(p.target for p in res.plans)  # fallback="loss": the lowest predicted loss at the top B
        loss = min((p for p in res.plans if p.target == top), key=lambda p: p.solution.objective)
        row["pick_loss"] = cell_row(loss, want, 0)
        if improved:
            ours = mixdq_search(pw, float(text), group_metric=PAIRING, act_target=None, objective="degradation",
                                candidates=None, group_ranges=None, fallback="loss")
            row["ours_best_cell"] = round(max(agreement(p.solution, want, 0) for p in ours.plans), 4)
            row["ours_pick_loss"] = round(agreement(ours.best, want, 0), 4)
        print(json.dumps(row), flush=True)
        rows.append(row | {"_result": res, "_want": want})
    return rows


def act_rows(pa, inv, weights: dict, configs: dict) -> list[dict]:
    choice = [pa.keys[i].index((weights[n], 16)) for i, n in enumerate(inv.names)]
    rows = []
    for text, config in configs.items():
        want = np.array([config.get(n, 16) for n in inv.names], float)
        t0 = time.perf_counter()
        res = mixdq_act_search(pa, choice, float(text), group_metric=PAIRING)
        row = {"target": float(text), "time_s": round(time.perf_counter() - t0, 2), "cells": len(res.plans),
               "skipped": len(res.skipped), "fp16": len(res.kept_fp16),
               "fp16_same_as_published": set(res.kept_fp16) == {n for n in inv.names if n not in config},
               "best_cell": cell_row(max(res.plans, key=lambda p: agreement(p.solution, want, 1)), want, 1),
               "pick_noise": cell_row(next(p for p in res.plans if p.solution.keys == res.best.keys), want, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row | {"_result": res, "_want": want})
    return rows


def their_group_ilp(values: dict[str, list[float]], sizes: dict[str, float], bits: tuple[int, ...], target: float,
                    gap: float | None) -> dict[str, int] | None:
    """MixDQ's per-group ILP as `optimize/integer_programming.py` states it: one boolean per (layer, bits),
    one choice per layer, Σ b·w within ±0.02 of target·Σ w, maximise Σ metric value (at 2/4/8 bits)."""
    from ortools.linear_solver import pywraplp

    solver = pywraplp.Solver.CreateSolver("SCIP")
    x = {(n, b): solver.BoolVar(f"c_{n}_{b}") for n in values for b in bits}
    for n in values:
        solver.Add(sum(x[n, b] for b in bits) == 1)
    total, w = sum(x[n, b] * b * sizes[n] for n in values for b in bits), sum(sizes[n] for n in values)
    solver.Add(total >= (target - BAND) * w)
    solver.Add(total <= (target + BAND) * w)
    objective = solver.Objective()
    for (n, b), var in x.items():
        objective.SetCoefficient(var, values[n][(2, 4, 8).index(b)])
    objective.SetMaximization()
    params = pywraplp.MPSolverParameters()
    if gap is not None:
        params.SetDoubleParam(params.RELATIVE_MIP_GAP, gap)
    if solver.Solve(params) not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return None
    return {n: max(b for b in bits if x[n, b].solution_value() > 0.5) for n in values}


def compare_ilps(df, inv, root: Path, model: str, w_rows: list[dict], a_rows: list[dict]) -> list[dict]:
    """Per sweep cell: their group ILPs (default gap and gap 0) against our plan of that cell."""
    ratios = {t: {k.removeprefix("model."): float(v) for k, v in yaml.safe_load(
        (root / "optimize" / "tensor_ratio" / model / f"{t}_ratio_config.yaml").read_text()).items()}
        for t in ("weight", "act")}  # fmt: skip
    values = {}
    for r in df.itertuples(index=False):
        values.setdefault((r.tensor, r.metric), {}).setdefault(r.layer, [0.0] * 3)[(2, 4, 8).index(r.bits)] = r.value
    group = {la.name: la.group for la in inv.layers}
    out = []
    for tensor, rows in (("weight", w_rows), ("act", a_rows)):
        for row in rows:
            res = row["_result"]
            excluded = set(res.kept_fp16)
            want = dict(zip(inv.names, row["_want"], strict=True))
            for gap in (None, 0.0):
                same = n = 0
                delta, published_agreement = [], []
                for plan in res.plans:
                    n += 1
                    ours = dict(zip(inv.names, bits_of(plan.solution, 0 if tensor == "weight" else 1), strict=True))
                    agree, equal = True, sum(want[m] == 16 for m in excluded)
                    for g, metric in PAIRING.items():
                        layers = [m for m in inv.names if group[m] == g and m not in excluded]
                        vals = {m: values[tensor, metric][m] for m in layers}
                        theirs = their_group_ilp(vals, {m: ratios[tensor][m] for m in layers},
                                                 THEIR_BITS[tensor, g], plan.group_targets[g], gap)  # fmt: skip
                        if theirs is None:
                            agree = False
                            continue
                        agree &= all(theirs[m] == ours[m] for m in layers)
                        equal += sum(theirs[m] == want[m] for m in layers)
                        sum_of = lambda plan_bits, vals=vals: sum(vals[m][(2, 4, 8).index(int(plan_bits[m]))] for m in vals)  # noqa: E731
                        delta.append(sum_of(ours) - sum_of(theirs))
                    same += agree
                    published_agreement.append(equal / len(inv))
                rec = {"tensor": tensor, "target": row["target"], "gap": "default (1e-4)" if gap is None else "0",
                       "cells": n, "identical": same, "ours_minus_theirs_min": round(min(delta), 6),
                       "ours_minus_theirs_max": round(max(delta), 6),
                       "their_best_cell_agreement": round(max(published_agreement), 4)}  # fmt: skip
                print(json.dumps(rec), flush=True)
                out.append(rec)
    return out


def markdown(w_rows, a_rows, ilp_rows, meta: dict) -> str:
    lines = ["# MixDQ agreement: our faithful MixDQ mode vs MixDQ's published SDXL-turbo configs", "",
             f"`{COMMAND}` ({meta['host']}; {meta['seconds']:.0f} s; import {meta['import_s']:.1f} s).", "",
             "Agreement = share of the 794 layers whose bits equal the published config's. *Best cell*: the sweep "
             "cell (B, k) that agrees most; *no-image pick*: the cell our fallback picks without images (lowest "
             "predicted output noise at B = T); MixDQ picks by the pixel MSE of one rendered image per cell.", "",
             "## Weights", "",
             "| target | published mean (quality / content) | cells | best cell (B, k) | no-image pick (B, k) | "
             "pick by lowest predicted loss | our improvements: best cell / pick |", "|---|---|---:|---|---|---|---|"]
    for r in w_rows:
        b, p = r["best_cell"], r["pick_noise"]
        ours = f"{r['ours_best_cell']:.1%} / {r['ours_pick_loss']:.1%}" if "ours_best_cell" in r else "–"
        lines.append(f"| {r['target']:.2f} | {r['published_mean_bits']:.3f} ({r['published_quality_bits']:.2f} / "
                     f"{r['published_content_bits']:.2f}) | {r['cells']} | **{b['agreement']:.1%}** ({b['B']:.3f}, "
                     f"{b['k']:.2f}) | {p['agreement']:.1%} ({p['B']:.3f}, {p['k']:.2f}) | "
                     f"{r['pick_loss']['agreement']:.1%} (k {r['pick_loss']['k']:.2f}) | {ours} |")
    lines += ["", f"## Activations (weights fixed at the published weight_{ACT_WEIGHTS})", "",
              "| target | cells | fp16 kept = published's | best cell (B, k) | no-image pick (B, k) |",
              "|---|---:|---|---|---|"]
    for r in a_rows:
        b, p = r["best_cell"], r["pick_noise"]
        lines.append(f"| {r['target']:.2f} | {r['cells']} | {'yes' if r['fp16_same_as_published'] else 'no'} "
                     f"({r['fp16']}) | **{b['agreement']:.1%}** ({b['B']:.3f}, {b['k']:.3f}) | {p['agreement']:.1%} "
                     f"({p['B']:.3f}, {p['k']:.3f}) |")
    if ilp_rows:
        lines += ["", "## Their per-cell ILP vs ours", "",
                  "Same cells, same group targets: their formulation (maximise Σ dB / Σ SSIM, OR-Tools SCIP) against "
                  "ours (minimise C − dB / 1 − SSIM, `solvers.ilp`, gap 1e-9). Σ metric difference = ours − theirs "
                  "in their objective's units (dB + SSIM summed over the groups of a cell).", "",
                  "| tensor | target | their gap | cells | identical plans | Σ metric ours − theirs (min … max) | "
                  "their best cell vs published |", "|---|---|---|---:|---:|---|---:|"]
        for r in ilp_rows:
            lines.append(f"| {r['tensor']} | {r['target']:.2f} | {r['gap']} | {r['cells']} | {r['identical']} | "
                         f"{r['ours_minus_theirs_min']:+.4g} … {r['ours_minus_theirs_max']:+.4g} | "
                         f"{r['their_best_cell_agreement']:.1%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixdq-repo", type=Path, required=True, help="MixDQ's repository (or mixed_precision_scripts/)")
    ap.add_argument("--no-compare-ilp", action="store_true", help="skip the per-cell comparison of the two ILPs")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    t0 = time.perf_counter()
    root = scripts_root(args.mixdq_repo)
    with tempfile.TemporaryDirectory() as tmp:
        prof = import_profile("mixdq", args.mixdq_repo, Path(tmp) / "profile")
        import_s = time.perf_counter() - t0
        df, meta, inv = load_profile(prof.path)
    model = meta["source"]["log_model"]
    pw = build_problem(inv, df, None, space=SearchSpace(weight_only=True)).problem
    pa = build_problem(inv, df, None).problem
    weights = published(root, model, "weight")
    w_rows = weight_rows(pw, inv, weights, improved=True)
    a_rows = act_rows(pa, inv, weights[ACT_WEIGHTS], published(root, model, "act"))
    ilp_rows = [] if args.no_compare_ilp else compare_ilps(df, inv, root, model, w_rows, a_rows)
    info = {"command": COMMAND, "host": f"{platform.machine()}, {os.cpu_count()} CPUs", "import_s": round(import_s, 2),
            "seconds": round(time.perf_counter() - t0, 1), "weight_grid": {"k": list(WEIGHT_GRID["k"]), "b_span": 0.3},
            "act_grid": {"k": list(ACT_GRID["k"]), "b_span": 0.3}, "band": BAND, "group_ranges": dict(GROUP_RANGES),
            "act_weights": f"weight_{ACT_WEIGHTS}"}  # fmt: skip
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]  # noqa: E731
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mixdq_agreement.json").write_text(json.dumps(
        {"info": info, "weights": strip(w_rows), "acts": strip(a_rows), "ilp": ilp_rows}, indent=1) + "\n")
    (args.out / "mixdq_agreement.md").write_text(markdown(w_rows, a_rows, ilp_rows, info))
    print(f"wrote {args.out / 'mixdq_agreement.md'} in {info['seconds']:.0f} s")


if __name__ == "__main__":
    main()
