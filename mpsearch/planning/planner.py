"""The one `solve` (profile + budget → Plan), `search` (model + budget → Plan: profile, then solve) and
the Pareto front.

`solve` dispatches through the solver registry, never by name: each solver's `SolverSpec`
(`solvers.registry`) says whether it takes the budget as a ceiling (a constraint row) or a target, which
budget kinds it accepts, whether it allocates weights only or can prune, which options it has, and
whether it consumes a flat `Problem` or a `StepProblem`, and whether its plan is re-ranked by measurement
when a model is at hand (`SolverSpec.rerank`, the ILP: `mpsearch.planning.rerank`). With `steps=N` a steps solver searches the kept
steps with the bits (`mpsearch.planning.steps`); a flat solver keeps evenly spaced steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mpsearch.model import Inventory
from mpsearch.pipelines.timesteps import even_steps
from mpsearch.planning.budget import KIND_TEXT, Budget, BudgetInfeasible
from mpsearch.planning.cost import FLOAT_BITS
from mpsearch.planning.inputs import group_metrics, load_profile, profile_name
from mpsearch.planning.pick import ImagePick, image_pick
from mpsearch.planning.plan import Plan
from mpsearch.planning.problem import SearchSpace, build_problem, plan_choice, solution_to_plan
from mpsearch.planning.rerank import rerank
from mpsearch.planning.steps import StepOptions, joint_search, step_pool, step_problem
from solvers.pareto import pareto_front as front
from solvers.problem import InfeasibleBudget, Problem, Solution
from solvers.registry import SolverSpec, available_solvers, get_solver

if TYPE_CHECKING:
    from mpsearch.profiling.profiler import ProfileOptions

__all__ = ["SolveOptions", "pareto_front", "plot_front", "predicted_loss", "search", "solve"]

_STEP_FIELDS = {f.name for f in fields(StepOptions)}


@dataclass
class SolveOptions:
    """How `solve` works; every field (and every `StepOptions` field) is also a keyword of `solve`.

    `solver`: a registered solver (`solvers.available_solvers()`). `backend`, `time_limit` (s): given to
    solvers whose options have them (the ILP's MIP backend, MixDQ's group ILPs); None keeps the solver's
    default. `fmt`: weight storage format of the cost model. `space`: the bit-widths offered.
    `steps`: keep that many of the model's denoising steps, searched as `step` says.
    `solver_options`: more options of the solver: fields of its options dataclass (seed, config, band, ...).
    """

    solver: str = "ilp"
    backend: str | None = None
    fmt: str | None = None
    space: SearchSpace | None = None
    time_limit: float | None = None
    steps: int | None = None
    step: StepOptions = field(default_factory=StepOptions)
    solver_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, options: SolveOptions | None = None, **kwargs: Any) -> SolveOptions:
        """`options` (default: all defaults) updated by keywords: its own fields, `StepOptions` fields,
        and any other keyword as a solver option."""
        opts = options or cls()
        own = {k: kwargs.pop(k) for k in [k for k in kwargs if k in {f.name for f in fields(cls)}]}
        step = {k: kwargs.pop(k) for k in [k for k in kwargs if k in _STEP_FIELDS]}
        return replace(opts, **own, step=replace(own.get("step", opts.step), **step),
                       solver_options={**opts.solver_options, **own.get("solver_options", {}), **kwargs})

    def solver_kwargs(self, spec: SolverSpec, group_metric: Any = None) -> dict[str, Any]:
        """The keyword options for `spec`: `solver_options`, plus `backend`/`time_limit` when given and
        the solver has them, plus the profile's metric pairing for a solver with a `group_metric` option."""
        names = spec.option_names()
        unknown = sorted(set(self.solver_options) - names) if spec.options is not None else []
        if unknown:
            raise ValueError(f"{spec.label} has no option {', '.join(unknown)}; its options: {', '.join(sorted(names))}")
        out = dict(self.solver_options)
        for name in ("backend", "time_limit"):
            if name in names and getattr(self, name) is not None:
                out.setdefault(name, getattr(self, name))
        if "group_metric" in names and group_metric is not None:
            out.setdefault("group_metric", group_metric)
        return out


