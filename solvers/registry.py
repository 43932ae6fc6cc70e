"""Solvers by name. A solver is `f(problem, **options) -> Solution`; adding one is a new file with
`@register_solver("name")`, never an edit to a dispatcher."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .problem import Problem, Solution

SolverFn = Callable[..., Solution]
_SOLVERS: dict[str, SolverFn] = {}


def register_solver(name: str) -> Callable[[SolverFn], SolverFn]:
    """Decorator: make `fn` reachable as `get_solver(name)`."""

    def deco(fn: SolverFn) -> SolverFn:
        if name in _SOLVERS and _SOLVERS[name] is not fn:
            raise ValueError(f"solver {name!r} is already registered")
        _SOLVERS[name] = fn
        return fn

    return deco


def get_solver(name: str) -> SolverFn:
    try:
        return _SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; available: {available_solvers()}") from None


def available_solvers() -> list[str]:
    return sorted(_SOLVERS)


def solve(problem: Problem, method: str = "ilp", **options: Any) -> Solution:
    """Solve `problem` with the named solver (default: the exact ILP)."""
    return get_solver(method)(problem, **options)
