"""K distinct plans under one budget, for a planner to measure and keep the best (re-ranking).

The exact ILP is optimal for the additive model: the sum of one-layer-at-a-time losses. When most layers
sit at 2–3 bits that sum stops predicting the real damage (errors compound), so the predicted optimum is
not the measured one. MixDQ and TMPQ-DM answer by rendering several candidate plans and keeping the best
measured; this module gives a planner those candidates, all under the same constraints (the budget stays
a hard ceiling), without torch:

1. the ILP's optimum (`how="ilp"`);
2. the ILP re-solved with one metric's weight multiplied by each of `WEIGHT_FACTORS` (`"weights sqnr×4"`):
   plans that trade content metrics against quality metrics differently, i.e. other points the additive
   model cannot tell apart well (milder factors first). On the demo at 2.5 bits these are the plans that
   measure best: the ILP's optimum reaches 69% adherence, several weight variants 100%;
3. only when those give fewer than `k` distinct plans: the ILP with no-good cuts, each excluding every plan found so far and its
   neighbours: a new plan must differ from each of them in at least `min_distance` items
   (`Σ_i [choice_i == previous_i] ≤ L - min_distance`, one linear row per previous plan). These are
   slower (seconds each on the demo's 119 layers) and, with a flat optimum, often near-copies of it.

Every candidate is a `Solution` of the original problem (its objective is the predicted loss under the
original weights), in order of discovery; duplicates are dropped. No candidate takes a dominated option:
one that another option of the same item beats on every metric's loss and no worse on every constrained
cost (`dominated_options`; e.g. quantizing a layer's activations under a weight-bits budget: same cost,
more loss). Otherwise the no-good cuts fill the list with the optimum plus a few such free degradations,
plans that differ without being other trade-offs.

>>> plans = distinct_plans(problem, 6)                          # doctest: +SKIP
>>> [(c.how, round(c.solution.objective, 4)) for c in plans]    # doctest: +SKIP
[('ilp', 0.0123), ('weights sqnr×4', 0.0131), ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .ilp import solve_ilp
from .problem import Constraint, Problem, Solution

__all__ = ["Candidate", "WEIGHT_FACTORS", "distinct_plans"]

WEIGHT_FACTORS = (4.0, 0.25, 16.0, 0.0625)  # one metric's weight times these, the others kept
MIN_DISTANCE = 0.05  # a no-good cut's least difference from each previous plan: this fraction of items


@dataclass(frozen=True)
class Candidate:
    """One candidate plan: its solution on the original problem and how it was found."""

    how: str
    solution: Solution


def _weight_variants(problem: Problem) -> list[tuple[str, dict[str, float]]]:
    """(label, weights) with one metric's weight scaled by each factor; metrics at weight 0 are left out."""
    out = []
    for m, w in sorted(problem.weights.items()):
        if w <= 0 or len(problem.weights) < 2:
            continue
        out.extend((f"weights {m}×{f:g}", {**problem.weights, m: w * f}) for f in WEIGHT_FACTORS)
    return sorted(out, key=lambda v: abs(np.log(float(v[0].rsplit("×", 1)[1]))))  # mild changes first


def dominated_options(problem: Problem) -> np.ndarray:
    """(L, K) mask of options strictly dominated within their item: another option has no more loss on any
    metric (weight > 0), no more cost on every upper-bounded resource, the same cost on resources with a lower
    bound, and less of something. Items that are fixed or tied are left alone (their options are joint)."""
    valid = problem.valid
    lower = {c.resource for c in problem.constraints if c.lower is not None}
    upper = {c.resource for c in problem.constraints} - lower
    le = [np.nan_to_num(problem.losses[m], nan=0.0) for m, w in problem.weights.items() if w > 0]
    le += [np.nan_to_num(problem.costs[r], nan=0.0) for r in sorted(upper)]
    eq = [np.nan_to_num(problem.costs[r], nan=0.0) for r in sorted(lower)]
    out = np.zeros(valid.shape, dtype=bool)
    for a in range(valid.shape[1]):
        for b in range(valid.shape[1]):
            if a == b:
                continue
            ok = valid[:, a] & valid[:, b]
            for f in le:
                ok &= f[:, b] <= f[:, a]
            for f in eq:
                ok &= f[:, b] == f[:, a]
            better = np.zeros_like(ok)
            for f in le:
                better |= f[:, b] < f[:, a]
            out[:, a] |= ok & better
    joint = [problem.item_index(i) for i in problem.fixed] + [i for group in problem.ties for i in group]
    out[joint, :] = False
    return out


