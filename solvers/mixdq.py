"""MixDQ's bit allocation (Zhao et al., ECCV 2024), as its published code does it.

The code is `mixed_precision_scripts/` of A-suozhang/MixDQ: `optimize/integer_programming.py` (the group
ILPs), `integer_program.sh` (the sweeps) and `quant_inference_mp.py` (the final pick).

Weights. Layers fall in two groups, quality (scored by SQNR of the denoiser output) and content (SSIM of
the images). Per group g an independent ILP over b_i ∈ {4, 8} (quality) or {2, 4, 8} (content), no fp16:

    maximise  Σ_i m_g[i, b_i]                              (SQNR in dB, or SSIM)
    s.t.      (B_g − 0.02)·Σ_i w_i ≤ Σ_i b_i·w_i ≤ (B_g + 0.02)·Σ_i w_i      (w_i: the layer's size)

A `Problem` holds degradations (SQNR → noise power 10^(−dB/10), SSIM → 1 − SSIM), so for a dB metric
(`db_metrics`) we minimise C − dB (dB = −10·log10 degradation; C the group's largest dB, which keeps the
argmax and the losses ≥ 0) and for the others the degradation itself (1 − SSIM is affine in SSIM).
The groups share the total through k = B_content / B_quality: with r = Σw(content) / Σw(quality) over all
layers, B_q = B(1 + r)/(1 + k·r) and B_c = k·B_q keep the overall mean at B. The sweep is
B ∈ linspace(T − 0.3, T, 10) × k ∈ linspace(0.46, 1.36, 10); a cell whose B_q ∉ [4, 8] or B_c ∉ [2, 8] is
skipped, and so is one whose group ILP is infeasible.

The pick. MixDQ renders one image per plan of the sweep and keeps the plan whose image is closest to the FP
image (pixel MSE): `pick=` is that score (a callback `Solution -> float`, lower is better; the planner
builds it from a model). Without images we cannot do that. The fallback (ours, not MixDQ's) looks at the
cells at the largest swept B that has a plan (the target itself whenever it can be met) and keeps the plan
with the lowest predicted output noise: the quality metric's degradation (SQNR noise power relative to the
denoiser output) summed over every layer measured on it, the additive model's stand-in for a pixel MSE.
`fallback="loss"` keeps the lowest predicted loss (the problem's normalised objective) instead; on MixDQ's
SDXL-turbo logs that one always takes the largest k and agrees with their published picks far less
(benchmarks/results/mixdq_agreement.md). `MixDQResult.pick` and the solution's
`info["record"]["mixdq"]["pick"]` say which was used.

Activations, after the weight plan is fixed, when the problem offers activation options (keys `(w, a)`)
and `act_target` is set (MixDQ: 7.7). The ceil(1%) of each group's layers with the worst metric at 8-bit
activations keep fp16 activations and leave the ILP (MixDQ's hard-coded lists are exactly these: 4 of
374 quality layers, 5 of 420 content layers of SDXL-turbo). The others get a ∈ {4, 8} from the same
group ILPs on activation sizes (the cost `act_resource` = input elements × a bits), with
B ∈ linspace(T_a − 0.3, T_a, 10) × k ∈ linspace(0.94, 1.09, 20), the same skip rule and band; r counts
every layer's activation size, the band only those in the ILP. The act plan is picked like the weights'
(images with the weight plan fixed, else the fallback). An activation's own degradation is the option's
loss minus that of the same weight bits with fp16 activations (the problem adds the two).

Our improvements are explicit options, off by default: `objective="degradation"` (sum the noise power, not
dB), `candidates=None` / `act_candidates=None` (every width the problem offers, fp16 included) and
`group_ranges=None` / `act_group_ranges=None` (each group's candidate range).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .ilp import solve_ilp
from .problem import Constraint, Problem, Solution
from .registry import register_solver

__all__ = ["ACT_GRID", "BAND", "MixDQOptions", "MixDQPlan", "MixDQResult", "WEIGHT_GRID", "mixdq_act_search",
           "mixdq_search", "solve_mixdq"]

# MixDQ's sweeps: weights k ∈ linspace(0.46, 1.36, 10), activations k ∈ linspace(0.94, 1.09, 20);
# B ∈ linspace(T − 0.3, T, 10) for both.
WEIGHT_GRID = {"k": tuple(np.linspace(0.46, 1.36, 10)), "b_span": 0.3, "b_points": 10}
ACT_GRID = {"k": tuple(np.linspace(0.94, 1.09, 20)), "b_span": 0.3, "b_points": 10}
BAND = 0.02
WEIGHT_CANDIDATES = (("quality", (4, 8)), ("content", (2, 4, 8)))
ACT_CANDIDATES = (("quality", (4, 8)), ("content", (4, 8)))
GROUP_RANGES = (("quality", (4.0, 8.0)), ("content", (2.0, 8.0)))  # both stages' skip rule
ACT_TARGET = 7.7
KEEP_FP = 0.01  # share of each group's layers whose activations stay fp16
OBJECTIVES = ("value", "degradation")
FALLBACKS = ("noise", "loss")  # the pick without images (module docstring)
FULL = 16  # bits of an unquantized tensor


def weight_bits(key: Hashable) -> float:
    """Weight bits of an option key: the key itself if a number, else its first element ((w, a) → w)."""
    return float(key[0] if isinstance(key, tuple) else key)


def act_bits(key: Hashable) -> float | None:
    """Activation bits of an option key `(w, a)`; None for a weight-only key."""
    return float(key[1]) if isinstance(key, tuple) and len(key) > 1 else None


@dataclass(frozen=True)
class MixDQPlan:
    """One cell of a sweep: overall mean bits B, k = B_content / B_quality, the group targets, its plan and
    its pick score (lower is better: pixel MSE with images, else the predicted loss)."""

    target: float
    k: float
    group_targets: Mapping[str, float]
    solution: Solution
    score: float = float("nan")


@dataclass(frozen=True)
class MixDQResult:
    """The pick (`best`), the weight sweep's plans and skipped cells `(B, k, why)`, how the pick was made,
    and the same for the activation stage (empty when it did not run) with the layers kept at fp16. From
    `mixdq_act_search`, `plans` and `skipped` are the activation sweep's."""

    best: Solution
    plans: tuple[MixDQPlan, ...]
    skipped: tuple[tuple[float, float, str], ...] = ()
    pick: str = ""
    act_plans: tuple[MixDQPlan, ...] = ()
    act_skipped: tuple[tuple[float, float, str], ...] = ()
    kept_fp16: tuple[Hashable, ...] = ()


