"""Solver scaling on SDXL-shaped problems: time to proven optimum per ILP backend, MixDQ's own formulation
on OR-Tools SCIP, and a 50-point Pareto front. Sizes are the 794 real SDXL UNet layers (from
`mpsearch.model.inventory("sdxl-base")`, meta device, no weights) plus 10k / 50k synthetic layers;
sensitivities are synthetic (seeded, heavy-tailed across layers, falling 4× per extra bit).

End to end: `mpsearch.solve(folder, "4bits")` on a synthetic profile folder of the 794 layers of the
bundled sdxl-turbo meta inventory, written by the profiler's own `Store` (read, checked, problem built,
ILP solved, plan made), with the time split into loading, problem building and the ILP.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/solver_scaling.py

Writes benchmarks/results/solver_scaling.{json,md}.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from solvers import Constraint, Problem, mixdq_search, pareto_front, solve_ilp  # noqa: E402

COMMAND = "OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/solver_scaling.py"
OUT = Path(__file__).parent / "results"


def sdxl_layers() -> list[tuple[int, int, str]]:
    from mpsearch.model import inventory

    return [(la.params, la.macs, la.group) for la in inventory("sdxl-base").layers]


def synthetic_layers(n: int, seed: int) -> list[tuple[int, int, str]]:
    rng = np.random.default_rng(seed)
    params = np.exp(rng.normal(13, 1.5, n)).astype(np.int64) + 100
    return [(int(p), int(p) * 64, "content" if rng.random() < 0.4 else "quality") for p in params]


def make_problem(layers, bits, *, mean_bits=4.5, seed=0) -> Problem:
    """Bytes budget at `mean_bits` average weight bits (+ a fixed 10 MB of unquantized bytes)."""
    rng = np.random.default_rng(seed)
    params = np.array([p for p, _, _ in layers], float)
    groups = [g for _, _, g in layers]
    b = np.array(bits, float)
    sens = rng.lognormal(0, 2, len(params))[:, None] * params[:, None] ** 0.3
    sqnr = sens * 4.0 ** -b[None]
    ssim = sens * 0.5 * 3.0 ** -b[None]
    is_c = np.array([g == "content" for g in groups])[:, None]
    return Problem(keys=[list(bits)] * len(params),
                   costs={"bytes": params[:, None] * b[None] / 8, "wbits": params[:, None] * b[None]},
                   losses={"sqnr": np.where(is_c, 0.0, sqnr), "ssim": np.where(is_c, ssim, 0.0)},
                   groups=groups,
                   constraints=[Constraint("bytes", upper=float(params.sum() * mean_bits / 8) + 1e7,
                                           offset=1e7)])


def synthetic_profile(root: Path, w_bits, a_bits=(), n_groups: int = 1, seed: int = 0) -> Path:
    """A profile folder as `mpsearch profile` leaves it (meta.json, inventory.json, measurements.jsonl)
    for sdxl-turbo's 794 layers: quality layers measured on sqnr and mse, content layers on ssim (MixDQ's
    pairing), degradations seeded and heavy-tailed across layers, 4× less per extra bit."""
    from mpsearch.model import inventory
    from mpsearch.profiling.store import SCHEMA, Store

    inv = inventory("sdxl-turbo")
    rng = np.random.default_rng(seed)
    metrics = {"sqnr": "quality", "mse": "quality", "ssim": "content"}
    tensors = ["weight", "act"] if a_bits else ["weight"]
    meta = {"schema": SCHEMA, "model": inv.model, "component": inv.component, "fingerprint": "synthetic",
            "inventory_fingerprint": inv.fingerprint, "layers": inv.names,
            "groups": {la.name: la.group for la in inv.layers},
            "candidates": {"weight": list(w_bits), "act": list(a_bits)}, "tensors": tensors,
            "metrics": {m: {"kind": k, "stage": "output", "version": "1"} for m, k in metrics.items()},
            "mode": "exact", "all_metrics": False, "step_groups": [[g] for g in range(n_groups)],
            "sampling": {}, "quant": {}, "shard": None, "baseline": {}}
    rows = []
    for la in inv.layers:
        s = rng.lognormal(0, 2)
        for tensor, bits in (("weight", w_bits), ("act", a_bits)):
            for b in bits:
                for m in (m for m, k in metrics.items() if k == la.group):
                    for g in range(n_groups):
                        d = float(s * 4.0 ** -b * (1 + g))
                        rows.append({"layer": la.name, "tensor": tensor, "bits": b, "metric": m, "step_group": g,
                                     "value": d, "degradation": d})
    with Store(root, meta) as store:
        store.append(rows)
    inv.save(root / "inventory.json")
    return root


def end_to_end(rows: list[dict]) -> None:
    """`mpsearch.solve` from a profile folder, best of 5, with its parts timed alone."""
    from mpsearch.planning.inputs import load_profile
    from mpsearch.planning.planner import solve
    from mpsearch.planning.problem import build_problem

    cases = [((2, 3, 4, 5, 6, 8), (), 1), ((2, 3, 4, 5, 6, 8), (4, 6, 8), 4)]
    for w_bits, a_bits, n_groups in cases:
        with tempfile.TemporaryDirectory() as tmp:
            folder = synthetic_profile(Path(tmp) / "p", w_bits, a_bits, n_groups)
            solve(folder, "4bits")  # imports and first-call costs out of the timings
            t, plan = timed(lambda folder=folder: solve(folder, "4bits"), repeats=5)
            t_load, (df, meta, inv) = timed(lambda folder=folder: load_profile(folder), repeats=5)
            t_build, sp = timed(lambda df=df, inv=inv: build_problem(inv, df, "4bits"), repeats=5)
        options = (len(w_bits) + 1) * (len(a_bits) + 1)
        rows.append(dict(case="sdxl-turbo profile folder", layers=len(inv), options=options, rows=len(df),
                         step_groups=n_groups, method="mpsearch.solve end to end", backend="cbc", core=True,
                         status=plan.solver["status"], time_s=round(t, 4), load_s=round(t_load, 4),
                         build_s=round(t_build, 4), ilp_s=plan.solver["time_s"]))
        print(rows[-1], flush=True)


def timed(fn, repeats=3):
    best, out = np.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    rows: list[dict] = []
    results = {"command": COMMAND, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                         "cpu_count": os.cpu_count(), "python": platform.python_version(), "rows": rows}
    try:
        sdxl = sdxl_layers()
        source = "sdxl-base inventory (794 real layer sizes)"
    except Exception as e:  # the inventory module is optional for this benchmark
        sdxl = synthetic_layers(794, 0)
        source = f"synthetic 794 layers (inventory unavailable: {e})"
    results["sdxl_source"] = source
    warm = make_problem(sdxl[:50], (2, 4, 8))
    for be in ("cbc", "scip", "cpsat"):
        solve_ilp(warm, backend=be)  # imports and first-call costs out of the timings
    cases = [("sdxl", sdxl, (2, 4, 8)), ("sdxl", sdxl, (2, 3, 4, 5, 6, 8)),
             ("synthetic-10k", synthetic_layers(10_000, 1), (2, 3, 4, 5, 6, 8)),
             ("synthetic-50k", synthetic_layers(50_000, 2), (2, 3, 4, 5, 6, 8))]
    for name, layers, bits in cases:
        p = make_problem(layers, bits)
        ref = None
        for be in ("cbc", "scip", "cpsat"):
            for core in (True, False) if len(layers) <= 794 else (True,):
                t, s = timed(lambda be=be, core=core, p=p: solve_ilp(p, backend=be, core=core, time_limit=120),
                             repeats=3 if core else 1)
                ref = s.objective if ref is None else ref
                rows.append(dict(case=name, layers=len(layers), options=len(bits), method="ilp", backend=be,
                                 core=core, status=s.status, time_s=round(t, 4), objective=s.objective,
                                 matches_first=bool(abs(s.objective - ref) <= 1e-7 * max(1, abs(ref))),
                                 core_units=s.info.get("core_units")))
                print(rows[-1], flush=True)
        if len(layers) == 794 and bits == (2, 4, 8):
            # MixDQ's formulation: per-group ILP on the raw metric, ±0.02 mean-bit band, plain SCIP.
            for core in (False, True):
                t, res = timed(lambda core=core, p=p: mixdq_search(p, 4.0, k_grid=[0.6], b_points=1, core=core),
                               repeats=1)
                rows.append(dict(case=name, layers=794, options=3, method="mixdq one (B,k) pair: 2 group ILPs",
                                 backend="scip", core=core, status=res.best.status, time_s=round(t, 4)))
                print(rows[-1], flush=True)
            t, res = timed(lambda p=p: mixdq_search(p, 4.0), repeats=1)
            rows.append(dict(case=name, layers=794, options=3, method="mixdq full 10x10 sweep",
                             backend="scip", core=True, status=f"{len(res.plans)} plans", time_s=round(t, 4)))
            print(rows[-1], flush=True)
        if len(layers) == 794 and len(bits) == 6:
            for be in ("cpsat", "cbc"):
                t, front = timed(lambda be=be, p=p: pareto_front(p, n_points=50, backend=be), repeats=1)
                rows.append(dict(case=name, layers=794, options=6, method="pareto 50 points", backend=be,
                                 core=True, status=f"{len(front.points)} points, {front.solves} ILPs",
                                 time_s=round(t, 4)))
                print(rows[-1], flush=True)
    end_to_end(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "solver_scaling.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    lines = [f"`{COMMAND}`", "",
             f"CPU timings, OMP_WAIT_POLICY={results['omp_wait_policy']}, {results['cpu_count']} cores shared "
             "with other jobs; best of 3 for core solves, 1 run otherwise; one thread per solver.",
             f"Layer sizes: {source}. Budget: bytes at 4.5 mean bits + 10 MB fixed.", "",
             "| case | layers | options | method | backend | core | status | time (s) | core units |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "load_s" not in r:
            lines.append(f"| {r['case']} | {r['layers']} | {r['options']} | {r['method']} | {r['backend']} | "
                         f"{r['core']} | {r['status']} | {r['time_s']} | {r.get('core_units', '')} |")
    lines += ["", "End to end, `mpsearch.solve(folder, \"4bits\")` (best of 5; load and build timed alone, best of 5; ILP: the plan's own solver time, last run):", "",
              "| profile | layers | options | rows | step groups | status | total (s) | load (s) | build (s) | ILP (s) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "load_s" in r:
            lines.append(f"| {r['case']} | {r['layers']} | {r['options']} | {r['rows']} | {r['step_groups']} | "
                         f"{r['status']} | {r['time_s']} | {r['load_s']} | {r['build_s']} | {r['ilp_s']} |")
    (OUT / "solver_scaling.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
