"""The allocation problem as plain numbers: items with options, constraints, ties, fixed choices.

A `Problem` has L items (layers). Item i offers options k = 0..n_i-1, each with a hashable key
(`(4, 8)` for W4A8, `4`, `"pruned"`), a cost per named resource (`"bytes"`, `"wbits"` = params·bits,
`"bitops"` = MACs·w·a) and a loss per named metric (a degradation: ≥ 0, lower is better).
A solver picks exactly one option per item.

Objective (minimised)::

    J(choice) = Σ_m  weight_m · Σ_i loss_m[i, choice_i] / scale_m

`scale_m` puts every metric on one scale. By default it is the metric's worst total,
`scale_m = Σ_i max_k loss_m[i, k]`: the degradation of choosing every item's most damaging option (with
bits, its cheapest one). A normalised metric then lies in [0, 1], 0 = no degradation, 1 = everything at its
worst, so weights compare like with like ("sqnr counts twice as much as ssim"). A metric whose losses are
all zero gets scale 1. Pass `scales={"sqnr": 1.0}` for the raw, un-normalised sum (MixDQ does that).

Constraints are linear in the choice: for `Constraint(resource, upper, lower, items, offset)`,
`total = offset + Σ_{i in items} cost_resource[i, choice_i]` must lie in [lower, upper]. The offset holds
what the items do not choose (unquantized bytes, embeddings).
Ties are groups of items that must choose the same option key (all or nothing).
Fixed maps an item to the key it must take (protected layers).

Items may be referred to by index or, when `names` is given, by name.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Constraint",
    "InfeasibleBudget",
    "Option",
    "Problem",
    "Solution",
    "StepProblem",
]

STATUSES = ("optimal", "feasible", "infeasible")


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class Option:
    """One choice for one item, used by `Problem.from_options`."""

    key: Hashable
    cost: Mapping[str, float]
    loss: Mapping[str, float]


@dataclass(frozen=True)
class Constraint:
    """`lower ≤ offset + Σ_{i in items} cost[resource][i, choice_i] ≤ upper` (units of the resource).

    items=None means all items. Either bound may be None, not both. `name` defaults to the resource
    (suffixed when several constraints share it).
    """

    resource: str
    upper: float | None
    lower: float | None = None
    items: Sequence[int | str] | None = None
    offset: float = 0.0
    name: str | None = None

    def __post_init__(self) -> None:
        if self.upper is None and self.lower is None:
            raise ValueError(f"constraint on {self.resource!r} has neither an upper nor a lower bound")
        for side in ("upper", "lower"):
            v = getattr(self, side)
            if v is not None and not np.isfinite(v):
                raise ValueError(f"constraint on {self.resource!r}: {side} bound must be finite, got {v}")
        if self.upper is not None and self.lower is not None and self.lower > self.upper:
            raise ValueError(f"constraint on {self.resource!r}: lower {self.lower} > upper {self.upper}")
        if not np.isfinite(self.offset):
            raise ValueError(f"constraint on {self.resource!r}: offset must be finite")


class InfeasibleBudget(ValueError):
    """No choice meets the constraints. `smallest_feasible` is the least total of the binding constraint's
    resource that can be met (given every other constraint, tie and fixed choice), or None when no single
    constraint is to blame."""

    def __init__(self, constraint: str | None, upper: float | None, smallest_feasible: float | None,
                 resource: str | None = None) -> None:
        self.constraint, self.upper, self.smallest_feasible, self.resource = (
            constraint, upper, smallest_feasible, resource)
        if constraint is None or smallest_feasible is None:
            msg = "the constraints cannot all be met together (no single budget is to blame)"
        else:
            msg = (f"budget {constraint!r} ≤ {upper:.6g} is infeasible; "
                   f"the smallest feasible is {smallest_feasible:.6g}")
        super().__init__(msg)


def _as_matrix(values: Any, n_options: np.ndarray | None, what: str) -> np.ndarray:
    """(L, K) float matrix from a padded array or a ragged list of per-item lists; padding is NaN."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        m = values.astype(float, copy=True)
    else:
        rows = [np.asarray(r, dtype=float).ravel() for r in values]
        width = max((len(r) for r in rows), default=0)
        m = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            m[i, : len(r)] = r
    if n_options is not None:
        if m.shape[0] != len(n_options) or m.shape[1] < n_options.max(initial=0):
            raise ValueError(f"{what}: shape {m.shape} does not fit {len(n_options)} items "
                             f"with up to {n_options.max(initial=0)} options")
        m = m[:, : max(int(n_options.max(initial=0)), 1)].copy()
        valid = np.arange(m.shape[1])[None, :] < n_options[:, None]
        if not np.isfinite(m[valid]).all():
            raise ValueError(f"{what}: values must be finite for every option")
        m[~valid] = np.nan
    return m