@dataclass(frozen=True)
class _Stage:
    """What MixDQ's weight and activation stages do differently."""

    tensor: str  # "weight" | "act"
    resource: str  # the cost that is size × bits
    target: float
    candidates: dict[str, tuple[int, ...]] | None
    ranges: dict[str, tuple[float, float]] | None
    k_grid: Sequence[float]
    b_span: float
    b_points: int

    def bits(self, key: Hashable) -> float | None:
        return weight_bits(key) if self.tensor == "weight" else act_bits(key)


@dataclass
class _Run:
    """One search's shared state: the problem, the group of each item, the metric of each group."""

    problem: Problem
    metric: dict[str, str]  # group → metric
    members: dict[str, list[int]]  # group → all its items (fixed ones included)
    objective: str
    db_metrics: tuple[str, ...]
    band: float
    backend: str
    fallback: str = "noise"
    ilp_options: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, str]:
        q, c = list(self.metric)
        return q, c

    def label(self, i: int) -> Hashable:
        return self.problem.names[i] if self.problem.names is not None else i


def _offered(run: _Run, stage: _Stage, i: int, group: str, base: np.ndarray) -> list[int]:
    """Option indices item i may take in `stage`: weights with fp16 activations, or activations with the
    weight bits of `base`; among the stage's candidates for the item's group when they are given."""
    keys = run.problem.keys[i]
    cands = None if stage.candidates is None else stage.candidates.get(group)
    if stage.tensor == "weight":
        ok = [k for k, key in enumerate(keys) if (act_bits(key) or FULL) >= FULL]
    else:
        w = weight_bits(keys[base[i]])
        ok = [k for k, key in enumerate(keys) if weight_bits(key) == w and act_bits(key) is not None]
    ok = [k for k in ok if cands is None or stage.bits(keys[k]) in cands]
    if not ok:
        what = "weight bits" if stage.tensor == "weight" else f"activation bits at W{weight_bits(keys[base[i]]):g}"
        raise ValueError(f"layer {run.label(i)!r} offers none of MixDQ's {what} {list(cands or [])} "
                         f"(its options: {list(keys)}); profile them, or pass candidates=None")
    return ok


