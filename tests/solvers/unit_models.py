"""Exhaustive enumeration of a `solvers.units.UnitModel`: the reference the unit-model tests hold
`build_units`, the Lagrangian bounds and the MIP backends to. Tiny models only (every unit choice is listed)."""

from __future__ import annotations

import itertools

import numpy as np

from solvers.units import UnitModel


def all_choices(m: UnitModel) -> np.ndarray:
    """(N, U) every choice of one valid option per unit, in lexicographic order."""
    options = [np.flatnonzero(m.valid[u]) for u in range(m.n_units)]
    return np.array(list(itertools.product(*options)), dtype=np.int64).reshape(-1, m.n_units)


def feasible_choices(m: UnitModel, rtol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """(choices (N, U), objectives (N,)) of the unit choices that keep every row of `m`."""
    grid = all_choices(m)
    ok = np.array([m.feasible(c, rtol) for c in grid], dtype=bool)
    grid = grid[ok].reshape(-1, m.n_units)
    return grid, np.array([m.objective(c) for c in grid], dtype=float)


def optimum(m: UnitModel) -> float | None:
    """The least objective over feasible unit choices; None when no choice is feasible."""
    _, obj = feasible_choices(m)
    return float(obj.min()) if len(obj) else None