def _checked_space(spec: SolverSpec, budget: Budget, space: SearchSpace | None) -> SearchSpace:
    """The search space as the solver can take it; a budget kind or pruning it cannot handle is refused."""
    space = space or SearchSpace()
    if not spec.accepts(budget.kind):
        kind = spec.budget_kinds[0]
        desc, example = KIND_TEXT[kind]
        raise ValueError(f"{spec.label} targets {desc}: use e.g. --budget {example}, not {budget}")
    if space.prune and not spec.prunes:
        others = " or ".join(n for n in available_solvers() if get_solver(n).prunes)
        raise ValueError(f"{spec.label} allocates bits only: search pruning with the {others} solver")
    return replace(space, weight_only=True) if spec.weight_only else space


def _run(spec: SolverSpec, problem: Any, kwargs: dict[str, Any], feasible: Callable[[], Any]) -> Solution:
    """`spec(problem)`; when a heuristic finds nothing (a ValueError), `feasible()` raises `BudgetInfeasible`
    naming the smallest feasible budget if the budget is to blame."""
    try:
        return spec(problem, **kwargs)
    except InfeasibleBudget as e:
        raise BudgetInfeasible(str(e), e.smallest_feasible) from None
    except ValueError:  # MixDQ's sweep or the evolution found nothing: name the smallest budget if none fits
        feasible()
        raise


def _raise_if_infeasible(problem: Problem, budget: Budget, inv: Inventory) -> None:
    """`BudgetInfeasible` naming the smallest feasible budget when the exact ILP finds no plan within it."""
    solution = _run(get_solver("ilp"), problem, {}, lambda: None)
    if solution.status == "infeasible":
        raise BudgetInfeasible.of(solution, budget, inv)


def _check_act_cost(spec: SolverSpec, problem: Problem) -> None:
    """Refuse activation options to a solver whose activation stage needs a cost the problem lacks (the
    inventory's activation sizes are unknown)."""
    if spec.act_cost is None or spec.act_cost in problem.costs:
        return
    if any(isinstance(key, tuple) and key[1] < FLOAT_BITS for keys in problem.keys for key in keys):
        raise ValueError(f"{spec.label} allocates activation bits by activation size, which this profile's "
                         "inventory does not record (act_numel unknown: written by an older mpsearch); write a new "
                         "one with `mpsearch inspect --model M --json > PROFILE/inventory.json`, or solve weights "
                         "only (--weight-only)")


def _image_pick(spec: SolverSpec, opts: SolveOptions, kwargs: dict[str, Any], meta: dict[str, Any],
                inv: Inventory) -> ImagePick | None:  # fmt: skip
    """For a solver that picks by images and a model to render them with: the `ImagePick` it gets as `pick=`
    (one image per candidate plan, `fitness_prompts`/`fitness_seed` of `StepOptions`); else None."""
    if not spec.image_pick or opts.step.model is None or "pick" in kwargs:
        return None
    pick = image_pick(opts.step.model, meta, inv.names, prompts=opts.step.fitness_prompts,
                      seed=opts.step.fitness_seed, fmt=opts.fmt)  # fmt: skip
    kwargs["pick"] = pick
    return pick


def _reranks(spec: SolverSpec, opts: SolveOptions) -> bool:
    """Whether `solve` re-ranks the solver's plan by measurement: a model is at hand, `rerank` > 0, the
    solver declares it (`SolverSpec.rerank`) and there are no kept steps to search."""
    return spec.rerank and opts.step.model is not None and opts.step.rerank > 0 and opts.steps is None


def _rerank(opts: SolveOptions, kwargs: dict[str, Any], problem: Problem, meta: dict[str, Any], df: pd.DataFrame,
            inv: Inventory) -> tuple[Solution, dict[str, Any]]:  # fmt: skip
    """The best measured of `opts.step.rerank` distinct plans, and the record the plan keeps (`rerank`)."""
    s = opts.step
    solution, record = rerank(problem, s.rerank, inv.names, s.model, meta, df, metric=s.fitness_metric,
                              prompts=s.fitness_prompts, seed=s.fitness_seed, fmt=opts.fmt, **kwargs)  # fmt: skip
    if s.log is not None and record:
        c = record["cost"]
        s.note(f"re-ranked {len(record['candidates'])} plans by {record['metric']} on {c['prompts']} prompts: "
               f"kept #{record['chosen']} ({record['chosen_how']}), {c['renders']} renders, {c['seconds']:.1f} s")
    return solution, record