def _own_loss(run: _Run, stage: _Stage, i: int, ok: list[int], base: np.ndarray, metric: str) -> np.ndarray:
    """Degradation of item i's options `ok` caused by this stage's tensor alone."""
    loss = run.problem.losses[metric][i, ok]
    if stage.tensor == "act":  # the problem adds weight and activation losses: take the weight's off
        keys = run.problem.keys[i]
        w = weight_bits(keys[base[i]])
        fp = [k for k, key in enumerate(keys) if weight_bits(key) == w and (act_bits(key) or 0) >= FULL]
        if not fp:
            raise ValueError(f"layer {run.label(i)!r} has no W{w:g}A16 option: the activation loss alone is unknown")
        loss = np.maximum(loss - run.problem.losses[metric][i, fp[0]], 0.0)
    return loss


def _objective(run: _Run, metric: str, losses: list[np.ndarray], items: list[int]) -> list[np.ndarray]:
    """The per-option losses a group ILP minimises: C − dB for a dB metric under MixDQ's objective, else
    the degradation."""
    if run.objective == "degradation" or metric not in run.db_metrics:
        return losses
    for i, v in zip(items, losses, strict=True):
        if (v <= 0).any():
            raise ValueError(f"layer {run.label(i)!r} has an option with {metric} degradation 0 (infinite dB): "
                             "MixDQ's dB objective cannot rank it; pass objective='degradation'")
    db = [-10.0 * np.log10(v) for v in losses]
    top = max(float(d.max()) for d in db)
    return [top - d for d in db]


def _sizes(problem: Problem, stage: _Stage) -> np.ndarray:
    """w_i from cost = w_i · bits(key), read off the first option with non-zero bits."""
    cost = problem.costs[stage.resource]
    w = np.zeros(problem.n_items)
    for i, keys in enumerate(problem.keys):
        for k, key in enumerate(keys):
            b = stage.bits(key)
            if b:
                w[i] = cost[i, k] / b
                break
    return w


def _group_problems(run: _Run, stage: _Stage, free: dict[str, list[int]],
                    base: np.ndarray) -> dict[str, tuple[Problem, list[list[int]]]]:  # fmt: skip
    """Per group with free items: its ILP without the band, and each item's option indices in the problem."""
    out = {}
    for g, items in free.items():
        if not items:
            continue
        metric = run.metric[g]
        ok = [_offered(run, stage, i, g, base) for i in items]
        losses = _objective(run, metric, [_own_loss(run, stage, i, o, base, metric) for i, o in zip(items, ok, strict=True)],
                            items)  # fmt: skip
        cost = run.problem.costs[stage.resource]
        sub = Problem(keys=[[run.problem.keys[i][k] for k in o] for i, o in zip(items, ok, strict=True)],
                      costs={stage.resource: [cost[i, o] for i, o in zip(items, ok, strict=True)]},
                      losses={metric: losses}, scales={metric: 1.0})  # fmt: skip
        out[g] = (sub, ok)
    return out


def _ranges(run: _Run, stage: _Stage, free: dict[str, list[int]], base: np.ndarray) -> dict[str, tuple[float, float]]:
    """Allowed group targets: the stage's, else each group's candidate bits from least to most."""
    ranges = dict(stage.ranges or {})
    for g, items in free.items():
        if g not in ranges:
            b = [stage.bits(run.problem.keys[i][k]) for i in items for k in _offered(run, stage, i, g, base)]
            ranges[g] = (min(b), max(b)) if b else (-math.inf, math.inf)
    return ranges


