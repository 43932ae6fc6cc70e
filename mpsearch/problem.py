"""Inventory + profile + budget → a `solvers.Problem`; a `solvers.Solution` → a `Plan`.

Each layer's options are the (weight bits, activation bits) pairs of the profile's candidates, plus
16 bits (unquantized). The loss of an option, per metric, is the profiled degradation of quantizing that
layer's weights to w bits plus that of quantizing its input activations to a bits (MixDQ's additivity
assumption: one-layer-at-a-time measurements add up). A metric a layer was not measured on counts 0 for
it (by default quality layers are measured on quality metrics and content layers on content metrics).
The solver puts the metrics on one scale (see `solvers.problem`).

Costs per option: `bytes` (cost model, the exporter's own accounting), `wbits` (params × w bits, for
mean-bit budgets) and `bitops` (MACs × w × a).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mpsearch.budget import Budget
from mpsearch.cost import FLOAT_BITS, fixed_bytes, get_format, layer_bitops, layer_bytes
from mpsearch.model import Inventory
from mpsearch.plan import LayerBits, Plan
from solvers.problem import Constraint, Problem, Solution, StepProblem


@dataclass
class SearchSpace:
    """Which bit-widths a solver may pick.

    `w_bits` / `a_bits`: candidates (16 = unquantized is always allowed unless `allow_fp` is False).
    `protect`: regexes of layers kept at 16/16 (e.g. MixDQ's most sensitive 1%: see `protect_top`).
    `protect_top`: fraction of layers, the most sensitive at the lowest candidate bits, kept at 16/16.
    `weight_only`: activations stay at 16 bits (no activation options).
    """

    w_bits: Sequence[int] | None = None
    a_bits: Sequence[int] | None = None
    weight_only: bool = False
    protect: Sequence[str] = ()
    protect_top: float = 0.0
    allow_fp: bool = True
    metric_weights: dict[str, float] = field(default_factory=dict)


def _loss_tables(df: pd.DataFrame, tensor: str, inv: Inventory, bits: Sequence[int], metrics: Sequence[str]):
    """metric → (G, L, len(bits)) degradations of one tensor kind; 16 bits and unmeasured pairs are 0."""
    groups = sorted(df["step_group"].unique()) if len(df) else [0]
    out = {m: np.zeros((len(groups), len(inv), len(bits))) for m in metrics}
    sub = df[df["tensor"] == tensor]
    if sub.empty:
        return out, groups
    gi = {g: i for i, g in enumerate(groups)}
    bi = {b: i for i, b in enumerate(bits)}
    for row in sub.itertuples(index=False):
        if row.layer in inv and row.bits in bi and row.metric in out:
            out[row.metric][gi[row.step_group], inv.index(row.layer), bi[row.bits]] = max(0.0, row.degradation)
    return out, groups


def _check_profile_covers(df: pd.DataFrame, inv: Inventory) -> None:
    unknown = sorted(set(df["layer"]) - set(inv.names))
    if unknown:
        raise ValueError(f"the profile measures layer {unknown[0]!r}, which is not a quantizable layer of "
                         f"{inv.model!r}: profile and model do not match")
    missing = [n for n in inv.names if n not in set(df["layer"])]
    if missing:
        raise ValueError(f"the profile has no measurement for layer {missing[0]!r}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                         + "; finish or resume the profile run first")


def build_problem(
    inv: Inventory,
    profile_df: pd.DataFrame,
    budget: Budget | str | None,
    *,
    fmt: str | None = None,
    space: SearchSpace | None = None,
    extra_constraints: Sequence[Constraint] = (),
) -> StepProblem:
    """The allocation problem for `inv` from profile rows (columns: layer, tensor, bits, metric,
    step_group, degradation). Returns a `StepProblem`: `.problem` is the flat problem (losses summed over
    step groups) for the ILP; `.step_losses` feed the timestep search."""
    space = space or SearchSpace()
    f = get_format(fmt)
    _check_profile_covers(profile_df, inv)
    metrics = sorted(profile_df["metric"].unique())
    w_cands = sorted(set(space.w_bits or profile_df.loc[profile_df.tensor == "weight", "bits"].unique()))
    a_cands = [] if space.weight_only else sorted(
        set(space.a_bits or profile_df.loc[profile_df.tensor == "act", "bits"].unique()))
    w_all = [int(b) for b in w_cands if b < FLOAT_BITS] + ([FLOAT_BITS] if space.allow_fp else [])
    a_all = [int(b) for b in a_cands if b < FLOAT_BITS] + [FLOAT_BITS]
    for b in w_all:
        f.stored_bits(b)  # clear error if the format cannot hold a candidate
    wl, groups = _loss_tables(profile_df, "weight", inv, w_all, metrics)
    al, _ = _loss_tables(profile_df, "act", inv, a_all, metrics)
    pairs = [(w, a) for w in w_all for a in a_all]
    wi = [w_all.index(w) for w, _ in pairs]
    ai = [a_all.index(a) for _, a in pairs]
    step_losses = {m: wl[m][:, :, wi] + al[m][:, :, ai] for m in metrics}
    costs = {
        "bytes": [[layer_bytes(l, w, f) for w, _ in pairs] for l in inv.layers],
        "wbits": [[l.params * w for w, _ in pairs] for l in inv.layers],
        "bitops": [[layer_bitops(l, w, a) for w, a in pairs] for l in inv.layers],
    }
    fixed = {}
    for name in inv.names:
        if any(re.search(p, name) for p in space.protect):
            fixed[name] = (FLOAT_BITS, FLOAT_BITS)
    if space.protect_top > 0:
        flat = sum(v.sum(axis=0) for v in step_losses.values())
        worst = flat.max(axis=1)
        for i in np.argsort(-worst)[: max(1, round(space.protect_top * len(inv)))]:
            fixed[inv.names[i]] = (FLOAT_BITS, FLOAT_BITS)
    if fixed and (FLOAT_BITS, FLOAT_BITS) not in pairs:
        raise ValueError("protected layers need 16-bit options: do not combine --protect with allow_fp=False")
    constraints = list(extra_constraints)
    if budget is not None:
        b = Budget.parse(budget)
        offset = fixed_bytes(inv, f) if b.resource == "bytes" else 0.0
        constraints.append(Constraint(b.resource, upper=b.resolve(inv, f), offset=offset, name="budget"))
    problem = Problem(
        keys=[pairs] * len(inv),
        costs=costs,
        losses={m: v.sum(axis=0) for m, v in step_losses.items()},
        weights=space.metric_weights or None,
        constraints=constraints,
        fixed=fixed,
        names=inv.names,
        groups=[l.group for l in inv.layers],
    )
    n = len(groups)
    step_groups = [(i, i + 1) for i in range(n)]
    return StepProblem(problem=problem, step_losses=step_losses, step_groups=step_groups)


def budget_error_text(solution: Solution, budget: Budget, inv: Inventory) -> str:
    """'budget X is infeasible; the smallest feasible is Y' in the budget's own units."""
    smallest = solution.smallest_feasible
    if smallest is None:
        return f"budget {budget} cannot be met together with the other constraints"
    if budget.kind in ("bytes", "percent"):
        return (f"budget {budget} is infeasible: the smallest plan needs {int(np.ceil(smallest)):,} bytes "
                f"(try --budget {int(np.ceil(smallest))}B)")
    if budget.kind == "bits":
        mean = smallest / sum(l.params for l in inv.layers)
        return f"budget {budget} is infeasible: the smallest feasible is {np.ceil(mean * 1000) / 1000:g}bits"
    return f"budget {budget} is infeasible: the smallest feasible is {smallest:,.0f} BitOPs"


def solution_to_plan(
    solution: Solution,
    inv: Inventory,
    *,
    fmt: str | None = None,
    budget: Budget | str | None = None,
    extra: dict[str, Any] | None = None,
) -> Plan:
    solution.raise_if_infeasible()
    layers = {name: LayerBits(int(w), int(a)) for name, (w, a) in zip(inv.names, solution.keys, strict=True)}
    plan = Plan(
        layers=layers,
        model=inv.model,
        fingerprint=inv.fingerprint,
        format=get_format(fmt).name,
        budget=str(budget) if budget is not None else None,
        solver={
            "status": solution.status,
            "backend": solution.backend,
            "objective": solution.objective,
            "gap": None if np.isnan(solution.gap) else solution.gap,
            "time_s": round(solution.time_s, 4),
            **(extra or {}),
        },
    )
    plan.predicted["loss"] = solution.objective
    plan.predicted["losses"] = {k: float(v) for k, v in solution.losses.items()}
    plan.predict(inv)
    return plan
