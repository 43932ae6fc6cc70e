"""All-or-nothing groups: items that take one option key all together or not at all (LAPTOP-Diff's
"pruned": a block's layers leave together), while otherwise each item chooses its own option.

A tie (`Problem.ties`) makes items agree on every key; this constrains the one key only. It is written as
two linear rows, so any solver that honours the constraints honours the group (ILP, brute force). With
x_i = 1 when item i takes the key and f the group's first (smallest) item, n items:

    <name>:first-if-any   Σ_{i≠f} x_i − (n−1)·x_f ≤ 0    another item takes the key ⇒ the first does
    <name>:all-if-first   (n−1)·x_f − Σ_{i≠f} x_i ≤ 0    the first takes it ⇒ every other does

Each row is a resource of its own (named like the row) with coefficients on the key's column only. Both
rows are upper bounds, so the exact dominance reduction of `units.build_units` still applies.
`groups_of(problem)` reads the groups back from a problem's rows, for solvers that search a group as one
gene (evolution); it recognises only rows exactly as `all_or_nothing_rows` writes them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from .problem import Constraint, Problem

__all__ = ["AllOrNothing", "all_or_nothing_rows", "groups_of"]

_ANY, _ALL = ":first-if-any", ":all-if-first"


@dataclass(frozen=True)
class AllOrNothing:
    """Items (indices, ascending) that take `key` all together or not at all."""

    name: str
    key: Hashable
    items: tuple[int, ...]


def all_or_nothing_rows(keys: Sequence[Sequence[Hashable]], name: str, key: Hashable,
                        items: Sequence[int]) -> tuple[dict[str, list[list[float]]], list[Constraint]]:
    """The cost columns (resource → per-item list over that item's options) and the two constraints that
    make `items` take `key` all or none; add both to a `Problem`. A group of one item needs no row.

    >>> costs, cons = all_or_nothing_rows([[4, "pruned"], [4, "pruned"], [4]], "unit", "pruned", [0, 1])
    >>> [c.name for c in cons]
    ['unit:first-if-any', 'unit:all-if-first']
    """
    items = sorted({int(i) for i in items})
    for i in items:
        if key not in keys[i]:
            raise ValueError(f"all-or-nothing group {name!r}: item {i} has no option {key!r}")
    if len(items) < 2:
        return {}, []
    first, n = items[0], len(items)
    coef = {i: (-(n - 1) if i == first else 1) for i in items}
    costs, cons = {}, []
    for sign, tag in ((1, _ANY), (-1, _ALL)):
        res = name + tag
        costs[res] = [[float(sign * coef[i]) if i in coef and k == key else 0.0 for k in ks]
                      for i, ks in enumerate(keys)]
        cons.append(Constraint(res, upper=0.0, items=items, name=res))
    return costs, cons


def groups_of(problem: Problem) -> list[AllOrNothing]:
    """The all-or-nothing groups encoded in `problem`'s constraints (rows written by
    `all_or_nothing_rows`, found by their structure and checked coefficient by coefficient)."""
    by_name = {c.name: c for c in problem.constraints}
    out = []
    for c in problem.constraints:
        if not (c.name.endswith(_ANY) and c.upper == 0 and c.lower is None and c.offset == 0
                and c.items is not None and len(c.items) >= 2):
            continue
        name = c.name[: -len(_ANY)]
        partner = by_name.get(name + _ALL)
        if partner is None or partner.items != c.items or partner.upper != 0 or partner.lower is not None \
                or partner.offset != 0:
            continue
        row = np.nan_to_num(problem.costs[c.resource], nan=0.0)
        first = c.items[0]
        hits = np.flatnonzero(row[first] != 0)
        if len(hits) != 1:
            continue
        key = problem.keys[first][hits[0]]
        try:
            costs, _ = all_or_nothing_rows(problem.keys, name, key, c.items)
        except ValueError:
            continue
        same = all(np.array_equal(np.nan_to_num(problem.costs[con.resource], nan=0.0),
                                  _padded(costs[name + tag], row.shape))
                   for con, tag in ((c, _ANY), (partner, _ALL)))
        if same:
            out.append(AllOrNothing(name, key, tuple(c.items)))
    return out


def _padded(rows: list[list[float]], shape: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape)
    for i, r in enumerate(rows):
        m[i, : len(r)] = r
    return m