def _sweep(run: _Run, stage: _Stage, base: np.ndarray, free: dict[str, list[int]]) -> tuple[list[MixDQPlan], list]:
    """Every (B, k) cell of one stage: its plan (items outside `free` keep `base`) or why it was skipped."""
    w = _sizes(run.problem, stage)
    q, c = run.names
    r = w[run.members[c]].sum() / w[run.members[q]].sum()
    band_w = {g: float(w[items].sum()) for g, items in free.items()}
    subs = _group_problems(run, stage, free, base)
    ranges = _ranges(run, stage, free, base)
    plans, skipped = [], []
    for B in np.linspace(stage.target - stage.b_span, stage.target, stage.b_points):
        for k in stage.k_grid:
            bq = B * (1 + r) / (1 + k * r)
            targets = {q: float(bq), c: float(k * bq)}
            bad = [g for g, t in targets.items() if not ranges[g][0] <= t <= ranges[g][1]]
            if bad:
                skipped.append((float(B), float(k), f"target of {bad[0]} outside {ranges[bad[0]]}"))
                continue
            choice, why = base.copy(), ""
            for g, (sub, ok) in subs.items():
                t, W = targets[g], band_w[g]
                band = Constraint(stage.resource, upper=(t + run.band) * W, lower=(t - run.band) * W,
                                  name=f"{g}_mean_bits")  # fmt: skip
                sol = solve_ilp(sub.with_constraints([band]), backend=run.backend, diagnose=False, **run.ilp_options)
                if not sol.feasible:
                    why = f"{g} ILP infeasible at {t:.3f} ± {run.band} bits"
                    break
                choice[free[g]] = [o[j] for o, j in zip(ok, sol.choice, strict=True)]
            if why:
                skipped.append((float(B), float(k), why))
                continue
            sol = run.problem.evaluate(choice, status="feasible", backend=f"mixdq/{run.backend}",
                                       info={"target": float(B), "k": float(k), "group_targets": targets})
            plans.append(MixDQPlan(float(B), float(k), targets, sol))
    if not plans:
        what = "weight" if stage.tensor == "weight" else "activation"
        raise ValueError(f"no (B, k) cell of MixDQ's {what} sweep is feasible for {stage.target:g} mean {what} bits "
                         f"({skipped[0][2] if skipped else 'no cell'}){_reach(stage, r, ranges, q, c)}")
    return plans, skipped


def _reach(stage: _Stage, r: float, ranges: dict[str, tuple[float, float]], q: str, c: str) -> str:
    """The mean bits the group ranges let the k grid reach, for an error message."""
    spans = []
    for k in stage.k_grid:
        lo, hi = max(ranges[q][0], ranges[c][0] / k), min(ranges[q][1], ranges[c][1] / k)
        if lo <= hi:
            spans += [x * (1 + k * r) / (1 + r) for x in (lo, hi)]
    if not spans:
        return ""
    lo, hi = math.ceil(min(spans) * 1000) / 1000, math.floor(max(spans) * 1000) / 1000  # inside, after rounding
    return f"; with this k grid its group ranges reach targets from about {lo:g} to {hi:g} mean bits"


def _output_noise(run: _Run, solution: Solution) -> float:
    """Σ over every item of the quality metric's degradation (SQNR: noise power relative to the denoiser
    output) at its chosen option: the additive model's stand-in for a pixel MSE against FP."""
    loss = run.problem.losses[run.metric[run.names[0]]]
    return float(np.nansum(loss[np.arange(run.problem.n_items), solution.choice]))


def _pick(run: _Run, plans: list[MixDQPlan], pick: Callable[[Solution], float] | None,
          what: str) -> tuple[list[MixDQPlan], MixDQPlan, str]:  # fmt: skip
    """Score the plans and choose: by `pick` (MixDQ: image MSE vs FP), else the fallback (module docstring)."""
    if pick is not None:
        scored = [MixDQPlan(p.target, p.k, p.group_targets, p.solution, float(pick(p.solution))) for p in plans]
        return scored, min(scored, key=lambda p: p.score), "images (pixel MSE vs FP)"
    if run.fallback == "loss":
        score, label = (lambda s: s.objective), "lowest predicted loss"
    else:
        score, label = (lambda s: _output_noise(run, s)), f"lowest predicted output noise ({run.metric[run.names[0]]})"
    scored = [MixDQPlan(p.target, p.k, p.group_targets, p.solution, score(p.solution)) for p in plans]
    top = max(p.target for p in scored)
    at_top = [p for p in scored if math.isclose(p.target, top, rel_tol=0, abs_tol=1e-9)]
    best = min(at_top, key=lambda p: (p.score, p.solution.objective))
    return scored, best, f"no images: {label} at B = {top:.4g} {what}"


