"""`solve` (profile + budget → Plan) and `search` (model + budget → Plan: profile, then solve)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mpsearch.budget import Budget
from mpsearch.model import Inventory, inventory
from mpsearch.plan import Plan
from mpsearch.problem import SearchSpace, budget_error_text, build_problem, solution_to_plan
from solvers.problem import InfeasibleBudget
from solvers.registry import get_solver


class BudgetInfeasible(ValueError):
    """The budget cannot be met; the message names the smallest feasible budget."""

    def __init__(self, message: str, smallest_feasible: float | None):
        super().__init__(message)
        self.smallest_feasible = smallest_feasible


def load_profile(profile: Any) -> tuple[pd.DataFrame, dict[str, Any], Inventory]:
    """(measurements, meta, inventory) of a profile folder, a `Profile` object or `(df, inventory)`."""
    if isinstance(profile, tuple):
        df, inv = profile
        return df, {}, inv
    if isinstance(profile, (str, Path)):
        from mpsearch.profiler import Profile

        profile = Profile.load(profile)
    df, meta = profile.df, dict(profile.meta)
    inv_file = Path(getattr(profile, "path", "") or "") / "inventory.json"
    if inv_file.is_file():
        inv = Inventory.load(inv_file)
    else:
        model = meta.get("model") or None
        inv = inventory(None if model == "demo" else model, resolution=meta.get("resolution"))
    return df, meta, inv


def solve(
    profile: Any,
    budget: Budget | str,
    *,
    solver: str = "ilp",
    backend: str = "cbc",
    fmt: str | None = None,
    space: SearchSpace | None = None,
    time_limit: float | None = None,
    **options: Any,
) -> Plan:
    """The best plan for `budget` from a profile (a folder written by `mpsearch profile`).

    >>> plan = solve("profiles/demo", "3bits")          # doctest: +SKIP
    >>> plan.predicted["bytes"], plan.solver["status"]  # doctest: +SKIP

    Raises `BudgetInfeasible` naming the smallest feasible budget when none fits.
    """
    budget = Budget.parse(budget)
    df, meta, inv = load_profile(profile)
    step_problem = build_problem(inv, df, budget, fmt=fmt, space=space)
    fn = get_solver(solver)
    kwargs: dict[str, Any] = dict(options)
    if solver == "ilp":
        kwargs.update(backend=backend, time_limit=time_limit)
    target = step_problem if solver == "evolution" else step_problem.problem
    try:
        solution = fn(target, **kwargs)
    except InfeasibleBudget as e:
        raise BudgetInfeasible(str(e), e.smallest_feasible) from None
    if solution.status == "infeasible":
        raise BudgetInfeasible(budget_error_text(solution, budget, inv), solution.smallest_feasible)
    extra = {"name": solver, "profile": meta.get("name") or str(profile) if isinstance(profile, (str, Path)) else ""}
    if "kept_steps" in solution.info:
        extra["kept_steps"] = list(solution.info["kept_steps"])
    plan = solution_to_plan(solution, inv, fmt=fmt, budget=budget, extra=extra)
    if plan.predicted["bytes"] and budget.resource == "bytes":
        assert plan.predicted["bytes"] <= budget.resolve(inv, fmt), "solver broke the byte budget"
    return plan


def search(model: Any = None, budget: Budget | str = "4bits", *, profile_dir: str | Path | None = None,
           profile_options: dict[str, Any] | None = None, **solve_options: Any) -> Plan:
    """Profile `model` (or resume its profile in `profile_dir`), then solve for `budget`."""
    from mpsearch.profiler import profile as run_profile

    result = run_profile(model, out=profile_dir, **(profile_options or {}))
    return solve(result, budget, **solve_options)
