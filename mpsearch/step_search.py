"""Keep N of a model's denoising steps and choose per-layer bits with them (TMPQ-DM, methods.md §2).

    plan = solve_steps("profiles/demo", "30%bitops", steps=4)      # evolution + real fitness
    plan.kept_timesteps                                            # e.g. [999, 749, 499, 249]

The pool is the model's own schedule (the profile's sampling timesteps, or the scheduler's `pool`-step
schedule). It is split into N groups of consecutive steps (`mpsearch.timesteps.group_steps`: uniform
blocks, or TMPQ-DM's quadratic groups for fine pools) and a plan keeps one step per group, every kept step
running the same bits (TMPQ-DM's `groupwise_consistent` mode).

The evolution solver (`solvers.evolution`) searches kept steps and bits jointly. Bits are scored by the
profile (per-layer degradations per step group, spread over the pool's steps), starting from the ILP's
optimal bits (TMPQ-DM starts from uniform 6 bits). Steps are scored by sampling: each distinct kept-step
set the search meets is sampled once with those bits through the shared super-checkpoint
(`mpsearch.fitness`) and scored against the FP images of the full schedule, because steps do not add up
(on the demo, moving one step alone breaks the spacing that moving all of them keeps). Its best `rerank`
candidates are then sampled with their own bits and kept steps, as TMPQ-DM re-ranks its top 10 by FID,
and so are the winner's bits at the `POLISH` best-measured step sets (bits and steps are separable when
every kept step runs the same bits, and the search's operators, which mutate a quarter of the bit genes
with any step change, rarely carry good bits to a good step set); the best measured candidate wins. Other solvers keep the evenly spaced steps and choose bits only.

Budgets: a BitOPs budget counts the kept steps. `X%bitops` is X% of the W16A16 BitOPs of one image over
the profile's full schedule; an absolute `2Tbitops` is per image (kept steps × Σ MACs·w·a of one
denoiser call at batch 1). With N kept steps every call gets `budget / N`, a hard ceiling. Byte and
mean-bit budgets do not depend on steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.budget import Budget
from mpsearch.cost import FLOAT_BITS
from mpsearch.model import Inventory
from mpsearch.plan import Plan
from mpsearch.problem import SearchSpace, build_problem, solution_to_plan
from mpsearch.timesteps import GROUPINGS, TimestepError, even_steps, group_steps, kept_scheduler, schedule
from solvers.problem import Constraint, InfeasibleBudget, StepProblem
from solvers.units import build_units

__all__ = ["describe_budget", "run_bitops", "solve_steps", "step_losses_for_groups"]

POLISH = 3  # best-measured kept-step sets also sampled with the winner's bits


def run_bitops(budget: Budget, inv: Inventory, full_steps: int) -> float:
    """The BitOPs ceiling of one image: `X%bitops` of W16A16 over `full_steps` steps, or an absolute value."""
    if budget.kind == "bitops":
        return budget.value
    if budget.kind == "bitops_percent":
        return inv.total_macs * FLOAT_BITS * FLOAT_BITS * full_steps * budget.value / 100
    raise ValueError(f"{budget} is not a BitOPs budget")


def describe_budget(budget: Budget, inv: Inventory, steps: int, meta: dict[str, Any], pool: int | None = None) -> str:
    """A budget of a search keeping `steps` steps, as understood. A BitOPs budget is of one image (a % of
    W16A16 over the profile's full schedule, or the `pool`-step schedule's without one), and each of the
    `steps` kept denoiser calls gets an equal share, e.g. `6.25%bitops = 6.25% of the W16A16 BitOPs of one
    image at 8 steps = 12,582,912,000 BitOPs per image; 4 kept steps: at most 3,145,728,000 BitOPs per
    denoiser call`. Other budgets as `Budget.describe` says them."""
    timesteps, _, _ = _profile_schedule(meta)
    full_steps = len(timesteps) if timesteps else pool  # as solve_steps counts them
    if budget.resource != "bitops" or not full_steps or steps < 1:
        return budget.describe(inv)
    ceiling = run_bitops(budget, inv, full_steps)
    head = (f"{budget} = {budget.value:g}% of the W16A16 BitOPs of one image at {full_steps} steps = "
            if budget.kind == "bitops_percent" else f"{budget} = ")
    return (f"{head}{ceiling:,.0f} BitOPs per image; {steps} kept steps: at most {ceiling / steps:,.0f} BitOPs "
            "per denoiser call")


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
    if not name:
        return
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is not None:
        kept_scheduler(cls())


def _fitness_metric(meta: dict[str, Any], df) -> str:
    """The profile's content metric (SSIM preferred: continuous, so close candidates differ), else SSIM."""
    from mpsearch.planner import group_metrics

    try:
        return group_metrics(df, meta)["content"]
    except ValueError:
        return "ssim"