def _record(plan: MixDQPlan, plans: list, skipped: list, how: str) -> dict[str, Any]:
    return {"pick": how, "target": round(plan.target, 6), "k": round(plan.k, 6), "cells": len(plans),
            "skipped": len(skipped), "group_targets": {g: round(t, 6) for g, t in plan.group_targets.items()}}


def _keep_fp16(run: _Run, stage: _Stage, base: np.ndarray, free: dict[str, list[int]],
               share: float) -> list[int]:  # fmt: skip
    """The ceil(share) of each group's layers with the worst activation loss at the group's widest candidate
    below 16 bits (MixDQ: 8): they keep fp16 activations."""
    kept = []
    for g, items in free.items():
        n = math.ceil(round(share * len(run.members[g]), 9))
        if not n or not items:
            continue
        worst = []
        for i in items:
            keys = run.problem.keys[i]
            ok = [k for k in _offered(run, stage, i, g, base) if (act_bits(keys[k]) or FULL) < FULL]
            top = max(ok, key=lambda k: act_bits(keys[k]))
            worst.append(float(_own_loss(run, stage, i, [top], base, run.metric[g])[0]))
        kept += [items[j] for j in np.argsort(-np.asarray(worst), kind="stable")[:n]]
    return kept


def _offers_acts(problem: Problem) -> bool:
    return any((act_bits(key) or FULL) < FULL for i, keys in enumerate(problem.keys) if i not in problem.fixed
               for key in keys)  # fmt: skip


def mixdq_search(
    problem: Problem,
    target: float,
    *,
    group_metric: Mapping[str, str] | Sequence[tuple[str, str]] = (("quality", "sqnr"), ("content", "ssim")),
    objective: str = "value",
    db_metrics: Sequence[str] = ("sqnr",),
    candidates: Mapping[str, Sequence[int]] | Sequence | None = WEIGHT_CANDIDATES,
    group_ranges: Mapping[str, tuple[float, float]] | Sequence | None = GROUP_RANGES,
    resource: str = "wbits",
    k_grid: Sequence[float] = WEIGHT_GRID["k"],
    b_span: float = WEIGHT_GRID["b_span"],
    b_points: int = WEIGHT_GRID["b_points"],
    band: float = BAND,
    act_target: float | None = ACT_TARGET,
    act_resource: str = "abits",
    act_candidates: Mapping[str, Sequence[int]] | Sequence | None = ACT_CANDIDATES,
    act_group_ranges: Mapping[str, tuple[float, float]] | Sequence | None = GROUP_RANGES,
    act_k_grid: Sequence[float] = ACT_GRID["k"],
    act_b_span: float = ACT_GRID["b_span"],
    act_b_points: int = ACT_GRID["b_points"],
    act_keep_fp: float = KEEP_FP,
    pick: Callable[[Solution], float] | None = None,
    fallback: str = "noise",
    backend: str = "scip",
    **ilp_options: Any,
) -> MixDQResult:
    """Run MixDQ's procedure on `problem` (whose `groups` label items "quality" / "content") for `target`
    mean weight bits: the weight sweep and pick, then, when the problem offers activation options and
    `act_target` is set, `mixdq_act_search` with those weights (see the module docstring).

    objective: "value" (MixDQ: summed dB / SSIM) or "degradation" (summed noise power / 1 − SSIM).
    candidates / act_candidates: bits per group (None: every width offered, fp16 included).
    group_ranges / act_group_ranges: allowed group targets (None: each group's candidate range).
    resource / act_resource: the costs that equal size × bits (weight params × w, input elements × a).
    pick: `Solution -> float`, lower is better (MixDQ: pixel MSE of its image vs FP); None: the `fallback`,
    "noise" (lowest predicted output noise) or "loss" (lowest predicted loss), at the largest swept B.
    Items outside the two groups must be fixed (protected layers); fixed items keep their key.
    """
    t0 = time.perf_counter()
    run = _checked_run(problem, group_metric, objective, db_metrics, band, backend, fallback, ilp_options)
    weights = _Stage("weight", resource, target, _as_dict(candidates), _as_dict(group_ranges), k_grid, b_span, b_points)
    base = np.zeros(problem.n_items, np.int64)
    for i, key in problem.fixed.items():
        base[i] = problem.option_index(i, key)
    free = {g: [i for i in items if i not in problem.fixed] for g, items in run.members.items()}
    plans, skipped = _sweep(run, weights, base, free)
    plans, best, how = _pick(run, plans, pick, "(weights)")
    record = _record(best, plans, skipped, how)
    acts = MixDQResult(best.solution, ())
    if act_target is not None and _offers_acts(problem):
        acts = mixdq_act_search(problem, best.solution.choice, act_target, group_metric=group_metric,
                                objective=objective, db_metrics=db_metrics, candidates=act_candidates,
                                group_ranges=act_group_ranges, resource=act_resource, k_grid=act_k_grid,
                                b_span=act_b_span, b_points=act_b_points, band=band, keep_fp=act_keep_fp, pick=pick,
                                fallback=fallback, backend=backend, **ilp_options)  # fmt: skip
        record["act"] = acts.best.info["record"]["mixdq"]
    info = dict(best.solution.info) | {"plans": len(plans), "skipped": len(skipped), "record": {"mixdq": record}}
    best_sol = problem.evaluate(acts.best.choice, status="feasible", backend=f"mixdq/{backend}",
                                time_s=time.perf_counter() - t0, info=info)
    return MixDQResult(best_sol, tuple(plans), tuple(skipped), how, acts.plans, acts.skipped, acts.kept_fp16)