def solve(profile: Any, budget: Budget | str, options: SolveOptions | None = None, **kwargs: Any) -> Plan:
    """The best plan for `budget` from a profile (a folder written by `mpsearch profile`, a `Profile`, or
    `(df, inventory[, meta])`).

    >>> plan = solve("profiles/demo", "3bits")                          # doctest: +SKIP
    >>> plan = solve("profiles/demo", "4bits", solver="mixdq")          # doctest: +SKIP
    >>> plan = solve("profiles/demo", "4bits", solver="mixdq", model="demo")  # picks by images  # doctest: +SKIP
    >>> plan = solve("profiles/demo", "2.5bits", model="demo")  # ILP plans re-ranked by sampling  # doctest: +SKIP
    >>> plan = solve("profiles/demo", "30%bitops", steps=4, solver="evolution", rerank=0)  # doctest: +SKIP

    `options` / keywords: see `SolveOptions` and `StepOptions`. With `model=` the ILP's plan is re-ranked:
    `rerank` (default 10; 0 = off) distinct plans under the budget are sampled and the best measured kept
    (`mpsearch.planning.rerank`; the plan's `solver["rerank"]` records them). Raises `BudgetInfeasible` naming the
    smallest feasible budget when none fits.
    """
    opts = SolveOptions.of(options, **kwargs)
    budget = Budget.parse(budget)
    spec = get_solver(opts.solver)
    space = _checked_space(spec, budget, opts.space)
    df, meta, inv = load_profile(profile)
    pairing = group_metrics(df, meta) if "group_metric" in spec.option_names() else None
    kwargs = opts.solver_kwargs(spec, pairing)
    if spec.budget == "target":
        kwargs["target"] = budget.value
    extra = {"name": spec.name, "profile": profile_name(profile, meta)}
    if opts.steps is not None:
        return _solve_steps(spec, opts, kwargs, df, meta, inv, budget, space, extra)
    ceiling = None if spec.budget == "target" else budget
    sp = build_problem(inv, df, ceiling, fmt=opts.fmt, space=space, units=meta.get("units"))

    def feasible() -> None:
        with_ceiling = sp if ceiling is not None else build_problem(inv, df, budget, fmt=opts.fmt, space=space,
                                                                   units=meta.get("units"))  # fmt: skip
        _raise_if_infeasible(with_ceiling.problem, budget, inv)

    _check_act_cost(spec, sp.problem)
    pick = _image_pick(spec, opts, kwargs, meta, inv)
    try:
        if _reranks(spec, opts):
            solution, extra["rerank"] = _rerank(opts, kwargs, sp.problem, meta, df, inv)
        else:
            solution = _run(spec, sp if spec.consumes == "steps" else sp.problem, kwargs, feasible)
    finally:
        if pick is not None:
            pick.close()
    if solution.status == "infeasible":
        raise BudgetInfeasible.of(solution, budget, inv)
    if "kept_steps" in solution.info:
        extra["kept_steps"] = list(solution.info["kept_steps"])
    extra.update(solution.info.get("record") or {})  # what the solver asks the plan to record (e.g. its pick)
    if pick is not None:
        extra["images_rendered"] = pick.renders
    if sp.info.get("unmeasured"):  # options the profile never measured: not offered, or at zero loss
        extra.update(sp.info)
    plan = solution_to_plan(solution, inv, fmt=opts.fmt, budget=budget, extra=extra, units=meta.get("units"))
    if estimated := estimated_choices(plan, df):
        plan.solver["estimated"] = estimated
    if plan.predicted["bytes"] and budget.resource == "bytes":
        assert plan.predicted["bytes"] <= budget.resolve(inv, opts.fmt), "solver broke the byte budget"
    return plan


def predicted_loss(profile: Any, plan: Plan, *, space: SearchSpace | None = None) -> dict[str, Any]:
    """The ILP's additive predicted loss of any plan (a uniform or random baseline, MixDQ mode's, one edited
    by hand) under `profile`, on the same scale as `solve`'s `plan.predicted["loss"]`, so plans from
    different solvers compare like with like. `space`: the options the scale is taken over (default: what
    `solve` offers, pruning included when the plan prunes).

    Returns {"loss": normalised total, "losses": per-metric raw totals}."""
    df, meta, inv = load_profile(profile)
    if plan.fingerprint and inv.fingerprint and plan.fingerprint != inv.fingerprint:
        raise ValueError(f"the plan is for weights {plan.fingerprint[:12]}, the profile for {inv.fingerprint[:12]}")
    space = space or SearchSpace(prune=bool(plan.pruned_units))
    sp = build_problem(inv, df, None, fmt=plan.format, space=space, units=meta.get("units"))
    sol = sp.problem.evaluate(plan_choice(sp.problem, plan, inv))
    return {"loss": float(sol.objective), "losses": {k: float(v) for k, v in sol.losses.items()}}


