"""Re-ranking the ILP's plan by measurement, when a model is at hand (`solve(..., model=M)`, `--model M`).

The ILP minimises the additive predicted loss (the sum of one-layer-at-a-time degradations). At low bits
that sum stops predicting the real damage: on the demo at ~2.5 mean bits the ILP's optimum was measured
worse than MixDQ's plan although its predicted loss is lower. So, as MixDQ and TMPQ-DM do, the planner
measures candidates: `solvers.candidates.distinct_plans` gives K distinct plans under the same budget
(a hard ceiling for every one), each is sampled with the profile's settings (its candidates, quantizers,
calibration, schedule, seeds; `mpsearch.planning.fitness`) on the fitness prompts and scored against the
FP images with the fitness metric (default: the profile's content metric), and the best measured plan is
kept. The plan records every candidate's predicted loss beside its measured score, so a user sees when the
additive model is off, and the cost: images rendered and seconds.

Without a model (`solve --profile` alone) nothing here runs; `rerank=0` turns it off.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mpsearch.planning.inputs import group_metrics
from mpsearch.planning.steps import profile_fitness, profile_timesteps, sampling_pipeline
from solvers.candidates import Candidate, distinct_plans
from solvers.problem import Problem, Solution

__all__ = ["fitness_metric", "measure_candidates", "rerank"]


def fitness_metric(meta: dict[str, Any], df: pd.DataFrame, metric: str | None = None) -> str:
    """`metric`, else the profile's content metric (SSIM preferred: continuous), else SSIM."""
    if metric:
        return metric
    try:
        return group_metrics(df, meta)["content"]
    except ValueError:
        return "ssim"


def measure_candidates(candidates: Sequence[Candidate], names: Sequence[str], model: Any, meta: dict[str, Any],
                       *, metric: str, prompts: Sequence[str] | int | None = None, seed: int = 0,
                       fmt: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Sample every candidate plan with the profile's settings and score it against the FP images.

    Returns (one `Fitness.score` record per candidate: value, degradation, pixel_mse, fitness (lower is
    better)), and the cost: {"renders": image sets sampled, FP reference included, "images": images,
    "prompts", "seconds"}."""
    t0 = time.perf_counter()
    pipe = sampling_pipeline(model, meta)
    try:
        timesteps = profile_timesteps(pipe, meta)
    except ValueError as e:
        raise ValueError(f"{e}: cannot sample the candidate plans as it did (--rerank 0 / rerank=0: the ILP's "
                         "optimum without sampling)") from None
    fit = profile_fitness(pipe, meta, timesteps, metric, prompts, seed, fmt)
    try:
        records = [fit.score(dict(zip(names, c.solution.keys, strict=True)), timesteps) for c in candidates]
    finally:
        fit.close()
    renders = len(records) + 1  # the FP reference too
    cost = {"renders": renders, "images": renders * len(fit.prompts), "prompts": len(fit.prompts),
            "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    return records, cost


def _row(c: Candidate, rec: dict[str, Any], metric: str) -> dict[str, Any]:
    """A candidate as the plan records it: how it was found, predicted loss, bytes, measured score."""
    s = c.solution
    return {"how": c.how, "predicted_loss": float(f"{s.objective:.6g}"),
            "budget_total": float(f"{s.constraint_totals.get('budget', float('nan')):.6g}"),
            f"measured_{metric}": float(f"{rec['value']:.6g}"), "pixel_mse": float(f"{rec['pixel_mse']:.6g}"),
            "fitness": float(f"{rec['fitness']:.6g}")}  # fmt: skip


def rerank(problem: Problem, k: int, names: Sequence[str], model: Any, meta: dict[str, Any], df: pd.DataFrame, *,
           metric: str | None = None, prompts: Sequence[str] | int | None = None, seed: int = 0,
           fmt: str | None = None, **ilp_options: Any) -> tuple[Solution, dict[str, Any]]:  # fmt: skip
    """The best measured of `k` distinct ILP plans of `problem` (see the module docstring).

    Returns (the chosen solution, the record the plan keeps under "rerank": metric, candidates with
    predicted loss and measured score, chosen index, whether it is the ILP's optimum, cost).
    A problem with no feasible plan returns the ILP's infeasible solution and an empty record."""
    t0 = time.perf_counter()
    candidates = distinct_plans(problem, k, **ilp_options)
    if not candidates:
        from solvers.ilp import solve_ilp

        return solve_ilp(problem, **ilp_options), {}
    solve_s = time.perf_counter() - t0
    metric = fitness_metric(meta, df, metric)
    records, cost = measure_candidates(candidates, names, model, meta, metric=metric, prompts=prompts, seed=seed,
                                       fmt=fmt)  # fmt: skip
    best = int(np.argmin([r["fitness"] for r in records]))
    predicted = [c.solution.objective for c in candidates]
    record = {"metric": metric, "k": k, "chosen": best, "chosen_how": candidates[best].how,
              "ilp_optimum_kept": best == 0, "predicted_best": int(np.argmin(predicted)),
              "candidates": [_row(c, r, metric) for c, r in zip(candidates, records, strict=True)],
              "cost": {**cost, "solve_seconds": round(solve_s, 2)}}  # fmt: skip
    return candidates[best].solution, record
