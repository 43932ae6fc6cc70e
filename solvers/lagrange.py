"""Lagrangian bounds for the unit model, used to shrink the integer program before solving it.

For multipliers λ_c ≥ 0 (upper rows) and μ_c ≥ 0 (lower rows), every feasible choice x satisfies

    J(x) ≥ L(λ, μ) + Σ_u rc[u, x_u],   L = Σ_u min_k r[u, k] − Σ λ_c hi_c + Σ μ_c lo_c,
    r[u, k] = obj[u, k] + Σ_c (λ_c − μ_c)·A[c, u, k],   rc = r − min_k r ≥ 0.

So with any feasible incumbent of value UB, options with rc > UB − L are in no optimal solution
(reduced-cost fixing). For one upper budget the best λ is found by bisection and the Lagrangian argmin
just past it, greedily filled, is a feasible incumbent; the remaining "core" is usually a few dozen
units. For several rows the multipliers are the duals of the LP relaxation (GLOP).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .units import UnitModel


@dataclass
class Bound:
    lower: float                 # L(λ, μ)
    rc: np.ndarray               # (U, K) reduced costs (+inf on invalid options)
    incumbent: np.ndarray | None  # a feasible unit choice, if one was found
    upper: float                 # its objective (+inf if none)
    penalty: np.ndarray          # (C,) λ − μ


def _evaluate(m: UnitModel, penalty: np.ndarray, lam: np.ndarray, mu: np.ndarray):
    r = m.obj + np.tensordot(penalty, m.A, axes=1) if len(penalty) else m.obj.copy()
    r = np.where(m.valid, r, np.inf)
    best = r.min(axis=1)
    const = -np.sum(lam * np.where(np.isfinite(m.hi), m.hi, 0.0)) + np.sum(mu * np.where(np.isfinite(m.lo), m.lo, 0.0))
    return float(best.sum() + const), r - best[:, None], r.argmin(axis=1)


def _greedy_fill(m: UnitModel, choice: np.ndarray) -> np.ndarray:
    """Spend the slack of a single upper row on the best objective-per-cost upgrades (feasible stays)."""
    a, U = m.A[0], m.n_units
    rows = np.arange(U)
    choice = choice.copy()
    slack = m.hi[0] - a[rows, choice].sum()
    d_obj = m.obj[rows, choice][:, None] - m.obj          # gain of switching
    d_cost = a - a[rows, choice][:, None]
    ok = m.valid & (d_obj > 0)
    ratio = np.where(ok, d_obj / np.maximum(d_cost, 1e-300), -np.inf)
    ratio = np.where(ok & (d_cost <= 0), np.inf, ratio)
    best_k = ratio.argmax(axis=1)
    order = np.argsort(-ratio[rows, best_k], kind="stable")
    for u in order:
        k = best_k[u]
        if not ok[u, k]:
            break
        if d_cost[u, k] <= slack:
            slack -= d_cost[u, k]
            choice[u] = k
    return choice


def single_budget_bound(m: UnitModel, iters: int = 100) -> Bound:
    """Bisection on λ for a model with exactly one row, an upper bound only."""
    a, hi = m.A[0], m.hi[0]
    rows = np.arange(m.n_units)
    zero = np.zeros(1)

    def at(lam: float):
        return _evaluate(m, np.array([lam]), np.array([lam]), zero)

    L0, rc0, ch0 = at(0.0)
    if a[rows, ch0].sum() <= hi:
        return Bound(L0 + 0.0, rc0, ch0, m.objective(ch0), np.zeros(1))
    lam_hi = 1.0
    # scale the starting λ to the problem: objective spread per unit of cost
    spread = np.nanmax(np.where(m.valid, m.obj, np.nan)) - np.nanmin(np.where(m.valid, m.obj, np.nan))
    lam_hi = max(spread, 1e-300) / max(float(np.abs(a).max()), 1e-300)
    for _ in range(200):
        if a[rows, at(lam_hi)[2]].sum() <= hi:
            break
        lam_hi *= 4
    lam_lo = 0.0
    for _ in range(iters):
        mid = 0.5 * (lam_lo + lam_hi)
        if mid in (lam_lo, lam_hi):
            break
        if a[rows, at(mid)[2]].sum() <= hi:
            lam_hi = mid
        else:
            lam_lo = mid
    L_lo, rc_lo, _ = at(lam_lo)
    L_hi, rc_hi, ch = at(lam_hi)
    inc = _greedy_fill(m, ch) if a[rows, ch].sum() <= hi else None
    lower, rc, lam = (L_hi, rc_hi, lam_hi) if L_hi >= L_lo else (L_lo, rc_lo, lam_lo)
    return Bound(lower, rc, inc, m.objective(inc) if inc is not None else np.inf, np.array([lam]))


def lp_bound(m: UnitModel) -> Bound | None:
    """Multipliers from the LP relaxation's duals (GLOP); None if the LP is not solved."""
    from ortools.linear_solver import pywraplp

    solver = pywraplp.Solver.CreateSolver("GLOP")
    uu, kk = np.nonzero(m.valid)
    xs = [solver.NumVar(0.0, 1.0, "") for _ in range(len(uu))]
    starts = np.searchsorted(uu, np.arange(m.n_units + 1))
    for u in range(m.n_units):
        row = solver.Constraint(1, 1)
        for x in xs[starts[u]:starts[u + 1]]:
            row.SetCoefficient(x, 1)
    scale = np.abs(m.A).max(axis=(1, 2), initial=0.0)
    scale = np.where(scale > 0, scale, 1.0)
    inf = solver.infinity()
    rows = []
    for c in range(len(m.names)):
        row = solver.Constraint(m.lo[c] / scale[c] if np.isfinite(m.lo[c]) else -inf,
                                m.hi[c] / scale[c] if np.isfinite(m.hi[c]) else inf)
        coef = m.A[c, uu, kk] / scale[c]
        for n in np.flatnonzero(coef):
            row.SetCoefficient(xs[n], float(coef[n]))
        rows.append(row)
    obj = solver.Objective()
    for x, v in zip(xs, m.obj[uu, kk].tolist(), strict=True):
        obj.SetCoefficient(x, v)
    obj.SetMinimization()
    if solver.Solve() != pywraplp.Solver.OPTIMAL:
        return None
    d = np.array([r.dual_value() for r in rows]) / scale
    best = None
    for sign in (1.0, -1.0):  # take whichever dual sign convention gives the stronger (valid) bound
        lam = np.where(np.isfinite(m.hi), np.maximum(0.0, -sign * d), 0.0)
        mu = np.where(np.isfinite(m.lo), np.maximum(0.0, sign * d), 0.0)
        L, rc, ch = _evaluate(m, lam - mu, lam, mu)
        if best is None or L > best[0]:
            best = (L, rc, ch, lam - mu)
    L, rc, ch, pen = best
    values = np.array([x.solution_value() for x in xs])
    candidates = [ch]
    rounded = np.zeros(m.n_units, np.int64)
    order = np.argsort(values, kind="stable")  # the last write per unit is its largest x
    rounded[uu[order]] = kk[order]
    candidates.append(rounded)
    feas = [c for c in candidates if m.feasible(c, rtol=0.0)]
    inc = min(feas, key=m.objective) if feas else None
    return Bound(L, rc, inc, m.objective(inc) if inc is not None else np.inf, pen)
