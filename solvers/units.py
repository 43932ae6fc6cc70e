"""A `Problem` rewritten for the integer program: ties merged into units, fixed items pinned,
dominated options dropped.

A unit is a set of items that choose together: a tie group (its options are the keys all members
share, costs and losses summed over members) or a single item. Fixing an item leaves its unit one option.
Every solver then works on one "exactly one option per unit" model with constraint rows
`lo_c ≤ Σ_u A[c, u, choice_u] ≤ hi_c` (offsets already moved to the bounds).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .problem import Problem, tie_roots


@dataclass(frozen=True, eq=False)
class UnitModel:
    obj: np.ndarray        # (U, K) objective per unit option; +inf where not an option
    A: np.ndarray          # (C, U, K) constraint coefficients; 0 where not an option
    lo: np.ndarray         # (C,) lower bounds (−inf if none), offsets removed
    hi: np.ndarray         # (C,) upper bounds (+inf if none), offsets removed
    valid: np.ndarray      # (U, K) options still allowed
    names: tuple[str, ...]  # constraint names
    unit_of: np.ndarray    # (L,) unit of each item
    opt_of: np.ndarray     # (L, K) item option index for unit option k of the item's unit (−1: none)

    @property
    def n_units(self) -> int:
        return self.obj.shape[0]

    def decode(self, unit_choice: np.ndarray) -> np.ndarray:
        """Option index per item from option index per unit."""
        return self.opt_of[np.arange(len(self.unit_of)), np.asarray(unit_choice)[self.unit_of]]

    def encode(self, item_choice: np.ndarray) -> np.ndarray | None:
        """Unit choice for an item choice (None if it breaks a tie or a fixed item)."""
        L = len(self.unit_of)
        hit = self.opt_of == np.asarray(item_choice)[:, None]
        hit &= self.valid[self.unit_of]
        k = np.where(hit.any(1), hit.argmax(1), -1)
        out = np.full(self.n_units, -1)
        out[self.unit_of] = k
        if (out < 0).any() or (out[self.unit_of] != k).any() or not L:
            return None
        return out

    def totals(self, unit_choice: np.ndarray) -> np.ndarray:
        return self.A[:, np.arange(self.n_units), unit_choice].sum(axis=1)

    def feasible(self, unit_choice: np.ndarray, rtol: float = 1e-9) -> bool:
        t = self.totals(unit_choice)
        tol = rtol * np.maximum(1.0, np.abs(np.where(np.isfinite(self.hi), self.hi, 0.0)))
        tol_lo = rtol * np.maximum(1.0, np.abs(np.where(np.isfinite(self.lo), self.lo, 0.0)))
        return bool(np.all(t <= self.hi + tol) and np.all(t >= self.lo - tol_lo))

    def objective(self, unit_choice: np.ndarray) -> float:
        return float(self.obj[np.arange(self.n_units), unit_choice].sum())

    def drop_constraint(self, c: int) -> UnitModel:
        keep = np.arange(len(self.names)) != c
        return replace(self, A=self.A[keep], lo=self.lo[keep], hi=self.hi[keep],
                       names=tuple(n for n, k in zip(self.names, keep, strict=True) if k))

    def with_objective(self, obj: np.ndarray) -> UnitModel:
        return replace(self, obj=np.where(self.valid, obj, np.inf))

    def min_cost(self) -> np.ndarray:
        """(C,) least achievable Σ_u A[c] for each row on its own (a bound)."""
        return np.where(self.valid[None], self.A, np.inf).min(axis=2).sum(axis=1)


def build_units(problem: Problem, objective: np.ndarray | None = None, *, prune: bool = True) -> UnitModel:
    """Compile `problem` (or its items with another (L, K) objective) into a `UnitModel`.

    With `prune`, an option is dropped when another option of the same unit is at least as good
    everywhere: no more costly in any constraint row and no higher in objective.
    That is exact when no constraint has a lower bound: swapping to the dominating option keeps every
    upper bound and never raises the objective. Merged ties are plain units, so it is exact for them too.
    """
    L, K = problem.valid.shape
    objm = problem.objective_matrix if objective is None else np.where(problem.valid, objective, np.inf)
    roots = tie_roots(L, problem.ties)
    uniq, unit_of = np.unique(roots, return_inverse=True)
    U = len(uniq)
    sizes = np.bincount(unit_of, minlength=U)
    pinned = np.zeros(U, bool)
    pinned[unit_of[list(problem.fixed)]] = True
    simple = (sizes[unit_of] == 1) & ~pinned[unit_of]
    opt_of = np.where(problem.valid & simple[:, None], np.arange(K)[None, :], -1)
    n_unit_opt = np.zeros(U, np.int64)
    n_unit_opt[unit_of[simple]] = problem.n_options[simple]
    for u in np.flatnonzero((sizes > 1) | pinned):
        members = np.flatnonzero(unit_of == u)
        keys = [k for k in problem.keys[members[0]] if all(k in problem.keys[i] for i in members[1:])]
        pins = {problem.fixed[i] for i in members if i in problem.fixed}
        if len(pins) > 1:
            raise ValueError(f"tied items {members.tolist()} are fixed to different keys {pins}")
        if pins:
            keys = [k for k in keys if k in pins]
        if not keys:
            raise ValueError(f"tied items {members.tolist()} have no common option (fixed: {pins})")
        for i in members:
            opt_of[i, : len(keys)] = [problem.keys[i].index(k) for k in keys]
        n_unit_opt[u] = len(keys)
    Ku = int(n_unit_opt.max())
    opt_of = opt_of[:, :Ku]
    valid = np.arange(Ku)[None, :] < n_unit_opt[:, None]
    ii, kk = np.nonzero(opt_of >= 0)
    lin = unit_of[ii] * Ku + kk
    oo = opt_of[ii, kk]

    def gather(values: np.ndarray) -> np.ndarray:
        return np.bincount(lin, weights=values, minlength=U * Ku).reshape(U, Ku)

    obj = np.where(valid, gather(objm[ii, oo]), np.inf)
    C = len(problem.constraints)
    A = np.zeros((C, U, Ku))
    lo, hi = np.full(C, -np.inf), np.full(C, np.inf)
    for c, con in enumerate(problem.constraints):
        w = problem.costs[con.resource][ii, oo]
        if con.items is not None:
            member = np.zeros(L, bool)
            member[list(con.items)] = True
            w = w * member[ii]
        A[c] = gather(w)
        if con.upper is not None:
            hi[c] = con.upper - con.offset
        if con.lower is not None:
            lo[c] = con.lower - con.offset
    if prune and Ku > 1 and not np.isfinite(lo).any():
        valid = valid & ~_dominated(obj, A, valid)
    return UnitModel(obj=np.where(valid, obj, np.inf), A=A, lo=lo, hi=hi, valid=valid,
                     names=tuple(c.name for c in problem.constraints), unit_of=unit_of, opt_of=opt_of)


def _dominated(obj: np.ndarray, A: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(U, K) True where another valid option j is ≤ in objective and every row, and either strictly
    better somewhere or equal with a lower index (so exactly one of identical options survives)."""
    U, K = obj.shape
    out = np.zeros((U, K), bool)
    o = np.where(valid, obj, np.inf)
    for j in range(K):
        le = (o[:, j:j + 1] <= o) & (A[:, :, j:j + 1] <= A).all(axis=0) & valid[:, j:j + 1]
        lt = (o[:, j:j + 1] < o) | (A[:, :, j:j + 1] < A).any(axis=0)
        earlier = np.arange(K)[None, :] > j
        dom = le & (lt | earlier)
        dom[:, j] = False
        out |= dom
    return out & valid
