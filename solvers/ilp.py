"""Exact allocation: the multiple-choice knapsack as an integer program.

One binary x[i, k] per item option, `Σ_k x[i, k] = 1` per item, every `Constraint` as a linear row, ties
as shared variables (tied items are merged into one unit), fixed items pinned. Before the MIP the model is
shrunk exactly (see `lagrange.py`): dominated options are dropped and options whose Lagrangian reduced cost
exceeds the gap between a feasible incumbent and the Lagrangian bound are fixed to 0; the MIP only sees the
remaining core. `core=False` hands the whole model to the backend instead.

The result is checked against the float constraints of the `Problem`; if a backend's tolerance let a row
slip, the row is tightened by the excess and the model re-solved (recorded in `info["repairs"]`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .backends import MipResult, get_backend
from .lagrange import Bound, lp_bound, single_budget_bound
from .problem import Problem, Solution
from .registry import register_solver
from .units import UnitModel, build_units

__all__ = ["solve_ilp", "smallest_feasible"]


def _bound(m: UnitModel) -> Bound | None:
    if len(m.names) == 0:
        ch = m.obj.argmin(axis=1)
        rc = m.obj - m.obj.min(axis=1, keepdims=True)
        return Bound(m.objective(ch), rc, ch, m.objective(ch), np.zeros(0))
    if len(m.names) == 1 and not np.isfinite(m.lo[0]) and (m.A[0][m.valid] >= 0).all():
        return single_budget_bound(m)
    return lp_bound(m)


def _solve_core(m: UnitModel, bound: Bound, delta: float, backend: str, hint, **opts) -> tuple[MipResult, np.ndarray]:
    """Solve the MIP restricted to options with rc ≤ delta; returns the result on all units."""
    tol = 1e-9 * (abs(bound.lower) + 1.0)
    keep = m.valid & (bound.rc <= delta + tol)
    n_keep = keep.sum(axis=1)
    free = np.flatnonzero(n_keep > 1)
    fixed_choice = keep.argmax(axis=1)
    rows = np.arange(m.n_units)
    fixed_units = n_keep == 1
    used = m.A[:, rows[fixed_units], fixed_choice[fixed_units]].sum(axis=1)
    if len(free) == 0:
        ok = m.feasible(fixed_choice)
        return MipResult(fixed_choice if ok else None, "optimal" if ok else "infeasible",
                         m.objective(fixed_choice) if ok else np.inf, 0.0), keep
    sub_hint = None if hint is None else hint[free]
    if sub_hint is not None and not keep[free, sub_hint].all():
        sub_hint = None
    # Shift each unit's objective to start at 0: the backends then see the differences that matter,
    # not a large constant that would drown them in the solver's tolerances.
    sub_obj = np.where(keep[free], m.obj[free], np.inf)
    shift = sub_obj.min(axis=1)
    res = get_backend(backend)(sub_obj - shift[:, None], m.A[:, free], m.lo - used, m.hi - used, keep[free],
                               hint=sub_hint, **opts)
    if res.choice is not None:
        full = fixed_choice.copy()
        full[free] = res.choice
        const = m.obj[rows[fixed_units], fixed_choice[fixed_units]].sum() + shift.sum()
        res = replace(res, choice=full, bound=res.bound + const)
    return res, keep


def solve_units(m: UnitModel, *, backend: str = "cbc", time_limit: float | None = None, gap: float = 1e-9,
                threads: int = 1, core: bool = True, hint: np.ndarray | None = None) -> tuple[MipResult, dict]:
    """Optimal unit choice for a unit model. Returns the backend result (status over the whole model) and
    info (core size, bound, rounds)."""
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if (m.min_cost() > m.hi + 1e-9 * np.maximum(1, np.abs(m.hi))).any():
        return MipResult(None, "infeasible", np.inf, time.perf_counter() - t0), info
    bound = _bound(m) if core else None
    if bound is None:
        shift = m.obj.min(axis=1)
        res = get_backend(backend)(m.obj - shift[:, None], m.A, m.lo, m.hi, m.valid, hint=hint,
                                   time_limit=time_limit, gap=gap, threads=threads)
        res = replace(res, bound=res.bound + shift.sum())
        info["core_units"] = m.n_units
        return replace(res, time_s=time.perf_counter() - t0), info
    if not np.isfinite(bound.lower):
        return MipResult(None, "infeasible", np.inf, time.perf_counter() - t0), info
    if hint is None:
        hint = bound.incumbent
    spread = float(np.nanmax(np.where(m.valid, bound.rc, np.nan)))
    # Start with a quarter of the incumbent's gap: the true optimum usually sits well below the incumbent,
    # and a smaller core solves faster; if the core's optimum is not provably global, widen to it.
    delta = ((bound.upper - bound.lower) / 4 if np.isfinite(bound.upper)
             else 1e-3 * (abs(bound.lower) + 1e-12))
    rounds = 0
    while True:
        rounds += 1
        remaining = None if time_limit is None else max(0.01, time_limit - (time.perf_counter() - t0))
        res, keep = _solve_core(m, bound, max(delta, 0.0), backend, hint, time_limit=remaining, gap=gap,
                                threads=threads)
        covers_all = delta >= spread
        if res.choice is None:
            if res.status == "infeasible" and not covers_all:
                delta = spread if delta >= spread / 16 else max(4 * delta, spread / 256)
                continue
            break
        z = m.objective(res.choice)
        if z <= bound.lower + delta + 1e-9 * (abs(bound.lower) + 1.0) or covers_all or res.status != "optimal":
            # Nothing outside the core can beat z: it costs at least L + rc > L + delta ≥ z.
            break
        if z < bound.upper:
            bound.upper, hint = z, res.choice
        delta = bound.upper - bound.lower
    info.update(core_units=int((keep.sum(axis=1) > 1).sum()), core_rounds=rounds,
                lagrangian_bound=bound.lower)
    best_bound = max(res.bound, bound.lower)
    return replace(res, bound=best_bound, time_s=time.perf_counter() - t0), info


def smallest_feasible(problem: Problem, constraint: str, **opts: Any) -> float | None:
    """Least total of `constraint`'s resource over its items (with its offset) that satisfies every other
    constraint, tie and fixed choice; None if even those cannot be met."""
    c = [k.name for k in problem.constraints].index(problem.constraint(constraint).name)
    con = problem.constraints[c]
    m2 = build_units(problem.with_constraints([k for j, k in enumerate(problem.constraints) if j != c]),
                     objective=_item_costs(problem, con), prune=True)
    res, _ = solve_units(m2, **opts)
    if res.choice is None:
        return None
    return problem.constraint_total(con, m2.decode(res.choice))


def _item_costs(problem: Problem, con) -> np.ndarray:
    cost = np.nan_to_num(problem.costs[con.resource], nan=0.0).copy()
    if con.items is not None:
        mask = np.zeros(problem.n_items, bool)
        mask[list(con.items)] = True
        cost[~mask] = 0.0
    return cost


def _diagnose(problem: Problem, t0: float, backend: str, **opts: Any) -> Solution:
    """Infeasible: find the one budget whose relaxation restores feasibility and its smallest value."""
    for con in problem.constraints:
        if con.upper is None:
            continue
        least = smallest_feasible(problem, con.name, backend=backend, **opts)
        if least is not None and least > con.upper:
            return Solution.infeasible(
                binding=con.name, smallest_feasible=least, time_s=time.perf_counter() - t0, backend=backend,
                info={"binding_upper": con.upper, "binding_resource": con.resource})
    return Solution.infeasible(binding=None, smallest_feasible=None, time_s=time.perf_counter() - t0,
                               backend=backend)


@dataclass(frozen=True)
class IlpOptions:
    """The options of `solve_ilp` (see there): backend, time limit (s), relative gap, threads, ..."""

    backend: str = "cbc"
    time_limit: float | None = None
    gap: float = 1e-9
    threads: int = 1
    core: bool = True
    prune: bool = True
    hint: np.ndarray | None = None
    diagnose: bool = True


@register_solver("ilp", options=IlpOptions, rerank=True)
def solve_ilp(problem: Problem, *, backend: str = "cbc", time_limit: float | None = None, gap: float = 1e-9,
              threads: int = 1, core: bool = True, prune: bool = True, hint: np.ndarray | None = None,
              diagnose: bool = True) -> Solution:
    """Minimise the problem's objective exactly.

    backend: "cbc" (PuLP + CBC), "scip" (OR-Tools SCIP), "cpsat" (OR-Tools CP-SAT), see `backends.py`.
    time_limit (s): on expiry the best solution is returned as "feasible" with its gap.
    gap: relative optimality gap at which a solve counts as optimal.
    hint: an option index per item to start from (used when it respects ties and fixed items).
    Infeasible → status "infeasible" with `smallest_feasible` (unless diagnose=False).
    """
    t0 = time.perf_counter()
    m = build_units(problem, prune=prune)
    unit_hint = None if hint is None else m.encode(np.asarray(hint))
    opts = dict(backend=backend, time_limit=time_limit, gap=gap, threads=threads, core=core)
    res, info = solve_units(m, hint=unit_hint, **opts)
    repairs = 0
    while res.choice is not None:
        choice = m.decode(res.choice)
        broken = problem.violations(choice)
        if not broken or repairs >= 3:
            break
        repairs += 1  # a backend tolerance let a row slip: tighten it by the excess and solve again
        idx = [m.names.index(n) for n in broken if n in m.names]
        hi, lo = m.hi.copy(), m.lo.copy()
        for c in idx:
            excess = broken[m.names[c]]
            if np.isfinite(hi[c]) and problem.constraint_total(problem.constraints[c], choice) > problem.constraints[c].upper:
                hi[c] -= excess
            else:
                lo[c] += excess
        m = replace(m, hi=hi, lo=lo)
        res, info = solve_units(m, **opts)
    if res.choice is None:
        if res.status == "infeasible" and diagnose:
            return _diagnose(problem, t0, backend, time_limit=time_limit, gap=gap, threads=threads, core=core)
        if res.status == "infeasible":
            return Solution.infeasible(binding=None, smallest_feasible=None,
                                       time_s=time.perf_counter() - t0, backend=backend)
        raise TimeoutError(f"{backend} found no solution within {time_limit} s")
    choice = m.decode(res.choice)
    if problem.violations(choice):
        raise RuntimeError(f"{backend} returned a choice breaking {sorted(problem.violations(choice))}")
    z = m.objective(res.choice)
    gap_now = max(0.0, z - res.bound) / max(abs(z), 1e-12)
    status = "optimal" if res.status == "optimal" or gap_now <= gap else "feasible"
    info.update(repairs=repairs, bound=res.bound, units=m.n_units, options=int(m.valid.sum()), note=res.note)
    return problem.evaluate(choice, status=status, gap=gap_now if status == "feasible" else min(gap_now, gap),
                            time_s=time.perf_counter() - t0, backend=backend, info=info)