def _without_dominated(problem: Problem) -> Problem:
    """`problem` with one row forbidding every dominated option (see `dominated_options`)."""
    mask = dominated_options(problem)
    if not mask.any():
        return problem
    costs = {**problem.costs, "dominated": np.where(problem.valid, mask.astype(float), np.nan)}
    return problem.replace(costs=costs, constraints=(*problem.constraints, Constraint("dominated", upper=0.0)))


def _no_good(problem: Problem, previous: list[np.ndarray], distance: int) -> Problem:
    """`problem` with one row per previous choice: at most L - `distance` items keep their previous option."""
    costs, rows = dict(problem.costs), list(problem.constraints)
    cols = np.arange(problem.valid.shape[1])
    for j, choice in enumerate(previous):
        name = f"no_good_{j}"
        same = (cols[None, :] == np.asarray(choice)[:, None]).astype(float)
        costs[name] = np.where(problem.valid, same, np.nan)
        rows.append(Constraint(name, upper=float(problem.n_items - distance), name=name))
    return problem.replace(costs=costs, constraints=tuple(rows))


def distinct_plans(problem: Problem, k: int, *, min_distance: int | None = None, **ilp_options: Any) -> list[Candidate]:
    """Up to `k` distinct feasible plans of `problem` (see the module docstring), the ILP's optimum first.

    `min_distance`: items in which a no-good candidate differs from every earlier one (default 5% of the
    items, at least 1). `ilp_options`: options of `solvers.ilp.solve_ilp` (backend, time_limit, ...).
    Returns [] when the problem is infeasible; fewer than `k` when no more plans fit."""
    if k < 1:
        raise ValueError(f"k: the number of candidate plans, at least 1, got {k}")
    distance = max(1, round(MIN_DISTANCE * problem.n_items)) if min_distance is None else int(min_distance)
    if distance < 1:
        raise ValueError(f"min_distance must be at least 1, got {min_distance}")
    found: list[Candidate] = []
    seen: set[tuple[int, ...]] = set()
    original, problem = problem, _without_dominated(problem)

    def add(how: str, sol: Solution) -> None:
        if sol.status == "infeasible" or tuple(sol.choice) in seen or len(found) >= k:
            return
        seen.add(tuple(sol.choice))
        info = {**sol.info, "how": how, "time_s": sol.time_s}
        found.append(Candidate(how, original.evaluate(sol.choice, status=sol.status, gap=sol.gap, time_s=sol.time_s,
                                                     backend=sol.backend, info=info)))  # fmt: skip

    add("ilp", solve_ilp(problem, **ilp_options))
    if not found:
        return []
    quiet = {**ilp_options, "diagnose": False}  # the optimum above already diagnosed an infeasible budget
    for how, weights in _weight_variants(problem):
        if len(found) >= k:
            break
        add(how, solve_ilp(problem.replace(weights=weights), **quiet))
    while len(found) < k:
        cut = _no_good(problem, [c.solution.choice for c in found], distance)
        sol = solve_ilp(cut, **quiet)
        if sol.status == "infeasible":
            break
        before = len(found)
        add(f"no-good {len(found)}", sol)
        if len(found) == before:  # cannot happen with the cuts; guards the loop
            break
    return found
