"""MIP backends for the unit model: `Σ_k x[u,k] = 1`, `lo ≤ Σ A x ≤ hi`, minimise `Σ obj·x`.

Each backend registers with `@backend("name")` and returns a `MipResult`; `ilp.py` never branches on names.
cbc:   PuLP + COIN-OR CBC (bundled binary), rows scaled to O(1).
scip:  OR-Tools `pywraplp` with SCIP, as MixDQ uses.
cpsat: OR-Tools CP-SAT, which needs integers. Rows are scaled by 2^p when that makes every coefficient
       and bound integral (bytes, params·bits, MACs·w·a, any multiple of 1/2^20): exact. Otherwise they are
       scaled to about 2^40 and rounded conservatively (upper rows: coefficients up, bound down; lower rows
       the other way), so every CP-SAT solution is feasible in floats; it may miss solutions within about
       1e-12·n·max|coef| of a bound. The objective is rounded to integers at a scale of about 1e9 per
       largest coefficient; the rounding can misrank solutions that differ by less than n/(2S), which is
       added to the reported gap.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .registry import Registry

BACKENDS: Registry[Callable[..., MipResult]] = Registry("ILP backend")


@dataclass
class MipResult:
    choice: np.ndarray | None  # option per unit
    status: str                # optimal | feasible | infeasible | unknown
    bound: float               # proven lower bound on the objective (−inf if unknown)
    time_s: float
    note: str = ""


backend = BACKENDS.register  # decorator: @backend("name")


def get_backend(name: str) -> Callable[..., MipResult]:
    return BACKENDS.lookup(name)


def available_backends() -> list[str]:
    return BACKENDS.names()


def _row_scale(A: np.ndarray) -> np.ndarray:
    m = np.abs(A).max(axis=(1, 2), initial=0.0)
    return np.where(m > 0, 1.0 / np.where(m > 0, m, 1.0), 1.0)


def _obj_scale(obj: np.ndarray, valid: np.ndarray) -> float:
    m = float(np.abs(obj[valid]).max(initial=0.0))
    return 1e4 / m if m > 0 else 1.0


@backend("cbc")
def _cbc(obj, A, lo, hi, valid, *, hint=None, time_limit=None, gap=1e-9, threads=1) -> MipResult:
    import pulp

    t0 = time.perf_counter()
    U, K = obj.shape
    uu, kk = np.nonzero(valid)
    s_obj = _obj_scale(obj, valid)
    s_row = _row_scale(A)
    prob = pulp.LpProblem("mckp", pulp.LpMinimize)
    xs = [prob.add_variable(f"x{n}", cat=pulp.LpBinary) for n in range(len(uu))]
    prob += pulp.LpAffineExpression(zip(xs, (obj[uu, kk] * s_obj).tolist(), strict=True))
    starts = np.searchsorted(uu, np.arange(U + 1))
    for u in range(U):
        prob += pulp.LpConstraint(pulp.LpAffineExpression([(x, 1) for x in xs[starts[u]:starts[u + 1]]]),
                                  pulp.LpConstraintEQ, f"one{u}", 1)
    for c in range(A.shape[0]):
        coef = A[c, uu, kk] * s_row[c]
        nz = np.flatnonzero(coef)
        expr = pulp.LpAffineExpression([(xs[n], float(coef[n])) for n in nz])
        if np.isfinite(hi[c]):
            prob += pulp.LpConstraint(expr, pulp.LpConstraintLE, f"hi{c}", float(hi[c] * s_row[c]))
        if np.isfinite(lo[c]):
            prob += pulp.LpConstraint(expr, pulp.LpConstraintGE, f"lo{c}", float(lo[c] * s_row[c]))
    if hint is not None:
        for n, (u, k) in enumerate(zip(uu, kk, strict=True)):
            xs[n].setInitialValue(1 if hint[u] == k else 0)
    with warnings.catch_warnings():
        # PuLP 3.x warns that the bundled CBC moves to an extra in 4.0; it is what 3.x ships.
        warnings.simplefilter("ignore", DeprecationWarning)
        cmd = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, gapRel=gap, gapAbs=0.0, threads=threads,
                                warmStart=hint is not None)
    prob.solve(cmd)
    values = np.array([x.varValue if x.varValue is not None else 0.0 for x in xs])
    sol = prob.sol_status
    if prob.status == pulp.LpStatusInfeasible:
        return MipResult(None, "infeasible", np.inf, time.perf_counter() - t0)
    if sol not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return MipResult(None, "unknown", -np.inf, time.perf_counter() - t0)
    choice = np.zeros(U, np.int64)
    pick = values > 0.5
    choice[uu[pick]] = kk[pick]
    status = "optimal" if sol == pulp.LpSolutionOptimal else "feasible"
    # PuLP does not expose CBC's best bound; the caller falls back to its Lagrangian bound.
    return MipResult(choice, status, -np.inf, time.perf_counter() - t0)


@backend("scip")
def _scip(obj, A, lo, hi, valid, *, hint=None, time_limit=None, gap=1e-9, threads=1) -> MipResult:
    from ortools.linear_solver import pywraplp

    t0 = time.perf_counter()
    U, K = obj.shape
    solver = pywraplp.Solver.CreateSolver("SCIP")
    if solver is None:
        raise RuntimeError("OR-Tools was built without SCIP")
    uu, kk = np.nonzero(valid)
    s_obj = _obj_scale(obj, valid)
    s_row = _row_scale(A)
    xs = [solver.BoolVar(f"x{n}") for n in range(len(uu))]
    starts = np.searchsorted(uu, np.arange(U + 1))
    for u in range(U):
        row = solver.Constraint(1, 1)
        for x in xs[starts[u]:starts[u + 1]]:
            row.SetCoefficient(x, 1)
    inf = solver.infinity()
    for c in range(A.shape[0]):
        row = solver.Constraint(float(lo[c] * s_row[c]) if np.isfinite(lo[c]) else -inf,
                                float(hi[c] * s_row[c]) if np.isfinite(hi[c]) else inf)
        coef = A[c, uu, kk] * s_row[c]
        for n in np.flatnonzero(coef):
            row.SetCoefficient(xs[n], float(coef[n]))
    objective = solver.Objective()
    for x, v in zip(xs, (obj[uu, kk] * s_obj).tolist(), strict=True):
        objective.SetCoefficient(x, v)
    objective.SetMinimization()
    if hint is not None:
        solver.SetHint(xs, [1.0 if hint[u] == k else 0.0 for u, k in zip(uu, kk, strict=True)])
    if time_limit is not None:
        solver.SetTimeLimit(max(1, int(time_limit * 1000)))
    solver.SetNumThreads(threads)
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(params.RELATIVE_MIP_GAP, gap)
    st = solver.Solve(params)
    dt = time.perf_counter() - t0
    if st == pywraplp.Solver.INFEASIBLE:
        return MipResult(None, "infeasible", np.inf, dt)
    if st not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return MipResult(None, "unknown", -np.inf, dt)
    values = np.array([x.solution_value() for x in xs])
    choice = np.zeros(U, np.int64)
    pick = values > 0.5
    choice[uu[pick]] = kk[pick]
    return MipResult(choice, "optimal" if st == pywraplp.Solver.OPTIMAL else "feasible",
                     objective.BestBound() / s_obj, dt)


def _integer_row(a: np.ndarray, n: int) -> tuple[float, bool]:
    """Scale making `a` integral (exact=True) or, failing that, a conservative scale of about 2^40."""
    m = float(np.abs(a).max(initial=0.0))
    if m == 0:
        return 1.0, True
    for p in range(21):
        s = float(2 ** p)
        if m * s * n < 2 ** 60 and np.all(np.abs(a * s - np.round(a * s)) <= 1e-9 * max(1.0, m * s)):
            return s, True
    return min(2.0 ** 40, 2.0 ** 60 / (m * n)) / m, False


@backend("cpsat")
def _cpsat(obj, A, lo, hi, valid, *, hint=None, time_limit=None, gap=1e-9, threads=1) -> MipResult:
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    U, K = obj.shape
    uu, kk = np.nonzero(valid)
    n = max(len(uu), 1)
    model = cp_model.CpModel()
    xs = [model.NewBoolVar(f"x{i}") for i in range(len(uu))]
    starts = np.searchsorted(uu, np.arange(U + 1))
    for u in range(U):
        model.AddExactlyOne(xs[starts[u]:starts[u + 1]])
    for c in range(A.shape[0]):
        a = A[c, uu, kk]
        bounds = np.array([b for b in (lo[c], hi[c]) if np.isfinite(b)])
        s, exact = _integer_row(np.concatenate([a, bounds]), n)
        if np.isfinite(hi[c]):
            coef = np.round(a * s) if exact else np.ceil(a * s)
            rhs = np.round(hi[c] * s) if exact else np.floor(hi[c] * s)
            model.Add(cp_model.LinearExpr.WeightedSum(xs, coef.astype(np.int64).tolist()) <= int(rhs))
        if np.isfinite(lo[c]):
            coef = np.round(a * s) if exact else np.floor(a * s)
            rhs = np.round(lo[c] * s) if exact else np.ceil(lo[c] * s)
            model.Add(cp_model.LinearExpr.WeightedSum(xs, coef.astype(np.int64).tolist()) >= int(rhs))
    o = obj[uu, kk]
    m = float(np.abs(o).max(initial=0.0))
    S = min(1e9 / m, 2.0 ** 60 / (m * n)) if m > 0 else 1.0
    model.Minimize(cp_model.LinearExpr.WeightedSum(xs, np.round(o * S).astype(np.int64).tolist()))
    if hint is not None:
        for x, u, k in zip(xs, uu, kk, strict=True):
            model.AddHint(x, bool(hint[u] == k))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = threads
    solver.parameters.relative_gap_limit = gap
    if time_limit is not None:
        solver.parameters.max_time_in_seconds = float(time_limit)
    st = solver.Solve(model)
    dt = time.perf_counter() - t0
    if st == cp_model.INFEASIBLE:
        return MipResult(None, "infeasible", np.inf, dt)
    if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return MipResult(None, "unknown", -np.inf, dt)
    values = np.array([solver.BooleanValue(x) for x in xs])
    choice = np.zeros(U, np.int64)
    choice[uu[values]] = kk[values]
    rounding = 0.5 * U / S
    return MipResult(choice, "optimal" if st == cp_model.OPTIMAL else "feasible",
                     solver.BestObjectiveBound() / S - rounding, dt, note=f"objective rounding ≤ {rounding:.3g}")
