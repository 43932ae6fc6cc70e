"""The loss–budget front: optimal objective as one constraint's budget sweeps a range.

Budgets are visited from the largest down. The optimum at a budget b stays optimal for every smaller
budget that it still fits (the feasible set only shrank), so those budgets cost nothing; each remaining
budget is one exact ILP (which itself only solves the Lagrangian core, see `ilp.py`) started from the
previous optimum. Points that another point beats in both total and loss are removed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .ilp import smallest_feasible, solve_ilp
from .problem import Constraint, Problem, Solution

__all__ = ["ParetoFront", "pareto_front"]


@dataclass(frozen=True, eq=False)
class ParetoFront:
    constraint: str
    resource: str
    budgets: np.ndarray          # the budgets visited (ascending), in units of the resource
    at_budget: tuple[Solution, ...]  # the optimum at each budget (infeasible ones included)
    points: tuple[Solution, ...]     # non-dominated optima, total ascending, objective descending
    time_s: float
    solves: int                  # ILPs actually run (the rest reused a previous optimum)

    @property
    def totals(self) -> np.ndarray:
        return np.array([s.constraint_totals[self.constraint] for s in self.points])

    @property
    def objectives(self) -> np.ndarray:
        return np.array([s.objective for s in self.points])


def _with_upper(problem: Problem, name: str, upper: float | None) -> Problem:
    cons = []
    for c in problem.constraints:
        if c.name == name:
            if upper is None and c.lower is None:
                continue
            c = Constraint(c.resource, upper, c.lower, c.items, c.offset, c.name)
        cons.append(c)
    return problem.with_constraints(cons)


def pareto_front(problem: Problem, constraint: str | None = None, n_points: int = 50,
                 budgets: np.ndarray | None = None, *, backend: str = "cpsat", **ilp_options) -> ParetoFront:
    """Trace the front of (constraint total, objective).

    constraint: name (or resource) of the swept constraint; default the problem's first upper-bounded one.
    budgets: explicit budgets; default `n_points` evenly from the smallest feasible total to the total of
    the best unconstrained plan (beyond which the loss cannot fall).
    backend: ILP backend for each point (CP-SAT by default: fastest on repeated small cores).
    """
    t0 = time.perf_counter()
    if constraint is None:
        uppers = [c for c in problem.constraints if c.upper is not None]
        if not uppers:
            raise ValueError("the problem has no upper-bounded constraint to sweep")
        con = uppers[0]
    else:
        con = problem.constraint(constraint)
    opts = dict(backend=backend) | ilp_options
    free = _with_upper(problem, con.name, None)
    solves = 0
    if budgets is None:
        top = solve_ilp(free, **opts).raise_if_infeasible()
        lo = smallest_feasible(problem, con.name, **opts)
        solves += 2
        if lo is None:
            raise ValueError("the other constraints cannot be met at any budget")
        hi = top.constraint_totals[con.name] if con.name in top.constraint_totals else \
            free.constraint_total(con, top.choice)
        budgets = np.linspace(lo, max(hi, lo), n_points)
    budgets = np.sort(np.asarray(budgets, dtype=float))
    results: list[Solution] = [None] * len(budgets)  # type: ignore[list-item]
    prev: Solution | None = None
    for j in range(len(budgets) - 1, -1, -1):
        b = budgets[j]
        if prev is not None and prev.feasible and prev.constraint_totals[con.name] <= b:
            results[j] = prev
            continue
        sol = solve_ilp(_with_upper(problem, con.name, float(b)),
                        hint=None if prev is None or not prev.feasible else prev.choice, **opts)
        solves += 1
        results[j] = sol
        prev = sol
    feasible = sorted({id(s): s for s in results if s.feasible}.values(),
                      key=lambda s: (s.constraint_totals[con.name], s.objective))
    points, best = [], np.inf
    for s in feasible:
        if not points or s.objective < best - 1e-12 * max(1.0, abs(best)):
            points.append(s)
            best = s.objective
    return ParetoFront(con.name, con.resource, budgets, tuple(results), tuple(points),
                       time.perf_counter() - t0, solves)