def mixdq_act_search(
    problem: Problem,
    weights: Sequence[int],
    target: float = ACT_TARGET,
    *,
    group_metric: Mapping[str, str] | Sequence[tuple[str, str]] = (("quality", "sqnr"), ("content", "ssim")),
    objective: str = "value",
    db_metrics: Sequence[str] = ("sqnr",),
    candidates: Mapping[str, Sequence[int]] | Sequence | None = ACT_CANDIDATES,
    group_ranges: Mapping[str, tuple[float, float]] | Sequence | None = GROUP_RANGES,
    resource: str = "abits",
    k_grid: Sequence[float] = ACT_GRID["k"],
    b_span: float = ACT_GRID["b_span"],
    b_points: int = ACT_GRID["b_points"],
    band: float = BAND,
    keep_fp: float = KEEP_FP,
    pick: Callable[[Solution], float] | None = None,
    fallback: str = "noise",
    backend: str = "scip",
    **ilp_options: Any,
) -> MixDQResult:
    """MixDQ's activation stage alone: `weights` (an option index per item) fixes each item's weight bits;
    the ceil(`keep_fp`) most sensitive activations of each group stay fp16 and the rest are allocated by the
    sweep around `target` mean activation bits (module docstring). `result.plans` are the activation plans."""
    t0 = time.perf_counter()
    run = _checked_run(problem, group_metric, objective, db_metrics, band, backend, fallback, ilp_options)
    if resource not in problem.costs:
        raise ValueError(f"MixDQ's activation stage needs activation sizes (cost {resource!r}), which the problem "
                         "lacks; pass act_target=None to allocate weights only")
    stage = _Stage("act", resource, target, _as_dict(candidates), _as_dict(group_ranges), k_grid, b_span, b_points)
    base = np.asarray(weights, dtype=np.int64).copy()
    free = {g: [i for i in items if i not in problem.fixed] for g, items in run.members.items()}
    kept = _keep_fp16(run, stage, base, free, keep_fp)
    for i in kept:
        w = weight_bits(problem.keys[i][base[i]])
        base[i] = next(k for k, key in enumerate(problem.keys[i]) if weight_bits(key) == w and (act_bits(key) or 0) >= FULL)
    free = {g: [i for i in items if i not in kept] for g, items in free.items()}
    plans, skipped = _sweep(run, stage, base, free)
    plans, best, how = _pick(run, plans, pick, "(activations)")
    record = _record(best, plans, skipped, how) | {"fp16": [run.label(i) for i in kept]}
    info = dict(best.solution.info) | {"plans": len(plans), "skipped": len(skipped), "record": {"mixdq": record}}
    sol = problem.evaluate(best.solution.choice, status="feasible", backend=f"mixdq/{backend}",
                           time_s=time.perf_counter() - t0, info=info)
    return MixDQResult(sol, tuple(plans), tuple(skipped), how, kept_fp16=tuple(run.label(i) for i in kept))