def tie_roots(n: int, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """(n,) a representative item per merged tie group (ties chain transitively); an untied item is its own."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for g in groups:
        r0 = root(g[0])
        for i in g[1:]:
            ri = root(i)
            if ri != r0:
                parent[ri] = r0
    return np.array([root(i) for i in range(n)]) if groups else parent

@dataclass(frozen=True, eq=False)
class Problem:
    """A multiple-choice allocation problem; see the module docstring for the objective.

    keys:        per item, the option keys (unique within an item).
    costs:       resource → (L, K) array (or ragged per-item lists), K = max options; padding ignored.
    losses:      metric → (L, K) degradation (≥ 0, lower is better).
    weights:     metric → weight (default 1 each).
    scales:      metric → normalising reference (default Σ_i max_k loss; see module docstring).
    constraints: `Constraint`s. ties: groups of items choosing the same key. fixed: item → key.
    names:       optional item names (unique); groups: optional per-item labels ("quality", "content").

    >>> p = Problem(keys=[[4, 8], [4, 8]], costs={"bytes": [[2, 4], [5, 10]]},
    ...             losses={"mse": [[0.3, 0.0], [0.1, 0.0]]},
    ...             constraints=[Constraint("bytes", upper=9)])
    """

    keys: Sequence[Sequence[Hashable]]
    costs: Mapping[str, Any]
    losses: Mapping[str, Any]
    weights: Mapping[str, float] | None = None
    constraints: Sequence[Constraint] = ()
    ties: Sequence[Sequence[int | str]] = ()
    fixed: Mapping[int | str, Hashable] = field(default_factory=dict)
    names: Sequence[str] | None = None
    groups: Sequence[str] | None = None
    scales: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        keys = tuple(tuple(k) for k in self.keys)
        if not keys:
            raise ValueError("a problem needs at least one item")
        n_opt = np.array([len(k) for k in keys], dtype=np.int64)
        if (n_opt == 0).any():
            raise ValueError(f"item {self._label(int(np.argmin(n_opt)))} has no options")
        for i, ks in enumerate(keys):
            if len(set(ks)) != len(ks):
                raise ValueError(f"item {self._label(i)} has duplicate option keys {ks}")
        set_ = object.__setattr__
        set_(self, "keys", keys)
        set_(self, "n_options", _frozen(n_opt))
        L = len(keys)
        if self.names is not None:
            names = tuple(str(n) for n in self.names)
            if len(names) != L or len(set(names)) != L:
                raise ValueError("names must give one unique name per item")
            set_(self, "names", names)
        if self.groups is not None:
            groups = tuple(str(g) for g in self.groups)
            if len(groups) != L:
                raise ValueError(f"groups has {len(groups)} labels for {L} items")
            set_(self, "groups", groups)
        if not self.costs:
            raise ValueError("a problem needs at least one cost resource")
        if not self.losses:
            raise ValueError("a problem needs at least one loss metric")
        costs = {r: _frozen(_as_matrix(v, n_opt, f"cost {r!r}")) for r, v in self.costs.items()}
        losses = {m: _frozen(_as_matrix(v, n_opt, f"loss {m!r}")) for m, v in self.losses.items()}
        for m, v in losses.items():
            if (v[np.isfinite(v)] < 0).any():
                raise ValueError(f"loss {m!r} must be a degradation ≥ 0 (lower is better)")
        set_(self, "costs", costs)
        set_(self, "losses", losses)
        weights = {m: 1.0 for m in losses} | dict(self.weights or {})
        for m, w in weights.items():
            if m not in losses:
                raise ValueError(f"weight for unknown metric {m!r}; metrics: {sorted(losses)}")
            if not (np.isfinite(w) and w >= 0):
                raise ValueError(f"weight of {m!r} must be finite and ≥ 0, got {w}")
        set_(self, "weights", weights)
        set_(self, "_given_scales", dict(self.scales or {}))
        scales = {m: float(np.nansum(np.nanmax(v, axis=1))) or 1.0 for m, v in losses.items()}
        for m, s in (self.scales or {}).items():
            if m not in losses:
                raise ValueError(f"scale for unknown metric {m!r}")
            if not (np.isfinite(s) and s > 0):
                raise ValueError(f"scale of {m!r} must be > 0, got {s}")
            scales[m] = float(s)
        set_(self, "scales", scales)
        set_(self, "constraints", self._check_constraints())
        set_(self, "ties", self._check_ties())
        set_(self, "fixed", self._check_fixed())
        self._check_tied_fixed()

    # -- validation ---------------------------------------------------------------------------------
    def _label(self, i: int) -> str:
        return f"{i} ({self.names[i]!r})" if self.names is not None and isinstance(self.names, tuple) else str(i)

    def item_index(self, item: int | str) -> int:
        """Index of an item given by index or name."""
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not 0 <= int(item) < len(self.keys):
                raise ValueError(f"item index {item} out of range 0..{len(self.keys) - 1}")
            return int(item)
        if self.names is None:
            raise ValueError(f"item {item!r} given by name but the problem has no names")
        try:
            return self._name_index[item]
        except KeyError:
            raise ValueError(f"unknown item {item!r}") from None

    @property
    def _name_index(self) -> dict[str, int]:
        cached = self.__dict__.get("_names_cache")
        if cached is None:
            cached = {n: i for i, n in enumerate(self.names or ())}
            object.__setattr__(self, "_names_cache", cached)
        return cached

    def _check_constraints(self) -> tuple[Constraint, ...]:
        out, seen = [], set()
        for c in self.constraints:
            if c.resource not in self.costs:
                raise ValueError(f"constraint on unknown resource {c.resource!r}; resources: {sorted(self.costs)}")
            items = None if c.items is None else tuple(sorted({self.item_index(i) for i in c.items}))
            name = c.name or c.resource
            if name in seen:
                if c.name is not None:
                    raise ValueError(f"two constraints are named {name!r}")
                n = 2
                while f"{name}#{n}" in seen:
                    n += 1
                name = f"{name}#{n}"
            seen.add(name)
            out.append(Constraint(c.resource, c.upper, c.lower, items, float(c.offset), name))
        return tuple(out)

    def _check_ties(self) -> tuple[tuple[int, ...], ...]:
        out = []
        for group in self.ties:
            idx = tuple(sorted({self.item_index(i) for i in group}))
            if len(idx) < 2:
                continue
            common = set(self.keys[idx[0]]).intersection(*(self.keys[i] for i in idx[1:]))
            if not common:
                raise ValueError(f"tied items {idx} share no option key")
            out.append(idx)
        return tuple(out)

    def _check_fixed(self) -> dict[int, Hashable]:
        out = {}
        for item, key in dict(self.fixed).items():
            i = self.item_index(item)
            if key not in self.keys[i]:
                raise ValueError(f"item {self._label(i)} is fixed to {key!r}, which is not among its "
                                 f"options {self.keys[i]}")
            out[i] = key
        return out

    def _check_tied_fixed(self) -> None:
        """Merged tie groups (ties chain transitively) need a common key that agrees with any fixed item."""
        roots = tie_roots(len(self.keys), self.ties)
        merged: dict[int, list[int]] = {}
        for i in {i for g in self.ties for i in g}:
            merged.setdefault(int(roots[i]), []).append(i)
        for members in merged.values():
            common = set(self.keys[members[0]]).intersection(*(self.keys[i] for i in members[1:]))
            pins = {self.fixed[i] for i in members if i in self.fixed}
            if len(pins) > 1 or not common or (pins and not pins <= common):
                raise ValueError(f"tied items {sorted(members)} cannot agree on a key "
                                 f"(common keys {common or '{}'}, fixed to {pins or '-'})")

    # -- derived quantities -------------------------------------------------------------------------
    @classmethod
    def from_options(cls, options: Sequence[Sequence[Option]], **kwargs: Any) -> Problem:
        """Build from per-item lists of `Option`; a resource or metric missing from an option is an error."""
        resources = sorted({r for opts in options for o in opts for r in o.cost})
        metrics = sorted({m for opts in options for o in opts for m in o.loss})

        def table(attr: str, name: str) -> list[list[float]]:
            try:
                return [[getattr(o, attr)[name] for o in opts] for opts in options]
            except KeyError:
                raise ValueError(f"every option needs {attr} {name!r}") from None

        return cls(keys=[[o.key for o in opts] for opts in options],
                   costs={r: table("cost", r) for r in resources},
                   losses={m: table("loss", m) for m in metrics}, **kwargs)

    @classmethod
    def from_frame(cls, frame: Any, *, item: str = "item", key: str = "key", costs: Sequence[str],
                   losses: Sequence[str], **kwargs: Any) -> Problem:
        """Build from a long pandas table with one row per (item, option); item order = first appearance.

        Columns `costs` become resources and `losses` metrics, named as the columns. If `names` is not
        given, the item column's values become the names.
        """
        order = list(dict.fromkeys(frame[item].tolist()))
        pos = {v: i for i, v in enumerate(order)}
        rows: list[list[int]] = [[] for _ in order]
        for r, v in enumerate(frame[item].tolist()):
            rows[pos[v]].append(r)
        col = {c: frame[c].to_numpy() for c in (*costs, *losses)}
        keys_col = frame[key].tolist()
        kwargs.setdefault("names", [str(v) for v in order])
        return cls(keys=[[keys_col[r] for r in rs] for rs in rows],
                   costs={c: [col[c][rs] for rs in rows] for c in costs},
                   losses={m: [col[m][rs] for rs in rows] for m in losses}, **kwargs)

    @property
    def n_items(self) -> int:
        return len(self.keys)

    @property
    def valid(self) -> np.ndarray:
        """(L, K) mask of real options (the rest is padding)."""
        k = next(iter(self.costs.values())).shape[1]
        return np.arange(k)[None, :] < self.n_options[:, None]

    @property
    def objective_matrix(self) -> np.ndarray:
        """(L, K) combined normalised loss Σ_m weight_m·loss_m/scale_m; padding is +inf."""
        cached = self.__dict__.get("_obj_cache")
        if cached is None:
            cached = sum(self.weights[m] / self.scales[m] * np.nan_to_num(v, nan=0.0)
                         for m, v in self.losses.items())
            cached = np.where(self.valid, cached, np.inf)
            object.__setattr__(self, "_obj_cache", _frozen(cached))
        return cached

    def option_index(self, item: int | str, key: Hashable) -> int:
        i = self.item_index(item)
        try:
            return self.keys[i].index(key)
        except ValueError:
            raise ValueError(f"item {self._label(i)} has no option {key!r}") from None

    def constraint(self, name_or_resource: str) -> Constraint:
        """A constraint by name, or the only constraint on a resource."""
        for c in self.constraints:
            if c.name == name_or_resource:
                return c
        hits = [c for c in self.constraints if c.resource == name_or_resource]
        if len(hits) == 1:
            return hits[0]
        raise ValueError(f"no single constraint {name_or_resource!r}; constraints: "
                         f"{[c.name for c in self.constraints]}")

    def constraint_total(self, c: Constraint, choice: np.ndarray) -> float:
        cost = self.costs[c.resource][np.arange(self.n_items), choice]
        return float(c.offset + (cost.sum() if c.items is None else cost[list(c.items)].sum()))

    def violations(self, choice: np.ndarray, rtol: float = 1e-9) -> dict[str, float]:
        """Constraint name → amount by which `choice` breaks it (only broken ones; ties/fixed as 1.0)."""
        choice = np.asarray(choice)
        out = {}
        for c in self.constraints:
            t = self.constraint_total(c, choice)
            if c.upper is not None and t > c.upper + rtol * max(1.0, abs(c.upper)):
                out[c.name] = t - c.upper
            if c.lower is not None and t < c.lower - rtol * max(1.0, abs(c.lower)):
                out[c.name] = c.lower - t
        for group in self.ties:
            if len({self.keys[i][choice[i]] for i in group}) > 1:
                out[f"tie{group}"] = 1.0
        for i, key in self.fixed.items():
            if self.keys[i][choice[i]] != key:
                out[f"fixed[{i}]"] = 1.0
        return out

    def evaluate(self, choice: Sequence[int], *, status: str = "feasible", gap: float = float("nan"),
                 time_s: float = 0.0, backend: str = "", info: Mapping[str, Any] | None = None) -> Solution:
        """The `Solution` for a given option index per item (objective, totals, validity checked)."""
        choice = np.asarray(choice, dtype=np.int64)
        if choice.shape != (self.n_items,) or (choice < 0).any() or (choice >= self.n_options).any():
            raise ValueError("choice must give a valid option index for every item")
        rows = np.arange(self.n_items)
        raw = {m: float(v[rows, choice].sum()) for m, v in self.losses.items()}
        objective = float(sum(self.weights[m] * raw[m] / self.scales[m] for m in raw))
        totals = {}
        for r, v in self.costs.items():
            glob = [c.offset for c in self.constraints if c.resource == r and c.items is None]
            totals[r] = float(v[rows, choice].sum() + (glob[0] if glob else 0.0))
        return Solution(
            status=status, choice=_frozen(choice.copy()),
            keys=tuple(self.keys[i][k] for i, k in enumerate(choice)), objective=objective,
            losses=raw, totals=totals,
            constraint_totals={c.name: self.constraint_total(c, choice) for c in self.constraints},
            gap=gap, time_s=time_s, backend=backend, info=dict(info or {}))

    def with_constraints(self, constraints: Sequence[Constraint]) -> Problem:
        return self.replace(constraints=tuple(constraints))

    def replace(self, **changes: Any) -> Problem:
        """A copy with some fields replaced (validated again)."""
        fields = dict(keys=self.keys, costs=self.costs, losses=self.losses, weights=self.weights,
                      constraints=self.constraints, ties=self.ties, fixed=self.fixed, names=self.names,
                      groups=self.groups, scales=self.__dict__["_given_scales"] or None)
        return Problem(**(fields | changes))

    def subset(self, items: Sequence[int | str]) -> Problem:
        """The problem on some items only; constraints, ties and fixed choices restricted to them.

        A constraint keeps its offset; its items outside the subset are dropped. Metric scales are
        recomputed for the subset unless they were given explicitly.
        """
        idx = sorted({self.item_index(i) for i in items})
        pos = {i: n for n, i in enumerate(idx)}
        cons = []
        for c in self.constraints:
            its = None if c.items is None else [pos[i] for i in c.items if i in pos]
            if its is not None and not its:
                continue
            cons.append(Constraint(c.resource, c.upper, c.lower, its, c.offset, c.name))
        ties = [[pos[i] for i in g if i in pos] for g in self.ties]
        return Problem(
            keys=[self.keys[i] for i in idx], costs={r: v[idx] for r, v in self.costs.items()},
            losses={m: v[idx] for m, v in self.losses.items()}, weights=self.weights, constraints=cons,
            ties=[t for t in ties if len(t) > 1], fixed={pos[i]: k for i, k in self.fixed.items() if i in pos},
            names=None if self.names is None else [self.names[i] for i in idx],
            groups=None if self.groups is None else [self.groups[i] for i in idx],
            scales=self.__dict__["_given_scales"] or None)


@dataclass(frozen=True, eq=False)
class StepProblem:
    """A `Problem` whose losses are also known per denoising-step group, for joint timestep search.

    step_losses: metric → (G, L, K) degradation of item i at option k when only step group g is
                 quantized. Normalised like `Problem.losses`: scale_m = Σ_g Σ_i max_k (or problem.scales
                 when given explicitly there).
    step_groups: G half-open timestep ranges [start, end) (see `evolution.quad_groups`); the search keeps
                 one timestep per group.
    timestep_loss: optional, per group, a degradation for keeping each timestep of the group (length
                 end - start); default 0, i.e. any step of a group is as good as another.
    info:        what the builder wants reported with the solution (e.g. options it did not offer).
    """

    problem: Problem
    step_losses: Mapping[str, Any]
    step_groups: Sequence[tuple[int, int]]
    timestep_loss: Sequence[Any] | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = self.problem
        groups = tuple((int(a), int(b)) for a, b in self.step_groups)
        if any(b <= a for a, b in groups):
            raise ValueError(f"step groups must be non-empty ranges, got {groups}")
        G = len(groups)
        sl = {}
        for m, v in self.step_losses.items():
            if m not in p.losses:
                raise ValueError(f"step loss for metric {m!r} that the problem does not have")
            a = np.asarray(v, dtype=float)
            if a.shape != (G, *p.losses[m].shape):
                raise ValueError(f"step loss {m!r}: shape {a.shape}, expected {(G, *p.losses[m].shape)}")
            if (a[:, p.valid] < 0).any() or not np.isfinite(a[:, p.valid]).all():
                raise ValueError(f"step loss {m!r} must be finite and ≥ 0")
            sl[m] = _frozen(a)
        if not sl:
            raise ValueError("step_losses is empty")
        tl = None
        if self.timestep_loss is not None:
            tl = tuple(_frozen(np.asarray(t, dtype=float)) for t in self.timestep_loss)
            if len(tl) != G or any(t.shape != (b - a,) for t, (a, b) in zip(tl, groups, strict=True)):
                raise ValueError("timestep_loss must give one value per timestep of every group")
        object.__setattr__(self, "step_groups", groups)
        object.__setattr__(self, "step_losses", sl)
        object.__setattr__(self, "timestep_loss", tl)

    @property
    def step_objective(self) -> np.ndarray:
        """(G, L, K) combined normalised loss per step group; padding +inf. A scale given to the
        problem (`Problem(scales=...)`) is used as it is, so Σ_g of this equals the flat objective."""
        p = self.problem
        given = p.__dict__["_given_scales"]
        out = 0.0
        for m, v in self.step_losses.items():
            scale = given.get(m) or float(np.nansum(np.nanmax(np.where(p.valid, v, np.nan), axis=2))) or 1.0
            out = out + p.weights[m] / scale * np.nan_to_num(v, nan=0.0)
        return np.where(p.valid[None], out, np.inf)

    def flatten(self) -> Problem:
        """The consistent-bits problem: losses summed over step groups (for the ILP)."""
        losses = dict(self.problem.losses)
        losses.update({m: np.nan_to_num(v, nan=0.0).sum(axis=0) for m, v in self.step_losses.items()})
        return self.problem.replace(losses=losses)


@dataclass(frozen=True, eq=False)
class Solution:
    """What a solver returns.

    status:      "optimal" (proven, within `gap`), "feasible" (a valid choice; `gap` bounds how far from
                 optimal, NaN if unknown), or "infeasible" (choice is None).
    choice:      option index per item; keys: option key per item.
    objective:   the problem's normalised objective; losses: raw per-metric sums.
    totals:      per resource, Σ over all items plus the offset of the global (items=None) constraint on
                 that resource, if any; constraint_totals: per constraint name, its left-hand side.
    smallest_feasible / binding: for infeasible problems, the least achievable total of the binding
                 constraint (named by `binding`), or None when no single constraint is to blame.
    info:        solver extras (kept steps, families, timings, repairs).
    """

    status: str
    choice: np.ndarray | None
    keys: tuple | None
    objective: float
    losses: Mapping[str, float]
    totals: Mapping[str, float]
    constraint_totals: Mapping[str, float]
    gap: float = float("nan")
    time_s: float = 0.0
    backend: str = ""
    smallest_feasible: float | None = None
    binding: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def feasible(self) -> bool:
        return self.status != "infeasible"

    def error(self) -> InfeasibleBudget:
        return InfeasibleBudget(self.binding, self.info.get("binding_upper"), self.smallest_feasible,
                                self.info.get("binding_resource"))

    def raise_if_infeasible(self) -> Solution:
        """Return self, or raise `InfeasibleBudget` naming the smallest feasible budget."""
        if self.status == "infeasible":
            raise self.error()
        return self

    def plan(self, names: Sequence[str] | None = None) -> dict[Any, Hashable]:
        """item (name or index) → chosen key."""
        self.raise_if_infeasible()
        labels = names if names is not None else range(len(self.keys))
        return dict(zip(labels, self.keys, strict=True))

    @classmethod
    def infeasible(cls, *, binding: str | None, smallest_feasible: float | None, time_s: float,
                   backend: str, info: Mapping[str, Any] | None = None) -> Solution:
        return cls(status="infeasible", choice=None, keys=None, objective=float("nan"), losses={},
                   totals={}, constraint_totals={}, gap=float("nan"), time_s=time_s, backend=backend,
                   smallest_feasible=smallest_feasible, binding=binding, info=dict(info or {}))
