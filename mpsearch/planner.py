"""`solve` (profile + budget → Plan) and `search` (model + budget → Plan: profile, then solve)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mpsearch.budget import Budget
from mpsearch.model import Inventory, inventory
from mpsearch.plan import Plan
from mpsearch.problem import SearchSpace, budget_error_text, build_problem, solution_to_plan
from mpsearch.profile_store import Profile, check_inventory, read_inventory
from solvers.problem import InfeasibleBudget
from solvers.registry import get_solver


class BudgetInfeasible(ValueError):
    """The budget cannot be met; the message names the smallest feasible budget."""

    def __init__(self, message: str, smallest_feasible: float | None):
        super().__init__(message)
        self.smallest_feasible = smallest_feasible


def load_profile(profile: Any) -> tuple[pd.DataFrame, dict[str, Any], Inventory]:
    """(measurements, meta, inventory) of a profile folder, a `Profile` object or `(df, inventory)`.

    A folder's meta.json, inventory.json and rows must agree (model, fingerprint, layers, sizes);
    anything malformed or mixed is a `ProfileError` naming the file (and line)."""
    if isinstance(profile, tuple):  # (df, inventory) or (df, inventory, meta)
        df, inv, *rest = profile
        return df, dict(rest[0]) if rest else {}, inv
    if isinstance(profile, (str, Path)):
        profile = Profile.load(profile)
    df, meta = profile.df, dict(profile.meta)
    folder = getattr(profile, "path", None)
    inv_file = Path(folder) / "inventory.json" if folder else None
    if inv_file is not None and inv_file.is_file():
        inv, where = read_inventory(inv_file), str(inv_file)
    else:
        model = meta.get("model") or None
        inv = inventory(None if model == "demo" else model, resolution=meta.get("resolution"))
        where = f"{folder or 'profile'} (inventory of {inv.model!r})"
    if "layers" in meta:
        check_inventory(meta, inv, where)
    return df, meta, inv


def group_metrics(df: pd.DataFrame, meta: dict[str, Any]) -> dict[str, str]:
    """MixDQ's pairing of layer groups with metrics: the profile's first quality and content metric."""
    from mpsearch.metrics import get_metric

    measured = list(dict.fromkeys(df["metric"]))
    declared = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    kinds = {m: (declared.get(m) or {}).get("kind") or get_metric(m).kind for m in measured}
    out = {}
    for group in ("quality", "content"):
        names = [m for m in measured if kinds[m] == group]
        if not names:
            raise ValueError(f"the profile has no {group} metric; MixDQ pairs quality layers with a quality "
                             "metric and content layers with a content metric")
        out[group] = "sqnr" if "sqnr" in names else "ssim" if "ssim" in names else names[0]
    return out


def solve(
    profile: Any,
    budget: Budget | str,
    *,
    solver: str = "ilp",
    backend: str | None = None,
    fmt: str | None = None,
    space: SearchSpace | None = None,
    time_limit: float | None = None,
    steps: int | None = None,
    **options: Any,
) -> Plan:
    """The best plan for `budget` from a profile (a folder written by `mpsearch profile`).

    >>> plan = solve("profiles/demo", "3bits")          # doctest: +SKIP
    >>> plan.predicted["bytes"], plan.solver["status"]  # doctest: +SKIP

    `steps`: keep that many of the model's denoising steps (`mpsearch.step_search.solve_steps`, whose
    keyword arguments `options` may hold: model, pool, grouping, fitness_metric, rerank, ...).
    Raises `BudgetInfeasible` naming the smallest feasible budget when none fits.
    """
    if steps is not None:
        from mpsearch.step_search import solve_steps

        return solve_steps(profile, budget, steps, solver=solver, backend=backend, fmt=fmt, space=space,
                           time_limit=time_limit, **options)
    budget = Budget.parse(budget)
    df, meta, inv = load_profile(profile)
    if solver == "mixdq":
        if budget.kind != "bits":
            raise ValueError(f"MixDQ's procedure targets a mean weight bit-width: use e.g. --budget 4bits, not {budget}")
        if space is not None and space.prune:
            raise ValueError("MixDQ's procedure allocates bits only: search pruning with the ilp or evolution solver")
        space = SearchSpace(**{**(space or SearchSpace()).__dict__, "weight_only": True})
        # MixDQ allocates with the band ±0.02 bits around the target itself, not under a ceiling
        step_problem = build_problem(inv, df, None, fmt=fmt, space=space, units=meta.get("units"))
        # MixDQ solves ~200 small group ILPs per sweep: in-process SCIP (as MixDQ does) by default
        options = {"target": budget.value, "group_metric": group_metrics(df, meta), "backend": backend or "scip",
                   **options}
    else:
        step_problem = build_problem(inv, df, budget, fmt=fmt, space=space, units=meta.get("units"))
    fn = get_solver(solver)
    kwargs: dict[str, Any] = dict(options)
    if solver == "ilp":
        kwargs.update(backend=backend or "cbc", time_limit=time_limit)
    target = step_problem if solver == "evolution" else step_problem.problem
    try:
        solution = fn(target, **kwargs)
    except InfeasibleBudget as e:
        raise BudgetInfeasible(str(e), e.smallest_feasible) from None
    except ValueError:  # MixDQ's sweep or the evolution found nothing: name the smallest budget if none fits
        if solver != "ilp":
            _raise_if_infeasible(build_problem(inv, df, budget, fmt=fmt, space=space, units=meta.get("units")),
                                 budget, inv)
        raise
    if solution.status == "infeasible":
        raise BudgetInfeasible(budget_error_text(solution, budget, inv), solution.smallest_feasible)
    extra = {"name": solver, "profile": str(profile) if isinstance(profile, (str, Path)) else meta.get("name", "")}
    if "kept_steps" in solution.info:
        extra["kept_steps"] = list(solution.info["kept_steps"])
    if step_problem.info.get("unmeasured"):  # options the profile never measured: not offered, or at zero loss
        extra.update(step_problem.info)
    plan = solution_to_plan(solution, inv, fmt=fmt, budget=budget, extra=extra, units=meta.get("units"))
    if plan.predicted["bytes"] and budget.resource == "bytes":
        assert plan.predicted["bytes"] <= budget.resolve(inv, fmt), "solver broke the byte budget"
    return plan


def _raise_if_infeasible(step_problem: Any, budget: Budget, inv: Inventory) -> None:
    """`BudgetInfeasible` naming the smallest feasible budget when the exact ILP finds no plan within it."""
    try:
        solution = get_solver("ilp")(step_problem.problem)
    except InfeasibleBudget as e:
        raise BudgetInfeasible(str(e), e.smallest_feasible) from None
    if solution.status == "infeasible":
        raise BudgetInfeasible(budget_error_text(solution, budget, inv), solution.smallest_feasible)


def search(model: Any = None, budget: Budget | str = "4bits", *, profile_dir: str | Path | None = None,
           profile_options: dict[str, Any] | None = None, **solve_options: Any) -> Plan:
    """Profile `model` (or resume its profile in `profile_dir`), then solve for `budget` (with `steps=N`,
    keeping N denoising steps, sampled with `model`)."""
    from mpsearch.profiler import profile as run_profile

    result = run_profile(model, out=profile_dir, **(profile_options or {}))
    if solve_options.get("steps") is not None:  # the timestep search samples with the same pipeline
        solve_options.setdefault("model", model)
    return solve(result, budget, **solve_options)


def pareto_front(
    profile: Any,
    lo: Budget | str,
    hi: Budget | str,
    n: int = 20,
    *,
    backend: str = "cpsat",
    fmt: str | None = None,
    space: SearchSpace | None = None,
) -> pd.DataFrame:
    """Optimal predicted loss at `n` budgets from `lo` to `hi` (same kind), dominated points removed.

    Returns one row per front point: budget (resource units), bytes, mean_w_bits, bitops, loss, status.
    """
    import numpy as np

    from solvers.pareto import pareto_front as front

    lo, hi = Budget.parse(lo), Budget.parse(hi)
    if lo.resource != hi.resource:
        raise ValueError(f"pareto range {lo}..{hi} mixes budget kinds")
    df, meta, inv = load_profile(profile)
    sp = build_problem(inv, df, hi, fmt=fmt, space=space, units=meta.get("units"))
    budgets = np.linspace(lo.resolve(inv, fmt), hi.resolve(inv, fmt), n)
    result = front(sp.problem, "budget", budgets=budgets, backend=backend)
    rows = []
    for sol in result.points:
        plan = solution_to_plan(sol, inv, fmt=fmt, units=meta.get("units"))
        rows.append({"budget": sol.constraint_totals["budget"], "bytes": plan.predicted["bytes"],
                     "mean_w_bits": plan.predicted["mean_w_bits"], "bitops": plan.predicted["bitops"],
                     "loss": sol.objective, "status": sol.status})
    out = pd.DataFrame(rows)
    out.attrs.update(time_s=result.time_s, solves=result.solves, resource=lo.resource)
    return out


def plot_front(front: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Predicted loss vs bytes of a front (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(front["bytes"] / 1e6, front["loss"], "o-")
    ax.set_xlabel("denoiser bytes (MB)")
    ax.set_ylabel("predicted loss (normalised)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
