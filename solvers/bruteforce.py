"""Exhaustive search, the reference the tests hold every other solver to. Tiny problems only."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

from .problem import Problem, Solution
from .registry import register_solver


@dataclass(frozen=True)
class BruteforceOptions:
    max_combinations: int = 200_000


@register_solver("bruteforce", options=BruteforceOptions)
def solve_bruteforce(problem: Problem, *, max_combinations: int = 200_000) -> Solution:
    """Try every choice; optimal by construction. Ties and ties-in-objective break to the first found
    (lexicographic option order). Infeasible → smallest_feasible of the first upper constraint whose
    relaxation alone restores feasibility, found the same exhaustive way."""
    t0 = time.perf_counter()
    n = int(np.prod(problem.n_options.astype(float)))
    if n > max_combinations:
        raise ValueError(f"{n} combinations is too many for brute force (max {max_combinations})")
    grid = np.array(list(itertools.product(*(range(k) for k in problem.n_options))), dtype=np.int64)
    rows = np.arange(problem.n_items)[None, :]
    obj = problem.objective_matrix[rows, grid].sum(axis=1)
    ok = np.ones(len(grid), bool)
    totals = {}
    for c in problem.constraints:
        cost = np.nan_to_num(problem.costs[c.resource], nan=0.0)[rows, grid]
        if c.items is not None:
            cost = cost[:, list(c.items)]
        t = c.offset + cost.sum(axis=1)
        totals[c.name] = t
        if c.upper is not None:
            ok &= t <= c.upper + 1e-9 * max(1.0, abs(c.upper))
        if c.lower is not None:
            ok &= t >= c.lower - 1e-9 * max(1.0, abs(c.lower))
    structural = np.ones(len(grid), bool)
    for g in problem.ties:
        first = [problem.keys[g[0]][k] for k in grid[:, g[0]]]
        for i in g[1:]:
            structural &= np.array([problem.keys[i][k] == f for k, f in zip(grid[:, i], first, strict=True)])
    for i, key in problem.fixed.items():
        structural &= grid[:, i] == problem.option_index(i, key)
    ok &= structural
    if ok.any():
        best = int(np.flatnonzero(ok)[np.argmin(obj[ok])])
        return problem.evaluate(grid[best], status="optimal", gap=0.0, time_s=time.perf_counter() - t0,
                                backend="bruteforce")
    for c in problem.constraints:
        if c.upper is None:
            continue
        others = structural.copy()
        for d in problem.constraints:
            if d is c:
                continue
            t = totals[d.name]
            if d.upper is not None:
                others &= t <= d.upper + 1e-9 * max(1.0, abs(d.upper))
            if d.lower is not None:
                others &= t >= d.lower - 1e-9 * max(1.0, abs(d.lower))
        if c.lower is not None:
            others &= totals[c.name] >= c.lower - 1e-9 * max(1.0, abs(c.lower))
        if others.any() and totals[c.name][others].min() > c.upper:
            return Solution.infeasible(binding=c.name, smallest_feasible=float(totals[c.name][others].min()),
                                       time_s=time.perf_counter() - t0, backend="bruteforce",
                                       info={"binding_upper": c.upper, "binding_resource": c.resource})
    return Solution.infeasible(binding=None, smallest_feasible=None, time_s=time.perf_counter() - t0,
                               backend="bruteforce")
