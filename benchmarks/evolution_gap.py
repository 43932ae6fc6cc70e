"""How far TMPQ-DM's evolution (`solvers.evolution`, default config) lands from the exact optimum, with and
without the pruning option.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/evolution_gap.py [--seeds 60] [--demo-seeds 3]

- Small problems: `tests/solvers/solver_strategies.pruning_problem` (6 layers, two prunable units,
  W{4,8,16} x A{8,16} + "pruned", budgets 5-60 % of the largest total on bytes or BitOPs), evolution vs
  brute force, one seed each: how often the exact optimum, the gaps when not.
- The demo profile (`profiles/demo`, weight-only, the byte budgets of benchmarks/pruning.py): the ILP's
  optimum vs the evolution's best (several seeds), with pruning and bits only.

Writes benchmarks/results/evolution_gap.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def small(n_seeds: int) -> dict:
    import numpy as np

    from solvers import solve_evolution
    from solvers.bruteforce import solve_bruteforce
    from tests.solvers.solver_strategies import pruning_problem

    out = {}
    for resource in ("bytes", "bitops"):
        gaps, prunes, t = [], 0, 0.0
        for seed in range(n_seeds):
            p = pruning_problem(seed, resource=resource)
            best = solve_bruteforce(p)
            if best.status == "infeasible":
                continue
            t0 = time.perf_counter()
            sol = solve_evolution(p, seed=seed)
            t += time.perf_counter() - t0
            gaps.append(sol.objective / best.objective - 1 if best.objective > 0 else sol.objective)
            prunes += any(k == "pruned" for k in best.keys)
        g = np.array(gaps)
        out[resource] = {"feasible": len(g), "exact": int((g < 1e-9).sum()), "max_gap": float(g.max()),
                         "misses": [round(float(x), 4) for x in g[g >= 1e-9]], "optimum_prunes": prunes,
                         "evolution_s_mean": round(t / len(g), 3)}
    return out


def demo(n_seeds: int) -> list[dict]:
    from mpsearch.planning.inputs import load_profile
    from mpsearch.planning.plan import Plan
    from mpsearch.planning.problem import SearchSpace, build_problem
    from solvers import solve_evolution
    from solvers.ilp import solve_ilp

    df, meta, inv = load_profile(ROOT / "profiles" / "demo")
    w2, w3 = Plan.uniform(inv, 2).predicted["bytes"], Plan.uniform(inv, 3).predicted["bytes"]
    budgets = {1.8: int(w2 * 0.9), 2.5: int(w2 + 0.5 * (w3 - w2)), 3.0: int(w3)}
    rows = []
    for equiv, budget in budgets.items():
        for prune in (True, False):
            sp = build_problem(inv, df, f"{budget}B", space=SearchSpace(weight_only=True, prune=prune),
                               units=meta["units"])
            ilp = solve_ilp(sp.problem)
            row = {"budget_bits_equiv": equiv, "budget_bytes": budget, "prune": prune,
                   "ilp": None if ilp.status == "infeasible" else ilp.objective}
            if ilp.status != "infeasible":
                sols = [solve_evolution(sp, seed=s) for s in range(n_seeds)]
                row["evolution"] = [s.objective for s in sols]
                row["evolution_pruned_units"] = [len(s.info["groups_taken"]) for s in sols]
                row["ratio_best"] = min(row["evolution"]) / ilp.objective
                row["ratio_worst"] = max(row["evolution"]) / ilp.objective
                pruned = [n for n, k in zip(inv.names, ilp.keys, strict=True) if k == "pruned"]
                row["ilp_pruned_units"] = sum(any(n.startswith(u + ".") for n in pruned) for u in meta["units"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown(r: dict) -> str:
    lines = ["# Evolution (TMPQ-DM) vs the exact optimum", "",
             f"Default config (population 50, 20 epochs). Total {r['seconds']:.0f} s.", "",
             "## Small problems with pruning, vs brute force", "",
             "| resource | feasible instances | exact optimum | gaps of the misses | optimum prunes | s / solve |",
             "|---|---:|---:|---|---:|---:|"]
    for res, v in r["small"].items():
        lines.append(f"| {res} | {v['feasible']} | {v['exact']} | "
                     f"{', '.join(f'{g:.1%}' for g in v['misses']) or '–'} | {v['optimum_prunes']} | "
                     f"{v['evolution_s_mean']} |")
    lines += ["", "## Demo profile (119 layers, weight-only), vs the ILP", "",
              "| budget (bits equiv.) | pruning option | ILP loss | evolution loss (seeds) | evolution / ILP "
              "| blocks pruned: ILP / evolution |",
              "|---:|---|---:|---|---|---|"]
    for row in r["demo"]:
        if row["ilp"] is None:
            lines.append(f"| {row['budget_bits_equiv']:g} | {'yes' if row['prune'] else 'no'} | infeasible | | | |")
            continue
        lines.append(f"| {row['budget_bits_equiv']:g} | {'yes' if row['prune'] else 'no'} | {row['ilp']:.4f} | "
                     f"{', '.join(f'{x:.4f}' for x in row['evolution'])} | "
                     f"{row['ratio_best']:.1f}-{row['ratio_worst']:.1f}x | {row['ilp_pruned_units']} / "
                     f"{', '.join(map(str, row['evolution_pruned_units']))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=60, help="small problems per resource")
    ap.add_argument("--demo-seeds", type=int, default=3, help="evolution seeds per demo budget")
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = {"schema": "mpsearch.bench.evolution_gap/1", "small": small(args.seeds), "demo": demo(args.demo_seeds)}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "evolution_gap.json").write_text(json.dumps(out, indent=1))
    (RESULTS / "evolution_gap.md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
