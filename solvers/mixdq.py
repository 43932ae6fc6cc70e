"""MixDQ's bit allocation (Zhao et al., ECCV 2024, §1.5 of reference/methods.md), reproduced faithfully.

Per group g (quality layers scored by SQNR, content layers by SSIM) an independent ILP

    minimise  Σ_i loss_g[i, b_i]                    (raw, un-normalised metric of that group only)
    s.t.      (B_g − 0.02)·Σ_i w_i ≤ Σ_i b_i·w_i ≤ (B_g + 0.02)·Σ_i w_i      (size-weighted mean bits)

MixDQ maximises the summed metric (SQNR in dB, SSIM); minimising the summed drop `m_fp − m` is the same
argmax, so pass the per-layer dB (or SSIM) drop as the group's loss to reproduce MixDQ exactly.
The two groups share the total through the ratio k = B_content / B_quality: with r = Σw(content)/Σw(quality),
B_quality = B(1+r)/(1+k·r) and B_content = k·B_quality keep the overall mean at B. The sweep over
(B, k) gives a family of plans; pairs whose group targets fall outside the group's bit range, or whose
ILPs are infeasible, are skipped. The final pick is the plan with the lowest `pick(solution)` (MixDQ: image
MSE against FP16); without a callback, the lowest problem objective (summed normalised degradation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .ilp import solve_ilp
from .problem import Constraint, Problem, Solution
from .registry import register_solver

__all__ = ["MixDQPlan", "MixDQResult", "WEIGHT_GRID", "ACT_GRID", "mixdq_search", "solve_mixdq"]

# The paper's sweeps: weights k ∈ linspace(0.46, 1.36, 10), activations k ∈ linspace(0.94, 1.09, 20);
# B ∈ linspace(T − 0.3, T, 10) for both.
WEIGHT_GRID = {"k": tuple(np.linspace(0.46, 1.36, 10)), "b_span": 0.3, "b_points": 10}
ACT_GRID = {"k": tuple(np.linspace(0.94, 1.09, 20)), "b_span": 0.3, "b_points": 10}
BAND = 0.02


def default_bits(key: Hashable) -> float:
    """Bits of an option key: the key itself if a number, else its first element ((w, a) → w)."""
    return float(key[0] if isinstance(key, tuple) else key)


@dataclass(frozen=True)
class MixDQPlan:
    target: float                  # overall mean bits B
    k: float                       # B_content / B_quality
    group_targets: Mapping[str, float]
    solution: Solution
    score: float = float("nan")    # pick(solution), lower is better


@dataclass(frozen=True)
class MixDQResult:
    best: Solution
    plans: tuple[MixDQPlan, ...]
    skipped: tuple[tuple[float, float, str], ...] = field(default=())  # (B, k, why)


def _sizes(problem: Problem, resource: str, bits: Callable[[Hashable], float]) -> np.ndarray:
    """w_i from cost = w_i · bits(key) (the first option with non-zero bits)."""
    cost = problem.costs[resource]
    w = np.zeros(problem.n_items)
    for i, keys in enumerate(problem.keys):
        for k, key in enumerate(keys):
            b = bits(key)
            if b > 0:
                w[i] = cost[i, k] / b
                break
    return w


def mixdq_search(
    problem: Problem,
    target: float,
    *,
    group_metric: Mapping[str, str] = (("quality", "sqnr"), ("content", "ssim")),
    resource: str = "wbits",
    bits: Callable[[Hashable], float] = default_bits,
    k_grid: Sequence[float] = WEIGHT_GRID["k"],
    b_span: float = WEIGHT_GRID["b_span"],
    b_points: int = WEIGHT_GRID["b_points"],
    band: float = BAND,
    group_ranges: Mapping[str, tuple[float, float]] | None = None,
    pick: Callable[[Solution], float] | None = None,
    backend: str = "scip",
    **ilp_options,
) -> MixDQResult:
    """Run MixDQ's sweep on `problem` (whose `groups` label items "quality" / "content").

    resource: the cost that equals size·bits (MixDQ: weight numel × bits, "wbits").
    group_ranges: allowed group targets (default: each group's min..max option bits; MixDQ's [4, 8] for
    quality and [2, 8] for content follow from its candidates {4, 8} and {2, 4, 8}).
    Items outside the two groups must be fixed (protected layers). Ties may not cross groups.
    """
    t0 = time.perf_counter()
    group_metric = dict(group_metric)
    if problem.groups is None:
        raise ValueError("MixDQ needs problem.groups (a 'quality'/'content' label per item)")
    q_name, c_name = list(group_metric)
    members = {g: [i for i, lab in enumerate(problem.groups) if lab == g] for g in group_metric}
    for g, m in group_metric.items():
        if m not in problem.losses:
            raise ValueError(f"group {g!r} uses metric {m!r}, which the problem lacks")
        if not members[g]:
            raise ValueError(f"no item is in group {g!r}")
    outside = [i for i, lab in enumerate(problem.groups) if lab not in group_metric and i not in problem.fixed]
    if outside:
        raise ValueError(f"items {outside[:5]} are in no MixDQ group and not fixed")
    w = _sizes(problem, resource, bits)
    W = {g: float(w[members[g]].sum()) for g in group_metric}
    r = W[c_name] / W[q_name]
    ranges = dict(group_ranges or {})
    for g in group_metric:
        if g not in ranges:
            b = [bits(k) for i in members[g] for k in problem.keys[i]]
            ranges[g] = (min(b), max(b))
    subs = {g: problem.subset(members[g]).replace(
        losses={group_metric[g]: problem.subset(members[g]).losses[group_metric[g]]},
        weights={group_metric[g]: 1.0}, scales={group_metric[g]: 1.0}, constraints=()) for g in group_metric}
    base = np.zeros(problem.n_items, np.int64)
    for i, key in problem.fixed.items():
        base[i] = problem.option_index(i, key)
    plans, skipped = [], []
    for B in np.linspace(target - b_span, target, b_points):
        for k in k_grid:
            bq = B * (1 + r) / (1 + k * r)
            targets = {q_name: bq, c_name: k * bq}
            bad = [g for g, t in targets.items() if not ranges[g][0] <= t <= ranges[g][1]]
            if bad:
                skipped.append((float(B), float(k), f"target of {bad[0]} outside {ranges[bad[0]]}"))
                continue
            choice, why = base.copy(), ""
            for g, t in targets.items():
                sub = subs[g].with_constraints([Constraint(resource, upper=(t + band) * W[g],
                                                           lower=(t - band) * W[g], name=f"{g}_mean_bits")])
                sol = solve_ilp(sub, backend=backend, diagnose=False, **ilp_options)
                if not sol.feasible:
                    why = f"{g} ILP infeasible at {t:.3f} ± {band} bits"
                    break
                choice[members[g]] = sol.choice
            if why:
                skipped.append((float(B), float(k), why))
                continue
            sol = problem.evaluate(choice, status="feasible", backend=f"mixdq/{backend}",
                                   info={"target": float(B), "k": float(k), "group_targets": targets})
            plans.append(MixDQPlan(float(B), float(k), targets, sol,
                                   float(pick(sol)) if pick is not None else sol.objective))
    if not plans:
        raise ValueError(f"no (B, k) pair of the sweep is feasible for target {target} bits")
    best = min(plans, key=lambda p: p.score)
    info = dict(best.solution.info) | {"plans": len(plans), "skipped": len(skipped)}
    best_sol = problem.evaluate(best.solution.choice, status="feasible", backend=f"mixdq/{backend}",
                                time_s=time.perf_counter() - t0, info=info)
    return MixDQResult(best_sol, tuple(plans), tuple(skipped))


@dataclass(frozen=True)
class MixDQOptions:
    """The options of `mixdq_search` (see there); the target mean bits come from the budget."""

    group_metric: Mapping[str, str] = (("quality", "sqnr"), ("content", "ssim"))
    resource: str = "wbits"
    bits: Callable[[Hashable], float] = default_bits
    k_grid: Sequence[float] = WEIGHT_GRID["k"]
    b_span: float = WEIGHT_GRID["b_span"]
    b_points: int = WEIGHT_GRID["b_points"]
    band: float = BAND
    group_ranges: Mapping[str, tuple[float, float]] | None = None
    pick: Callable[[Solution], float] | None = None
    backend: str = "scip"  # ~200 small group ILPs per sweep: in-process SCIP, as MixDQ does


# MixDQ allocates with the band ±0.02 bits around the target itself, not under a ceiling
@register_solver("mixdq", budget="target", budget_kinds=("bits",), weight_only=True, prunes=False,
                 options=MixDQOptions, label="MixDQ's procedure")
def solve_mixdq(problem: Problem, *, target: float, **options) -> Solution:
    """MixDQ's pick as a `Solution` (see `mixdq_search` for options and the family of plans)."""
    return mixdq_search(problem, target, **options).best