def _as_dict(value: Any) -> dict | None:
    return None if value is None else {g: tuple(v) for g, v in dict(value).items()}


def _checked_run(problem: Problem, group_metric: Any, objective: str, db_metrics: Sequence[str], band: float,
                 backend: str, fallback: str, ilp_options: dict[str, Any]) -> _Run:  # fmt: skip
    """The search's state, after checking the problem has MixDQ's two groups and their metrics."""
    group_metric = dict(group_metric)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if problem.groups is None:
        raise ValueError("MixDQ needs problem.groups (a 'quality'/'content' label per item)")
    if len(group_metric) != 2:
        raise ValueError(f"MixDQ pairs two groups with metrics, got {group_metric}")
    members = {g: [i for i, lab in enumerate(problem.groups) if lab == g] for g in group_metric}
    for g, m in group_metric.items():
        if m not in problem.losses:
            raise ValueError(f"group {g!r} uses metric {m!r}, which the problem lacks")
        if not members[g]:
            raise ValueError(f"no item is in group {g!r}")
    outside = [i for i, lab in enumerate(problem.groups) if lab not in group_metric and i not in problem.fixed]
    if outside:
        raise ValueError(f"items {outside[:5]} are in no MixDQ group and not fixed")
    return _Run(problem, group_metric, members, objective, tuple(db_metrics), band, backend, fallback,
                dict(ilp_options))


@dataclass(frozen=True)
class MixDQOptions:
    """The options of `mixdq_search` (see there); the target mean weight bits come from the budget."""

    group_metric: Mapping[str, str] | Sequence[tuple[str, str]] = (("quality", "sqnr"), ("content", "ssim"))
    objective: str = "value"
    db_metrics: Sequence[str] = ("sqnr",)
    candidates: Mapping[str, Sequence[int]] | Sequence | None = WEIGHT_CANDIDATES
    group_ranges: Mapping[str, tuple[float, float]] | Sequence | None = GROUP_RANGES
    resource: str = "wbits"
    k_grid: Sequence[float] = WEIGHT_GRID["k"]
    b_span: float = WEIGHT_GRID["b_span"]
    b_points: int = WEIGHT_GRID["b_points"]
    band: float = BAND
    act_target: float | None = ACT_TARGET
    act_resource: str = "abits"
    act_candidates: Mapping[str, Sequence[int]] | Sequence | None = ACT_CANDIDATES
    act_group_ranges: Mapping[str, tuple[float, float]] | Sequence | None = GROUP_RANGES
    act_k_grid: Sequence[float] = ACT_GRID["k"]
    act_b_span: float = ACT_GRID["b_span"]
    act_b_points: int = ACT_GRID["b_points"]
    act_keep_fp: float = KEEP_FP
    pick: Callable[[Solution], float] | None = None
    fallback: str = "noise"
    backend: str = "scip"  # ~200 small group ILPs per sweep: in-process SCIP, as MixDQ does


# MixDQ allocates with the band ±0.02 bits around the target itself, not under a ceiling; its activation
# stage reads activation sizes ("abits"); its final pick renders images when the planner has a model
@register_solver("mixdq", budget="target", budget_kinds=("bits",), weight_only=False, prunes=False,
                 options=MixDQOptions, label="MixDQ's procedure", act_cost="abits", image_pick=True)
def solve_mixdq(problem: Problem, *, target: float, **options: Any) -> Solution:
    """MixDQ's pick as a `Solution` (see `mixdq_search` for options and the families of plans)."""
    return mixdq_search(problem, target, **options).best