def solve_steps(
    profile: Any,
    budget: Budget | str,
    steps: int,
    *,
    solver: str = "evolution",
    model: Any = None,
    pool: int | None = None,
    grouping: str = "uniform",
    fitness_metric: str | None = None,
    fitness_prompts: Sequence[str] | int | None = None,
    fitness_seed: int = 0,
    rerank: int = 10,
    measure_steps: bool = True,
    seed_bits: str = "ilp",
    fmt: str | None = None,
    space: SearchSpace | None = None,
    config: Any = None,
    seed: int = 0,
    backend: str | None = None,
    time_limit: float | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Plan:
    """A plan keeping `steps` of the model's timesteps (in `plan.kept_timesteps`) under `budget`.

    `solver`: "evolution" searches steps and bits (TMPQ-DM); any other registered solver keeps the evenly
    spaced steps and chooses bits. `model`: the pipeline (or what `load_pipeline` reads; default: the
    profile's model) to sample with, needed by the evolution unless `rerank=0` and
    `measure_steps=False`. `pool`: candidate schedule size (default: the profile's). `grouping`:
    uniform | quad. `fitness_metric`: an image metric (default: the profile's content metric, SSIM on the
    demo; adherence and plug-ins work too). `fitness_prompts`: prompts for the real fitness (default: the profile's calibration
    prompts; an int draws that many demo captions). `rerank`: finalists sampled and scored (0 = surrogate
    only). `measure_steps`: sample every kept-step set the search meets (else steps are chosen by the
    re-ranking only). `seed_bits`: the evolution's seed candidate, "ilp" (the ILP's optimal bits for the
    surrogate, which uniform groups make exact; kept-step sets are sampled with them) or "median" (each
    layer's median-cost option, as `solvers.evolution` does; kept-step sets are sampled in FP). `config`: a `solvers.evolution.EvolutionConfig`.
    """
    from mpsearch.planner import BudgetInfeasible, load_profile
    from mpsearch.progress import count_bar
    from solvers.evolution import EvolutionConfig
    from solvers.registry import get_solver

    log = log or (lambda msg: None)
    budget = Budget.parse(budget)
    if seed_bits not in ("ilp", "median"):
        raise ValueError(f"seed_bits must be 'ilp' or 'median', got {seed_bits!r}")
    if grouping not in GROUPINGS:
        raise ValueError(f"step grouping must be one of {GROUPINGS}, got {grouping!r}")
    df, meta, inv = load_profile(profile)
    prof_ts, prof_groups, sched_name = _profile_schedule(meta)
    if space is not None and space.prune and (df["tensor"] == "unit").any():
        raise ValueError("the timestep search does not prune blocks yet: drop --prune, or solve without --steps")
    space = SearchSpace(**{**(space or SearchSpace()).__dict__, "prune": False})
    evolution = solver == "evolution"
    needs_model = evolution and (rerank > 0 or measure_steps)
    pipe = None
    if needs_model or pool is not None:
        pipe = _pipeline(model, meta)
        sched_name = type(pipe.scheduler).__name__
    if pipe is None:
        _check_scheduler_name(sched_name)
    else:
        kept_scheduler(pipe.scheduler)
    if pool is not None:
        pool_ts = schedule(pipe.scheduler, pool)
    elif prof_ts:
        pool_ts = [int(t) for t in prof_ts]
    else:
        raise ValueError("the profile records no sampling timesteps: pass pool= (a number of steps)")
    if not 1 <= steps <= len(pool_ts):
        raise ValueError(f"cannot keep {steps} of the {len(pool_ts)} timesteps of the pool {pool_ts}")
    groups = group_steps(pool_ts, steps, grouping)
    full_steps = len(prof_ts) if prof_ts else len(pool_ts)

    extra: list[Constraint] = []
    ceiling = None
    if budget.resource == "bitops":
        ceiling = run_bitops(budget, inv, full_steps)
        extra.append(Constraint("bitops", upper=ceiling / steps, name="budget"))
    sp = build_problem(inv, df, None if ceiling is not None else budget, fmt=fmt, space=space,
                       extra_constraints=extra, units=meta.get("units"))  # fmt: skip
    if ceiling is not None:
        m = build_units(sp.problem)
        least = float(m.min_cost()[m.names.index("budget")]) * steps  # the cheapest plan's BitOPs per image
        if least > ceiling * (1 + 1e-12):
            ref = inv.total_macs * FLOAT_BITS * FLOAT_BITS * full_steps
            raise BudgetInfeasible(f"budget {budget} is infeasible with {steps} kept steps: the smallest plan needs "
                                   f"{least:,.0f} BitOPs per image ({100 * least / ref:.4g}%bitops of W16A16 at "
                                   f"{full_steps} steps)", least)  # fmt: skip

    fit = None
    info: dict[str, Any] = {"steps": steps, "pool": pool_ts, "grouping": grouping,
                            "step_groups": [pool_ts[a:b] for a, b in groups]}  # fmt: skip
    try:
        if evolution:
            metric = fitness_metric or _fitness_metric(meta, df)
            if needs_model:
                fit = _fitness(pipe, meta, pool_ts, metric, fitness_prompts, fitness_seed, fmt)
                log(f"fitness: {metric} of {len(fit.prompts)} prompts vs FP at {len(pool_ts)} steps")
            cfg = config or EvolutionConfig()
            cfg = EvolutionConfig(**{**cfg.__dict__, "rerank_top": max(1, rerank), "seed": seed})
            start_choice, seed_plan = None, None
            if seed_bits == "ilp":  # the surrogate's optimal bits (exact for uniform groups) as the seed
                ilp = get_solver("ilp")(sp.problem, backend=backend or "cbc", time_limit=time_limit)
                if ilp.status != "infeasible":
                    start_choice, seed_plan = ilp.choice, dict(zip(inv.names, ilp.keys, strict=True))
            n_sets = int(np.prod([b - a for a, b in groups]))
            born = cfg.population + cfg.epochs * (cfg.mutations + cfg.crossovers + cfg.population)
            total = (min(n_sets, born) if fit is not None and measure_steps else 0) + \
                ((cfg.rerank_top + POLISH) if fit is not None and rerank else 0)
            with count_bar(total, progress and total > 0, "timestep search") as advance:
                step_fitness = None
                if fit is not None and measure_steps:
                    def step_fitness(kept):
                        advance(1, "kept-step sets")
                        return fit(seed_plan, [pool_ts[i] for i in kept])

                evaluate = None
                if fit is not None and rerank > 0:
                    def evaluate(solution, kept):
                        advance(1, "re-ranking finalists")
                        return fit(dict(zip(inv.names, solution.keys, strict=True)), [pool_ts[i] for i in kept])

                problem = StepProblem(sp.problem, step_losses_for_groups(sp, groups, pool_ts, prof_ts, prof_groups),
                                      groups)  # fmt: skip
                try:
                    solution = get_solver("evolution")(problem, config=cfg, evaluate=evaluate, start=start_choice,
                                                       step_fitness=step_fitness)  # fmt: skip
                except ValueError as e:
                    raise BudgetInfeasible(f"budget {budget}: {e}", None) from None
                kept = tuple(solution.info["kept_steps"])
                measured = solution.info.get("step_sets_measured") or {}
                if evaluate is not None and measured:
                    # bits and kept steps are separable here (same bits at every kept step): the winner's bits
                    # are also sampled at the best-measured step sets that the search's operators missed
                    scores = list(solution.info["evaluations"])
                    best = min(scores)
                    finalist_log = fit.log[len(fit.log) - len(scores):]
                    others = [ts for ts, _ in sorted(measured.items(), key=lambda kv: kv[1]) if ts != kept][:POLISH]
                    for ts in others:
                        advance(1, "best step sets with the winner's bits")
                        f = fit(dict(zip(inv.names, solution.keys, strict=True)), [pool_ts[i] for i in ts])
                        finalist_log.append(fit.log[-1])
                        scores.append(f)
                        if f < best:
                            kept, best = tuple(ts), f
            if measured:
                info["step_sets"] = {"measured": len(measured), "of": n_sets, "bits": "ilp" if seed_plan else "fp",
                                     "best": [{"timesteps": [pool_ts[i] for i in ts], "fitness": float(f"{v:.6g}")}
                                              for ts, v in sorted(measured.items(), key=lambda kv: kv[1])[:10]]}
            if evaluate is not None:
                if not measured:
                    scores = solution.info["evaluations"]
                    finalist_log = fit.log[len(fit.log) - len(scores):]
                info["fitness"] = {"metric": metric, "prompts": len(fit.prompts),
                                   **_rounded(finalist_log[int(np.argmin(scores))]),
                                   "finalists": [_rounded(r) for r in finalist_log]}  # fmt: skip
        else:
            kept = even_steps(groups)
            fn = get_solver(solver)
            kwargs: dict[str, Any] = {}
            if solver == "ilp":
                kwargs.update(backend=backend or "cbc", time_limit=time_limit)
            try:
                solution = fn(sp.problem, **kwargs)
            except InfeasibleBudget as e:
                raise BudgetInfeasible(str(e), e.smallest_feasible) from None
            if solution.status == "infeasible":
                raise BudgetInfeasible(f"budget {budget} cannot be met with {steps} kept steps", None)
    finally:
        if fit is not None:
            fit.close()

    name = {"name": solver, "profile": str(profile) if isinstance(profile, (str, Path)) else meta.get("name", "")}
    plan = solution_to_plan(solution, inv, fmt=fmt, budget=budget, extra={**name, **info}, units=meta.get("units"))
    plan.kept_timesteps = [pool_ts[i] for i in kept]
    plan.predict(inv)
    if ceiling is not None:
        assert plan.predicted["bitops_run"] <= ceiling * (1 + 1e-9), "solver broke the BitOPs budget"
    return plan


def _rounded(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in rec.items()}


def _pipeline(model: Any, meta: dict[str, Any]):
    from mpsearch.model import load_pipeline

    if hasattr(model, "components"):
        return model
    name = model if model is not None else meta.get("model")
    pipe = load_pipeline(None if name in (None, "", "demo") else name)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _fitness(pipe, meta: dict[str, Any], pool: list[int], metric: str, prompts, seed: int, fmt: str | None):
    """A `Fitness` on `pipe` set up like the profile: its candidates, quantizer settings and calibration."""
    from mpsearch import calibration as cal
    from mpsearch.exporter import weight_config
    from mpsearch.fitness import Fitness
    from mpsearch.model import find_denoiser, weights_fingerprint
    from mpsearch.quant import ActQuantConfig, Candidates

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
        if meta.get("model") not in (None, "", "demo"):
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


__all__ += ["TimestepError"]
