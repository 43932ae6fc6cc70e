"""Keep N of a model's denoising steps and choose per-layer bits with them (TMPQ-DM, methods.md §2).

    plan = solve("profiles/demo", "30%bitops", steps=4, solver="evolution")   # + real fitness
    plan.kept_timesteps                                                        # e.g. [999, 749, 499, 249]

This module holds the timestep side of `mpsearch.planning.planner.solve`: the candidate pool, the problem
with its BitOPs ceiling over kept steps, and the joint search of a solver that consumes a `StepProblem`
(`SolverSpec.consumes == "steps"`), fed by sampling. Solvers that consume a flat problem keep evenly
spaced steps.

The pool is the model's own schedule (the profile's sampling timesteps, or the scheduler's `pool`-step
schedule). It is split into N groups of consecutive steps (`mpsearch.pipelines.timesteps.group_steps`: uniform
blocks, or TMPQ-DM's quadratic groups for fine pools) and a plan keeps one step per group, every kept step
running the same bits (TMPQ-DM's `groupwise_consistent` mode).

A steps solver (the evolution, `solvers.evolution`) searches kept steps and bits jointly. Bits are scored by the
profile (per-layer degradations per step group, spread over the pool's steps), starting from the ILP's
optimal bits (TMPQ-DM starts from uniform 6 bits). Steps are scored by sampling: each distinct kept-step
set the search meets is sampled once with those bits through the shared super-checkpoint
(`mpsearch.planning.fitness`) and scored against the FP images of the full schedule, because steps do not add up
(on the demo, moving one step alone breaks the spacing that moving all of them keeps). Its best `rerank`
candidates are then sampled with their own bits and kept steps, as TMPQ-DM re-ranks its top 10 by FID,
and so are the winner's bits at the `POLISH` best-measured step sets (bits and steps are separable when
every kept step runs the same bits, and the search's operators, which mutate a quarter of the bit genes
with any step change, rarely carry good bits to a good step set); the best measured candidate wins.

Budgets: a BitOPs budget counts the kept steps. `X%bitops` is X% of the W16A16 BitOPs of one image over
the profile's full schedule; an absolute `2Tbitops` is per image (kept steps × Σ MACs·w·a of one
denoiser call at batch 1). With N kept steps every call gets `budget / N`, a hard ceiling. Byte and
mean-bit budgets do not depend on steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import diffusers
import numpy as np
import pandas as pd

from mpsearch.model import Inventory, find_denoiser, load_pipeline, weights_fingerprint
from mpsearch.pipelines.timesteps import (
    GROUPINGS,
    check_timesteps,
    group_steps,
    is_flow,
    kept_scheduler,
    schedule,
)
from mpsearch.planning.budget import Budget, BudgetInfeasible
from mpsearch.planning.cost import FLOAT_BITS
from mpsearch.planning.fitness import Fitness
from mpsearch.planning.inputs import group_metrics
from mpsearch.planning.problem import SearchSpace, build_problem
from mpsearch.planning.quantizer import weight_config
from mpsearch.profiling import calibration as cal
from mpsearch.profiling.quantizers import ActQuantConfig
from mpsearch.profiling.session import Candidates
from mpsearch.progress import count_bar
from mpsearch.zoo import BUNDLED
from solvers.problem import Constraint, Problem, Solution, StepProblem
from solvers.registry import SolverSpec
from solvers.units import build_units

__all__ = ["StepOptions", "StepPool", "describe_budget", "joint_search", "profile_fitness", "sampling_pipeline",
           "step_losses_for_groups", "step_pool", "step_problem"]

POLISH = 3  # best-measured kept-step sets also sampled with the winner's bits


@dataclass
class StepOptions:
    """How kept steps are searched (with `solve(..., steps=N)`).

    `model`: the pipeline (or what `load_pipeline` reads; default: the profile's model) to sample with,
    needed by a steps solver unless `rerank=0` and `measure_steps=False`. `pool`: candidate schedule size
    (default: the profile's). `grouping`: uniform | quad. `fitness_metric`: an image metric (default: the
    profile's content metric, SSIM on the demo; adherence and plug-ins work too). `fitness_prompts`:
    prompts for the real fitness (default: the profile's calibration prompts; an int draws that many demo
    captions). `rerank`: finalists sampled and scored (0 = surrogate only; without kept steps, the ILP's
    distinct plans re-ranked, `mpsearch.planning.rerank`). `measure_steps`: sample every
    kept-step set the search meets (else steps are chosen by the re-ranking only). `seed_bits`: the
    search's seed candidate, "ilp" (the ILP's optimal bits for the surrogate, which uniform groups make
    exact; kept-step sets are sampled with them) or "median" (each layer's median-cost option, as
    `solvers.evolution` does; kept-step sets are sampled in FP). `progress`: show a progress bar; `log`:
    where one-line notes go.
    """

    model: Any = None
    pool: int | None = None
    grouping: str = "uniform"
    fitness_metric: str | None = None
    fitness_prompts: Sequence[str] | int | None = None
    fitness_seed: int = 0
    rerank: int = 10
    measure_steps: bool = True
    seed_bits: str = "ilp"
    progress: bool = False
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.seed_bits not in ("ilp", "median"):
            raise ValueError(f"seed_bits must be 'ilp' or 'median', got {self.seed_bits!r}")
        if self.grouping not in GROUPINGS:
            raise ValueError(f"step grouping must be one of {GROUPINGS}, got {self.grouping!r}")

    @property
    def samples(self) -> bool:
        """Whether a steps solver samples images (to measure kept-step sets or re-rank finalists)."""
        return self.rerank > 0 or self.measure_steps

    def note(self, message: str) -> None:
        if self.log is not None:
            self.log(message)


@dataclass
class StepPool:
    """The candidate schedule of a search: pool timesteps, N groups of pool positions (one kept step per
    group), the profile's full schedule length, and the pipeline to sample with (None when not needed)."""

    timesteps: list[int]
    groups: list[tuple[int, int]]
    full_steps: int
    profile_timesteps: list[int] | None = None
    profile_groups: list[list[int]] | None = None
    pipe: Any = field(default=None, repr=False)

    def at(self, positions: Sequence[int]) -> list[int]:
        """The timesteps at pool `positions`."""
        return [self.timesteps[i] for i in positions]


def describe_budget(budget: Budget, inv: Inventory, steps: int, meta: dict[str, Any], pool: int | None = None) -> str:
    """A budget of a search keeping `steps` steps, as understood. A BitOPs budget is of one image (a % of
    W16A16 over the profile's full schedule, or the `pool`-step schedule's without one), and each of the
    `steps` kept denoiser calls gets an equal share, e.g. `6.25%bitops = 6.25% of the W16A16 BitOPs of one
    image at 8 steps = 12,582,912,000 BitOPs per image; 4 kept steps: at most 3,145,728,000 BitOPs per
    denoiser call`. Other budgets as `Budget.describe` says them."""
    timesteps, _, _ = _profile_schedule(meta)
    full_steps = len(timesteps) if timesteps else pool  # as `step_pool` counts them
    if budget.resource != "bitops" or not full_steps or steps < 1:
        return budget.describe(inv)
    ceiling = budget.per_image(inv, full_steps)
    head = (f"{budget} = {budget.value:g}% of the W16A16 BitOPs of one image at {full_steps} steps = "
            if budget.kind == "bitops_percent" else f"{budget} = ")
    return (f"{head}{ceiling:,.0f} BitOPs per image; {steps} kept steps: at most {ceiling / steps:,.0f} BitOPs "
            "per denoiser call")


def step_pool(meta: dict[str, Any], steps: int, opts: StepOptions, *, needs_model: bool) -> StepPool:
    """The pool to keep `steps` timesteps from: the profile's schedule, or the scheduler's `opts.pool`-step
    one; the pipeline is loaded when sampling needs it (or the pool does)."""
    prof_ts, prof_groups, sched_name = _profile_schedule(meta)
    pipe = None
    if needs_model or opts.pool is not None:
        pipe = sampling_pipeline(opts.model, meta)
        kept_scheduler(pipe.scheduler)
    else:
        _check_scheduler_name(sched_name)
    if opts.pool is not None:  # the pipeline's own schedule at the profile's size (Flux's shift depends on it)
        pool_ts = schedule(pipe, opts.pool, (meta.get("sampling") or {}).get("resolution"))
    elif prof_ts:
        pool_ts = list(prof_ts)  # flow-matching timesteps are fractional: kept as they are
    else:
        raise ValueError("the profile records no sampling timesteps: pass pool= (a number of steps)")
    if not 1 <= steps <= len(pool_ts):
        raise ValueError(f"cannot keep {steps} of the {len(pool_ts)} timesteps of the pool {pool_ts}")
    groups = group_steps(pool_ts, steps, opts.grouping)
    return StepPool(pool_ts, groups, len(prof_ts) if prof_ts else len(pool_ts), prof_ts, prof_groups, pipe)


def step_problem(inv: Inventory, df: pd.DataFrame, meta: dict[str, Any], budget: Budget | None, steps: int,
                 pool: StepPool, *, fmt: str | None, space: SearchSpace) -> tuple[StepProblem, float | None]:
    """The problem of `steps` kept steps and its per-image BitOPs ceiling (None for other budgets).

    A BitOPs budget counts kept steps: every call gets `ceiling / steps`, a hard row; a ceiling no plan
    meets raises `BudgetInfeasible` with the least BitOPs per image. Other budgets (or None, for solvers
    that take the budget as a target) go to `build_problem` as they are."""
    if space.prune and (df["tensor"] == "unit").any():
        raise ValueError("the timestep search does not prune blocks yet: drop --prune, or solve without --steps")
    space = SearchSpace(**{**space.__dict__, "prune": False})
    extra: list[Constraint] = []
    ceiling = None
    if budget is not None and budget.resource == "bitops":
        ceiling = budget.per_image(inv, pool.full_steps)
        extra.append(Constraint("bitops", upper=ceiling / steps, name="budget"))
    sp = build_problem(inv, df, None if ceiling is not None else budget, fmt=fmt, space=space,
                       extra_constraints=extra, units=meta.get("units"))  # fmt: skip
    if ceiling is not None:
        m = build_units(sp.problem)
        least = float(m.min_cost()[m.names.index("budget")]) * steps  # the cheapest plan's BitOPs per image
        if least > ceiling * (1 + 1e-12):
            ref = inv.total_macs * FLOAT_BITS * FLOAT_BITS * pool.full_steps
            raise BudgetInfeasible(f"budget {budget} is infeasible with {steps} kept steps: the smallest plan needs "
                                   f"{least:,.0f} BitOPs per image ({100 * least / ref:.4g}%bitops of W16A16 at "
                                   f"{pool.full_steps} steps)", least)  # fmt: skip
    return sp, ceiling


def _fitness_metric(meta: dict[str, Any], df: pd.DataFrame) -> str:
    """The profile's content metric (SSIM preferred: continuous, so close candidates differ), else SSIM."""
    try:
        return group_metrics(df, meta)["content"]
    except ValueError:
        return "ssim"


@dataclass
class _Search:
    """One joint search's state: the sampled fitness (None: surrogate only), the seed plan its kept-step
    sets are sampled with, and the progress callback."""

    fit: Fitness | None
    names: list[str]
    pool: StepPool
    seed_plan: dict[str, Any] | None
    advance: Callable[..., None]

    def step_fitness(self, kept: tuple[int, ...]) -> float:
        self.advance(1, "kept-step sets")
        return self.fit(self.seed_plan, self.pool.at(kept))

    def evaluate(self, solution: Solution, kept: tuple[int, ...]) -> float:
        self.advance(1, "re-ranking finalists")
        return self.fit(dict(zip(self.names, solution.keys, strict=True)), self.pool.at(kept))


def joint_search(spec: SolverSpec, sp: StepProblem, pool: StepPool, opts: StepOptions, solver_options: dict[str, Any],
                 *, inv: Inventory, df: pd.DataFrame, meta: dict[str, Any], budget: Budget, fmt: str | None,
                 seed_solver: Callable[[Problem], Solution]) -> tuple[Solution, tuple[int, ...], dict[str, Any]]:  # fmt: skip
    """Run a steps solver on the pool's groups, fed by sampling: returns (solution, kept pool positions, info).

    `seed_solver`: the bits solver of `opts.seed_bits="ilp"` (the planner's ILP with its options)."""
    metric = opts.fitness_metric or _fitness_metric(meta, df)
    fit = None
    if opts.samples:
        fit = profile_fitness(pool.pipe, meta, pool.timesteps, metric, opts.fitness_prompts, opts.fitness_seed, fmt)
        opts.note(f"fitness: {metric} of {len(fit.prompts)} prompts vs FP at {len(pool.timesteps)} steps")
    try:
        return _search(spec, sp, pool, opts, solver_options, fit, metric, inv, budget, seed_solver)
    finally:
        if fit is not None:
            fit.close()


def _search(spec, sp, pool, opts, solver_options, fit, metric, inv, budget, seed_solver):
    start_choice, seed_plan = None, None
    if opts.seed_bits == "ilp":  # the surrogate's optimal bits (exact for uniform groups) as the seed
        seed = seed_solver(sp.problem)
        if seed.status != "infeasible":
            start_choice, seed_plan = seed.choice, dict(zip(inv.names, seed.keys, strict=True))
    finalists = max(1, opts.rerank)
    n_sets = int(np.prod([b - a for a, b in pool.groups]))
    options = spec.options(**{k: v for k, v in solver_options.items() if k in spec.option_names()}) \
        if spec.options else None
    born = options.max_candidates() if hasattr(options, "max_candidates") else n_sets
    measure = fit is not None and opts.measure_steps
    rerank = fit is not None and opts.rerank > 0
    total = (min(n_sets, born) if measure else 0) + ((finalists + POLISH) if rerank else 0)
    info: dict[str, Any] = {}
    with count_bar(total, opts.progress and total > 0, "timestep search") as advance:
        run = _Search(fit, inv.names, pool, seed_plan, advance)
        problem = StepProblem(sp.problem, step_losses_for_groups(sp, pool.groups, pool.timesteps,
                                                                 pool.profile_timesteps, pool.profile_groups),
                              pool.groups)  # fmt: skip
        try:
            solution = spec(problem, start=start_choice, finalists=finalists,
                            step_fitness=run.step_fitness if measure else None,
                            evaluate=run.evaluate if rerank else None, **solver_options)  # fmt: skip
        except ValueError as e:
            raise BudgetInfeasible(f"budget {budget}: {e}", None) from None
        kept = tuple(solution.info["kept_steps"])
        measured = solution.info.get("step_sets_measured") or {}
        scores, finalist_log = None, None
        if rerank:
            scores = list(solution.info["evaluations"])
            finalist_log = fit.log[len(fit.log) - len(scores):]
            if measured:
                kept = _polish(run, solution, measured, kept, scores, finalist_log)
    if measured:
        info["step_sets"] = {"measured": len(measured), "of": n_sets, "bits": "ilp" if seed_plan else "fp",
                             "best": [{"timesteps": pool.at(ts), "fitness": float(f"{v:.6g}")}
                                      for ts, v in sorted(measured.items(), key=lambda kv: kv[1])[:10]]}
    if rerank:
        info["fitness"] = {"metric": metric, "prompts": len(fit.prompts),
                           **_rounded(finalist_log[int(np.argmin(scores))]),
                           "finalists": [_rounded(r) for r in finalist_log]}  # fmt: skip
    return solution, kept, info


def _polish(run: _Search, solution: Solution, measured: dict, kept: tuple[int, ...], scores: list[float],
            finalist_log: list[dict]) -> tuple[int, ...]:
    """Bits and kept steps are separable here (same bits at every kept step): the winner's bits are also
    sampled at the best-measured step sets that the search's operators missed. Appends to `scores` and
    `finalist_log`; returns the best kept steps."""
    best = min(scores)
    others = [ts for ts, _ in sorted(measured.items(), key=lambda kv: kv[1]) if ts != kept][:POLISH]
    for ts in others:
        run.advance(1, "best step sets with the winner's bits")
        f = run.fit(dict(zip(run.names, solution.keys, strict=True)), run.pool.at(ts))
        finalist_log.append(run.fit.log[-1])
        scores.append(f)
        if f < best:
            kept, best = tuple(ts), f
    return kept


def step_losses_for_groups(sp: StepProblem, groups: Sequence[tuple[int, int]], pool: Sequence[int],
                           profile_timesteps: Sequence[int] | None = None,
                           profile_groups: Sequence[Sequence[int]] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Per-layer losses per search group, `(N, L, K)`, from the profile's per-step-group losses.

    A profile group's loss (measured with the layer quantized during all of its steps) is spread evenly
    over its steps; a pool timestep takes the per-step loss of the profile step nearest to it, and a
    search group the mean over its pool steps (the one step it keeps is any of them). Without the
    profile's schedule, its groups split the pool evenly in order."""
    G = next(iter(sp.step_losses.values())).shape[0]
    P = len(pool)
    if profile_timesteps and profile_groups and len(profile_groups) == G:
        pt = np.asarray(profile_timesteps)
        group_of_step = {s: g for g, ss in enumerate(profile_groups) for s in ss}
        of_pos = [group_of_step[int(np.argmin(np.abs(pt - t)))] for t in pool]
        size = [len(ss) for ss in profile_groups]
    else:
        of_pos = [min(G - 1, i * G // P) for i in range(P)]
        size = [max(1, of_pos.count(g)) for g in range(G)]
    out = {}
    for m, v in sp.step_losses.items():
        per_step = v / np.asarray(size, dtype=float)[:, None, None]
        out[m] = np.stack([per_step[of_pos[a:b]].mean(axis=0) for a, b in groups])
    return out


def _profile_schedule(meta: dict[str, Any]) -> tuple[list[int] | None, list[list[int]] | None, str | None]:
    sampling = meta.get("sampling") or {}
    return sampling.get("timesteps"), meta.get("step_groups"), sampling.get("scheduler")


def _check_scheduler_name(name: str | None) -> None:
    """Refuse early (before any search) a scheduler that cannot sample at chosen timesteps."""
    cls = getattr(diffusers, name, None) if name else None
    if cls is not None:
        kept_scheduler(cls())


def _rounded(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in rec.items()}


def sampling_pipeline(model: Any, meta: dict[str, Any]):
    """The pipeline to sample with: `model` if it is one, else loaded from it (default: the profile's model)."""
    if hasattr(model, "components"):
        return model
    name = model if model is not None else meta.get("model")
    pipe = load_pipeline(name or None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def profile_timesteps(pipe: Any, meta: dict[str, Any]) -> list[int | float]:
    """The profile's sampling schedule as `pipe` samples it: its recorded timesteps (fractions kept: a flow
    schedule's are not whole numbers), else its number of steps on the pipeline's own schedule at the
    profile's resolution."""
    sampling = meta.get("sampling") or {}
    ts = sampling.get("timesteps")
    if not ts:
        if not sampling.get("steps"):
            raise ValueError("the profile records neither its sampling timesteps nor its number of steps")
        ts = schedule(pipe, int(sampling["steps"]), sampling.get("resolution"))
    return check_timesteps(ts, pipe.scheduler.config.num_train_timesteps, flow=is_flow(pipe.scheduler))


def profile_fitness(pipe, meta: dict[str, Any], pool: list[int], metric: str, prompts, seed: int, fmt: str | None):
    """A `Fitness` on `pipe` set up like the profile: its candidates, quantizer settings and calibration."""
    _, den = find_denoiser(pipe)
    if meta.get("fingerprint") and weights_fingerprint(den) != meta["fingerprint"]:
        raise ValueError(f"the profile was measured on other weights (fingerprint {meta['fingerprint']}) than the "
                         "model given to sample the fitness with")
    s = meta.get("sampling") or {}
    cand = meta.get("candidates") or {}
    candidates = Candidates(tuple(cand.get("weight", Candidates.weight)), tuple(cand.get("act", Candidates.act)))
    quant = meta.get("quant") or {}
    calib_prompts = s.get("prompts") or cal.demo_prompts(8)
    guidance = float(s.get("guidance", cal.DEFAULT_GUIDANCE))
    if prompts is None:
        prompts = list(calib_prompts)
    elif isinstance(prompts, int):
        if meta.get("model") not in (None, "", *BUNDLED):
            raise ValueError("a number of fitness prompts draws demo captions: pass a list of prompts for this model")
        prompts = cal.demo_prompts(prompts, seed)
    calib = None
    if candidates.of("act"):
        calib = cal.reference(pipe, list(calib_prompts), seeds=s.get("seeds"), steps=int(s.get("steps", len(pool))),
                              guidance=guidance, resolution=s.get("resolution"))  # fmt: skip
    act = quant.get("act")
    return Fitness.build(
        pipe, list(prompts), pool=pool, metric=metric, guidance=guidance, seed=seed, resolution=s.get("resolution"),
        calib=calib, candidates=candidates, weight_cfg=weight_config(fmt or "packed"),
        act_cfg=ActQuantConfig(**act) if act else ActQuantConfig(), bos_aware=quant.get("bos_aware", True),
        split_shortcut=quant.get("split_shortcut", True), progressive=quant.get("progressive", False),
    )  # fmt: skip
