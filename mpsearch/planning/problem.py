"""Inventory + profile + budget → a `solvers.Problem`; a `solvers.Solution` → a `Plan`.

Each layer's options are the (weight bits, activation bits) pairs of the profile's candidates, plus
16 bits (unquantized). The loss of an option, per metric, is the profiled degradation of quantizing that
layer's weights to w bits plus that of quantizing its input activations to a bits (MixDQ's additivity
assumption: one-layer-at-a-time measurements add up). A metric a layer was not measured on counts 0 for
it (by default quality layers are measured on quality metrics and content layers on content metrics).
The solver puts the metrics on one scale (see `solvers.problem`).

The solver never invents a measurement. A layer's (tensor, bits) option is measured when the profile has
its row for every metric that layer was measured on and every step group; an option that is not is not
offered to that layer (listed in `StepProblem.info["unmeasured"]`), and a width asked for explicitly that
no layer has is refused. `SearchSpace(assume_missing="zero")` (`--assume-missing zero`) offers unmeasured
options at zero loss instead. A NaN, infinite or negative degradation, or two different ones for one
measurement, is an error.

Costs per option: `bytes` (cost model, the exporter's own accounting), `wbits` (params × stored w bits,
for mean-bit budgets: a bits budget counts what the format stores), `bitops` (MACs × w × a) and, when the
inventory knows every layer's input size (`Layer.act_numel`), `abits` (input activation elements × a: the
size-weighted mean activation bits MixDQ's activation stage targets). Only widths the format stores as
they are are offered (`WeightFormat.widths`; quanto: 2, 4, 8), and per layer only those the format has
for it (`WeightFormat.stores`; gguf: Linear rows of whole blocks).

Layer pruning (LAPTOP-Diff, `mpsearch.profiling.pruning`): when the profile has unit rows (`tensor="unit"`) every
layer of a prunable unit gets one more option, key `"pruned"`, costing 0 bytes, 0 wbits and 0 BitOPs.
The unit's measured degradation is the loss of its first layer's "pruned" option (0 for the others), and
the unit's unquantized parameters (norms, which leave with it) are charged to the first layer's other
options (taken out of the constant offset), so bytes stay exact. "pruned" is all-or-nothing per unit
(`solvers.all_or_nothing`: two upper-bound rows per unit, named `pruned:<unit>:...`), while the layers of
a kept unit choose their bits independently. Pruning is offered only when asked for
(`SearchSpace(prune=True)`, `mpsearch solve --prune`): a pruned plan needs distillation to recover.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mpsearch.model import Inventory
from mpsearch.planning.budget import Budget
from mpsearch.planning.cost import (
    FLOAT_BITS,
    PRUNED,
    fixed_bytes,
    get_format,
    layer_bitops,
    layer_bytes,
    layer_wbits,
)
from mpsearch.planning.plan import LayerBits, Plan
from mpsearch.profiling.store import KEY
from solvers.all_or_nothing import all_or_nothing_rows
from solvers.problem import Constraint, Problem, Solution, StepProblem

ASSUME_MISSING = ("none", "zero")  # what an option the profile never measured counts as (see module docstring)


@dataclass
class SearchSpace:
    """Which bit-widths a solver may pick.

    `w_bits` / `a_bits`: candidates (16 = unquantized is always allowed unless `allow_fp` is False).
    `protect`: regexes of layers kept at 16/16 (e.g. MixDQ's most sensitive 1%: see `protect_top`).
    `protect_top`: fraction of layers, the most sensitive at the lowest candidate bits, kept at 16/16.
    `weight_only`: activations stay at 16 bits (no activation options).
    `prune`: also offer removing whole units (LAPTOP-Diff) the profile scored (`mpsearch profile --prune`).
    `assume_missing`: "none" offers only measured options (see module docstring); "zero" offers every
    candidate and counts what the profile never measured as lossless.
    """

    w_bits: Sequence[int] | None = None
    a_bits: Sequence[int] | None = None
    weight_only: bool = False
    protect: Sequence[str] = ()
    protect_top: float = 0.0
    allow_fp: bool = True
    metric_weights: dict[str, float] = field(default_factory=dict)
    prune: bool = False  # also offer "pruned" for the units the profile scored (needs unit rows)
    assume_missing: str = "none"


def _key(values: Any) -> tuple:
    """Plain Python values (numpy scalars print as `np.int64(2)`), for messages."""
    return tuple(v.item() if isinstance(v, np.generic) else v for v in values)


def _checked_rows(df: pd.DataFrame) -> pd.DataFrame:
    """`df` without exact duplicate measurements. A NaN, infinite or negative degradation, or two different
    degradations for one measurement, is an error naming it."""
    deg = pd.to_numeric(df["degradation"], errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(deg) & (deg >= 0))
    if bad.any():
        row = df.iloc[int(np.argmax(bad))]
        raise ValueError(f"measurement {_key(row[list(KEY)])} has degradation {_key([row['degradation']])[0]!r}: "
                         "it must be a finite number ≥ 0")
    dup = df.duplicated(list(KEY), keep=False).to_numpy()
    if dup.any():
        spread = df[dup].groupby(list(KEY), sort=False)["degradation"].nunique()
        if (spread > 1).any():
            raise ValueError(f"measurement {_key(spread.index[int(np.argmax(spread.to_numpy() > 1))])} has two "
                             "different degradations")
        df = df.drop_duplicates(list(KEY))
    return df


def _loss_tables(df: pd.DataFrame, tensor: str, n_layers: int, n_groups: int, bits: Sequence[int],
                 metrics: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(metric → (G, L, len(bits)) degradations of one tensor kind, (L, len(bits)) rows per option).
    `df` has integer columns `_l` (layer index) and `_g` (step group index); 16 bits and unmeasured
    options have degradation 0."""
    out = {m: np.zeros((n_groups, n_layers, len(bits))) for m in metrics}
    count = np.zeros((n_layers, len(bits)), dtype=np.int64)
    sub = df[df["tensor"] == tensor]
    bi = sub["bits"].map({b: i for i, b in enumerate(bits)}).to_numpy(dtype=float)
    keep = ~np.isnan(bi)
    bi = bi[keep].astype(np.int64)
    li, gi = sub["_l"].to_numpy()[keep], sub["_g"].to_numpy()[keep]
    metric, deg = sub["metric"].to_numpy()[keep], sub["degradation"].to_numpy(dtype=float)[keep]
    for m in metrics:
        at = metric == m
        out[m][gi[at], li[at], bi[at]] = deg[at]
    np.add.at(count, (li, bi), 1)
    return out, count


def _check_profile_covers(df: pd.DataFrame, inv: Inventory) -> None:
    present = set(df["layer"].unique())
    unknown = sorted(present - set(inv.names))
    if unknown:
        raise ValueError(f"the profile measures layer {unknown[0]!r}, which is not a quantizable layer of "
                         f"{inv.model!r}: profile and model do not match")
    missing = [n for n in inv.names if n not in present]
    if missing:
        raise ValueError(f"the profile has no measurement for layer {missing[0]!r}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                         + "; finish or resume the profile run first")


def _measured(df: pd.DataFrame, tensor: str, count: np.ndarray, need: np.ndarray, bits: Sequence[int],
              asked: Sequence[int] | None) -> np.ndarray:
    """(L, len(bits)) True where a layer's option has all its rows (`need` per layer); 16 bits always.
    A width asked for explicitly that no layer has is refused."""
    ok = count >= need[:, None]
    ok[:, [i for i, b in enumerate(bits) if b >= FLOAT_BITS]] = True
    for i, b in enumerate(bits):
        if asked and b in asked and not ok[:, i].any():
            have = sorted({int(x) for x in df.loc[df["tensor"] == tensor, "bits"].unique()})
            raise ValueError(f"{'weights' if tensor == 'weight' else 'activations'} at {b} bits were never measured "
                             f"in this profile (measured: {', '.join(map(str, have)) or 'none'}): profile them, or "
                             "choose --assume-missing zero to count unmeasured options as lossless")
    return ok


def _offer(ok: np.ndarray, pairs: list, costs: dict, step_losses: dict) -> tuple[list, dict, dict]:
    """Per layer only the options `ok` (L, P) marks: keys, ragged costs and step losses packed left."""
    if ok.all():
        return [list(pairs) for _ in ok], costs, step_losses
    order = np.argsort(~ok, axis=1, kind="stable")  # each layer's offered options first, in their order
    n = ok.sum(axis=1)
    keys = [[pairs[k] for k in row[:k_i]] for row, k_i in zip(order, n, strict=True)]
    costs = {r: [row[:k_i].tolist() for row, k_i in zip(np.take_along_axis(np.asarray(v), order, axis=1), n,
                                                          strict=True)]
             for r, v in costs.items()}
    valid = np.arange(ok.shape[1])[None, :] < n[:, None]
    step_losses = {m: (np.take_along_axis(v, order[None], axis=2) * valid[None])[:, :, : n.max()]
                   for m, v in step_losses.items()}
    return keys, costs, step_losses


def build_problem(
    inv: Inventory,
    profile_df: pd.DataFrame,
    budget: Budget | str | None,
    *,
    fmt: str | None = None,
    space: SearchSpace | None = None,
    extra_constraints: Sequence[Constraint] = (),
    units: Mapping[str, Any] | None = None,
) -> StepProblem:
    """The allocation problem for `inv` from profile rows (columns: layer, tensor, bits, metric,
    step_group, degradation). Returns a `StepProblem`: `.problem` is the flat problem (losses summed over
    step groups) for the ILP; `.step_losses` feed the timestep search. `units`: the profile's
    `meta["units"]` (unit name → {"fixed_params": n, ...}), needed when it has unit rows."""
    space = space or SearchSpace()
    if space.assume_missing not in ASSUME_MISSING:
        raise ValueError(f"assume_missing must be one of {', '.join(ASSUME_MISSING)}, got {space.assume_missing!r}")
    f = get_format(fmt)
    profile_df = _checked_rows(profile_df)
    unit_df = profile_df[profile_df["tensor"] == "unit"]
    profile_df = profile_df[profile_df["tensor"] != "unit"]
    _check_profile_covers(profile_df, inv)
    w_all, a_all = _candidate_bits(profile_df, space, f)
    groups = sorted(profile_df["step_group"].unique()) if len(profile_df) else [0]
    opts = _Options.measure(inv, profile_df, groups, w_all, a_all, space)
    fits = np.array([[f.stores(l, w) for w, _ in opts.pairs] for l in inv.layers])  # widths the format has per layer
    costs = {
        "bytes": [[layer_bytes(l, w, f) if s else 0 for (w, _), s in zip(opts.pairs, row, strict=True)]
                  for l, row in zip(inv.layers, fits, strict=True)],
        "wbits": [[layer_wbits(l, w, f) for w, _ in opts.pairs] for l in inv.layers],
        "bitops": [[layer_bitops(l, w, a) for w, a in opts.pairs] for l in inv.layers],
    }
    if all(l.act_numel is not None for l in inv.layers):  # an older inventory leaves activation sizes unknown
        costs["abits"] = [[l.act_numel * a for _, a in opts.pairs] for l in inv.layers]
    fixed = _protected(inv, space, opts)
    keys, costs, step_losses = _offer(opts.offered(inv, fits), opts.pairs, costs, opts.step_losses)
    # each metric's scale from the bit options alone (see `solvers.problem`): offering pruning must not
    # re-weight the metrics, so a plan that prunes nothing scores as it does without the option
    scales = {m: float(v.sum(axis=0).max(axis=1).sum()) or 1.0 for m, v in step_losses.items()} \
        if space.prune else None
    constraints = list(extra_constraints)
    saved = 0
    if space.prune and unit_df.empty:
        raise ValueError("pruning asked for, but the profile scores no prunable unit: add the scores with "
                         "`mpsearch profile --prune --tensors '' --out <this profile>`")
    if space.prune:
        saved = _add_prune_options(inv, unit_df, units, groups, keys, costs, step_losses, constraints, f)
    if budget is not None:
        b = Budget.parse(budget)
        offset = fixed_bytes(inv, f) - saved if b.resource == "bytes" else 0.0
        constraints.append(Constraint(b.resource, upper=b.resolve(inv, f), offset=offset, name="budget"))
    width = max(len(k) for k in keys)  # packed options (and "pruned") leave no column unused
    step_losses = {m: v[:, :, :width] for m, v in step_losses.items()}
    problem = Problem(
        keys=keys,
        costs=costs,
        losses={m: v.sum(axis=0) for m, v in step_losses.items()},
        scales=scales,
        weights=space.metric_weights or None,
        constraints=constraints,
        fixed=fixed,
        names=inv.names,
        groups=[l.group for l in inv.layers],
    )
    info = {"unmeasured": opts.unmeasured(inv), "assume_missing": space.assume_missing}
    return StepProblem(problem=problem, step_losses=step_losses, step_groups=[(i, i + 1) for i in range(len(groups))],
                       info=info)


def _candidate_bits(profile_df: pd.DataFrame, space: SearchSpace, f: Any) -> tuple[list[int], list[int]]:
    """Weight and activation bit-widths on offer: the profile's (or the space's), the weight widths the
    format stores as they are (quanto: 2, 4, 8; its 3 costs a 4-bit container), and 16 where allowed."""
    w_cands = sorted(set(space.w_bits or [b for b in profile_df.loc[profile_df.tensor == "weight", "bits"].unique()
                                          if b in f.widths]))
    a_cands = [] if space.weight_only else sorted(
        set(space.a_bits or profile_df.loc[profile_df.tensor == "act", "bits"].unique()))
    w_all = [int(b) for b in w_cands if b < FLOAT_BITS] + ([FLOAT_BITS] if space.allow_fp else [])
    a_all = [int(b) for b in a_cands if b < FLOAT_BITS] + [FLOAT_BITS]
    for b in w_all:
        f.check_offered(b)  # clear error if the format cannot hold a candidate, or only in a wider container
    return w_all, a_all


@dataclass
class _Options:
    """The (w, a) pairs of every layer, their per-step-group losses, and which of them the profile measured."""

    pairs: list[tuple[int, int]]
    w_all: list[int]
    a_all: list[int]
    step_losses: dict[str, np.ndarray]  # metric -> [group, layer, pair]
    w_ok: np.ndarray  # [layer, w option]: every metric and step group measured
    a_ok: np.ndarray
    zero: bool  # --assume-missing zero: every option offered

    @classmethod
    def measure(cls, inv: Inventory, df: pd.DataFrame, groups: list, w_all: list[int], a_all: list[int],
                space: SearchSpace) -> _Options:
        metrics = sorted(df["metric"].unique())
        df = df.assign(_l=df["layer"].map(inv.index).to_numpy(),
                       _g=df["step_group"].map({g: i for i, g in enumerate(groups)}).to_numpy())
        # rows an option needs: one per metric its layer was measured on, per step group
        per_layer = df.drop_duplicates(["_l", "metric"])["_l"].to_numpy()
        need = np.bincount(per_layer, minlength=len(inv)) * len(groups)
        wl, w_count = _loss_tables(df, "weight", len(inv), len(groups), w_all, metrics)
        al, a_count = _loss_tables(df, "act", len(inv), len(groups), a_all, metrics)
        zero = space.assume_missing == "zero"
        w_ok = _measured(df, "weight", w_count, need, w_all, None if zero else space.w_bits)
        a_ok = _measured(df, "act", a_count, need, a_all, None if zero else space.a_bits)
        pairs = [(w, a) for w in w_all for a in a_all]
        wi, ai = cls._index(pairs, w_all, a_all)
        step_losses = {m: wl[m][:, :, wi] + al[m][:, :, ai] for m in metrics}
        return cls(pairs, w_all, a_all, step_losses, w_ok, a_ok, zero)

    @staticmethod
    def _index(pairs: list[tuple[int, int]], w_all: list[int], a_all: list[int]) -> tuple[list[int], list[int]]:
        return [w_all.index(w) for w, _ in pairs], [a_all.index(a) for _, a in pairs]

    def offered(self, inv: Inventory, fits: np.ndarray) -> np.ndarray:
        """[layer, pair] mask of the options offered, among those the format stores (`fits`, [layer, pair]);
        every layer must keep one."""
        wi, ai = self._index(self.pairs, self.w_all, self.a_all)
        ok = np.ones((len(inv), len(self.pairs)), dtype=bool) if self.zero else self.w_ok[:, wi] & self.a_ok[:, ai]
        ok &= fits
        if not ok.any(axis=1).all():
            raise ValueError(f"layer {inv.names[int(np.argmin(ok.any(axis=1)))]!r} has no measured option among "
                             f"W{self.w_all} A{self.a_all}: allow 16 bits, or choose --assume-missing zero")
        return ok

    def unmeasured(self, inv: Inventory) -> list[str]:
        """'<layer> W3'-style names of the options the profile lacks (offered only with --assume-missing zero)."""
        missing = sorted((i, t, bits[k]) for t, bits, got in (("W", self.w_all, self.w_ok), ("A", self.a_all, self.a_ok))
                         for i, k in np.argwhere(~got))
        return [f"{inv.names[i]} {t}{b}" for i, t, b in missing]


def _protected(inv: Inventory, space: SearchSpace, opts: _Options) -> dict[str, tuple[int, int]]:
    """Layers held at 16 bits: those matching `space.protect`, and the `protect_top` share with the worst
    loss of any option."""
    fixed = {}
    for name in inv.names:
        if any(re.search(p, name) for p in space.protect):
            fixed[name] = (FLOAT_BITS, FLOAT_BITS)
    if space.protect_top > 0:
        flat = sum(v.sum(axis=0) for v in opts.step_losses.values())
        worst = flat.max(axis=1)
        for i in np.argsort(-worst)[: max(1, round(space.protect_top * len(inv)))]:
            fixed[inv.names[i]] = (FLOAT_BITS, FLOAT_BITS)
    if fixed and (FLOAT_BITS, FLOAT_BITS) not in opts.pairs:
        raise ValueError("protected layers need 16-bit options: do not combine --protect with allow_fp=False")
    return fixed


def prunable_units(inv: Inventory, units: Mapping[str, Any] | None, names: Sequence[str]) -> dict[str, dict]:
    """`{unit: {"members": [layer indices], "fixed_params": n}}` for the scored units `names`."""
    if units is None:
        raise ValueError("the profile has unit (pruning) rows but no unit table: pass units= "
                         "(the profile's meta['units'])")
    out = {}
    for name in names:
        if name not in units:
            raise ValueError(f"the profile scores unit {name!r} but its unit table does not list it")
        info = units[name]
        members = [i for i, n in enumerate(inv.names) if n.startswith(name + ".")]
        if not members:
            raise ValueError(f"unit {name!r} holds no quantizable layer of {inv.model!r}: profile and model differ")
        out[name] = {"members": members, "fixed_params": int(info["fixed_params"] if isinstance(info, Mapping) else info)}
    return out


def _add_prune_options(inv, unit_df, units, groups, keys, costs, step_losses, constraints, f) -> int:
    """Append the "pruned" option to every unit layer (see module docstring); returns the bytes of unit
    parameters moved from the offset onto the first layers' kept options."""
    from mpsearch.profiling.pruning import PRUNED_KEY

    table = prunable_units(inv, units, list(dict.fromkeys(unit_df["layer"])))
    taken = {}
    for name, u in table.items():
        for i in u["members"]:
            if i in taken:
                raise ValueError(f"units {taken[i]!r} and {name!r} overlap at layer {inv.names[i]!r}")
            taken[i] = name
    gi = {g: k for k, g in enumerate(groups)}
    for m in list(step_losses):
        step_losses[m] = np.concatenate([step_losses[m], np.zeros((*step_losses[m].shape[:2], 1))], axis=2)
    for row in unit_df.itertuples(index=False):
        if row.metric in step_losses and row.step_group in gi:
            first = table[row.layer]["members"][0]
            step_losses[row.metric][gi[row.step_group], first, len(keys[first])] = row.degradation
    saved = 0
    for u in table.values():
        extra = u["fixed_params"] * f.float_bytes
        costs["bytes"][u["members"][0]] = [c + extra for c in costs["bytes"][u["members"][0]]]
        saved += extra
        for i in u["members"]:
            keys[i].append(PRUNED_KEY)
            for r in ("bytes", "wbits", "bitops", "abits"):
                if r in costs:
                    costs[r][i] = [*costs[r][i], 0]
    for name, u in table.items():
        rows, cons = all_or_nothing_rows(keys, f"pruned:{name}", PRUNED_KEY, u["members"])
        costs.update(rows)
        constraints.extend(cons)
    return saved


def solution_to_plan(
    solution: Solution,
    inv: Inventory,
    *,
    fmt: str | None = None,
    budget: Budget | str | None = None,
    extra: dict[str, Any] | None = None,
    units: Mapping[str, Any] | None = None,
) -> Plan:
    """The plan of a solution; layers that chose "pruned" are recorded with their units (`units`: the
    profile's unit table, as for `build_problem`)."""
    from mpsearch.profiling.pruning import PRUNED_KEY

    solution.raise_if_infeasible()
    layers = {name: LayerBits(PRUNED, PRUNED) if key == PRUNED_KEY else LayerBits(int(key[0]), int(key[1]))
              for name, key in zip(inv.names, solution.keys, strict=True)}
    pruned_layers = {n for n, b in layers.items() if b.pruned}
    pruned_units, fixed = [], 0
    if pruned_layers:
        for name, u in prunable_units(inv, units, list(units or {})).items():
            members = {inv.names[i] for i in u["members"]}
            if members & pruned_layers:
                if not members <= pruned_layers:
                    raise ValueError(f"the solution prunes only part of unit {name!r}")
                pruned_units.append(name)
                fixed += u["fixed_params"]
    plan = Plan(
        layers=layers,
        pruned_units=pruned_units,
        pruned_fixed_params=fixed,
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


def plan_choice(problem: Problem, plan: Plan, inv: Inventory) -> list[int]:
    """The option each layer of `plan` takes in `problem` (the inverse of `solution_to_plan`), so any plan
    (uniform, random, another solver's, edited by hand) can be scored with the ILP's objective. A layer
    whose bits the problem does not offer is an error naming it."""
    from mpsearch.profiling.pruning import PRUNED_KEY

    choice = []
    for i, name in enumerate(inv.names):
        bits = plan.layers.get(name)
        if bits is None:
            raise ValueError(f"the plan has no bits for layer {name!r}")
        key = PRUNED_KEY if bits.pruned else (bits.w_bits, bits.a_bits)
        try:
            choice.append(problem.option_index(i, key))
        except (KeyError, ValueError):
            raise ValueError(f"layer {name!r}: W{bits.w_bits}A{bits.a_bits} is not an option of the profile's "
                             "problem (never measured, or a width the format does not store)") from None
    return choice