def estimated_choices(plan: Plan, df: pd.DataFrame) -> list[str]:
    """'<layer> W8'-style names of the plan's chosen options whose loss rests on estimated rows (image
    triage, `mpsearch.profiling.triage`): there the plan trusts a scaled value, not a measurement."""
    if "estimated" not in df.columns or not df["estimated"].any():
        return []
    est = set(zip(df.loc[df.estimated, "layer"], df.loc[df.estimated, "tensor"], df.loc[df.estimated, "bits"],
                  strict=True))  # fmt: skip
    out = []
    for name, b in plan.layers.items():
        out += [f"{name} {t}{bits}" for t, tensor, bits in (("W", "weight", b.w_bits), ("A", "act", b.a_bits))
                if (name, tensor, bits) in est]
    return out


def _solve_steps(spec: SolverSpec, opts: SolveOptions, kwargs: dict[str, Any], df: pd.DataFrame,
                 meta: dict[str, Any], inv: Inventory, budget: Budget, space: SearchSpace,
                 extra: dict[str, Any]) -> Plan:  # fmt: skip
    """`solve` keeping `opts.steps` denoising steps (see `mpsearch.planning.steps`)."""
    steps, joint = opts.steps, spec.consumes == "steps"
    pool = step_pool(meta, steps, opts.step, needs_model=joint and opts.step.samples)
    sp, ceiling = step_problem(inv, df, meta, None if spec.budget == "target" else budget, steps, pool,
                               fmt=opts.fmt, space=space)  # fmt: skip
    info: dict[str, Any] = {"steps": steps, "pool": pool.timesteps, "grouping": opts.step.grouping,
                            "step_groups": [pool.timesteps[a:b] for a, b in pool.groups]}  # fmt: skip
    if joint:
        def seed_solver(problem: Problem) -> Solution:  # seed_bits="ilp": the ILP with the planner's backend
            seed_spec = get_solver(opts.step.seed_bits)
            return seed_spec(problem, **replace(opts, solver_options={}).solver_kwargs(seed_spec))

        solution, kept, found = joint_search(spec, sp, pool, opts.step, kwargs, inv=inv, df=df, meta=meta,
                                             budget=budget, fmt=opts.fmt, seed_solver=seed_solver)  # fmt: skip
        info.update(found)
    else:
        kept = even_steps(pool.groups)
        solution = _run(spec, sp.problem, kwargs, lambda: None)
        if solution.status == "infeasible":
            raise BudgetInfeasible(f"budget {budget} cannot be met with {steps} kept steps", None)
    plan = solution_to_plan(solution, inv, fmt=opts.fmt, budget=budget, extra={**extra, **info},
                            units=meta.get("units"))  # fmt: skip
    plan.kept_timesteps = pool.at(kept)
    plan.predict(inv)
    if ceiling is not None:
        assert plan.predicted["bitops_run"] <= ceiling * (1 + 1e-9), "solver broke the BitOPs budget"
    return plan


def search(model: Any = None, budget: Budget | str = "4bits", *, profile_dir: str | Path | None = None,
           profile_options: ProfileOptions | dict[str, Any] | None = None, **solve_options: Any) -> Plan:
    """Profile `model` (or resume its profile in `profile_dir`), then solve for `budget` (with `steps=N`,
    keeping N denoising steps, sampled with `model`). `profile_options`: a `ProfileOptions` or its fields
    as a dict (`out` is `profile_dir`). `solve_options`: as for `solve`."""
    # profiling loads the quantization engine: imported on use
    from mpsearch.profiling.profiler import ProfileOptions
    from mpsearch.profiling.profiler import profile as run_profile

    if isinstance(profile_options, ProfileOptions):
        result = run_profile(model, profile_options, out=profile_dir)
    else:
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
