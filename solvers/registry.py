"""Registries by name, and the solver contract.

`Registry` is the one registry helper of the project (solvers, MIP backends, metrics, weight formats,
storages, profiling backends, pipeline adapters): a dict of name → entry with one duplicate rule
(re-registering the same entry is a no-op, a different one under a taken name is an error unless
`replace=True`) and one lookup error that names the choices. It lives here because `solvers` is the
package everything else may import (no torch, no diffusers).

A solver is `f(problem, **options) -> Solution` registered with `@register_solver("name", ...)`, which
declares what it consumes, so the planner (`mpsearch.planning.solve`) dispatches without naming solvers.
Adding a solver is one new file, imported by `solvers/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

from .problem import Problem, Solution

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """Entries by name. `kind` names them in errors; `error` is the exception type of an unknown name;
    `unknown` formats that error with `{kind}`, `{name}` and `{names}` (the registered names, sorted)."""

    def __init__(self, kind: str, *, error: type[Exception] = ValueError,
                 unknown: str = "unknown {kind} {name!r}; available: {names}") -> None:
        super().__init__()
        self.kind, self.error, self.unknown = kind, error, unknown

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Register `entry` as `name`; a different entry under a taken name needs `replace=True`."""
        old = super().get(name)
        if old is not None and not replace and old is not entry and old != entry:
            raise ValueError(f"{self.kind} {name!r} is already registered (pass replace=True to override)")
        self[name] = entry
        return entry

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator form of `add`: `@registry.register("name")`."""

        def deco(entry: T) -> T:
            return self.add(name, entry, replace=replace)

        return deco

    def lookup(self, name: str) -> T:
        """The entry of `name`, or `self.error` naming the registered choices."""
        try:
            return self[name]
        except KeyError:
            names = ", ".join(sorted(self))
            raise self.error(self.unknown.format(kind=self.kind, name=name, names=names)) from None

    def names(self) -> list[str]:
        return sorted(self)


SolverFn = Callable[..., Solution]
CONSUMES = ("problem", "steps")
BUDGET_USES = ("ceiling", "target")


@dataclass(frozen=True)
class SolverSpec:
    """What a solver consumes, so a planner can feed it without knowing its name.

    consumes:     "problem" (a `Problem`: bits only; with kept steps, the planner keeps evenly spaced
                  ones) or "steps" (a `StepProblem`: the solver searches kept steps and bits jointly, and
                  takes `start=`, `step_fitness=` and `evaluate=` callbacks).
    budget:       "ceiling" (the budget is a hard constraint row of the problem) or "target" (the
                  problem has no budget row; the budget's value is passed as `target=`).
    budget_kinds: the budget kinds accepted (`Budget.kind`: bytes, percent, bits, bitops, ...); None = all.
    weight_only:  allocates weight bits only (activations stay at 16 bits).
    prunes:       can choose to prune whole units.
    options:      the solver's options dataclass: its fields are the keyword options the solver accepts
                  (a planner fills same-named fields, e.g. `backend`, `time_limit`, from its own options).
    label:        how messages name the solver (default: "solver 'name'").
    act_cost:     the cost its activation allocation reads (e.g. "abits": input elements × activation bits);
                  a planner refuses a problem that offers activation options without it.
    image_pick:   it chooses among candidate plans by their images: it takes `pick=` (a `Solution ->
                  float`, lower is better: pixel MSE of the plan's images against FP), which a planner
                  builds when it is given a model.
    rerank:       its plan may be re-ranked by measurement: with a model at hand a planner measures
                  `solvers.candidates.distinct_plans` (K distinct plans under the same constraints, found
                  with this solver's options) and keeps the best measured (`mpsearch.planning.rerank`).

    A "steps" solver also takes `finalists=` (how many of its best candidates `evaluate` re-ranks); its
    options dataclass may define `max_candidates() -> int`, an upper bound on the candidates it scores
    (for progress bars).
    """

    name: str
    fn: SolverFn
    consumes: str = "problem"
    budget: str = "ceiling"
    budget_kinds: tuple[str, ...] | None = None
    weight_only: bool = False
    prunes: bool = True
    options: type | None = None
    label: str = ""
    act_cost: str | None = None
    image_pick: bool = False
    rerank: bool = False

    def __post_init__(self) -> None:
        if self.consumes not in CONSUMES:
            raise ValueError(f"solver {self.name!r}: consumes must be one of {CONSUMES}, got {self.consumes!r}")
        if self.budget not in BUDGET_USES:
            raise ValueError(f"solver {self.name!r}: budget must be one of {BUDGET_USES}, got {self.budget!r}")
        if not self.label:
            object.__setattr__(self, "label", f"solver {self.name!r}")

    def option_names(self) -> set[str]:
        """Names of the options the solver accepts (the fields of its options dataclass)."""
        return {f.name for f in fields(self.options)} if self.options is not None else set()

    def accepts(self, budget_kind: str) -> bool:
        return self.budget_kinds is None or budget_kind in self.budget_kinds

    def __call__(self, problem: Any, **options: Any) -> Solution:
        return self.fn(problem, **options)


SOLVERS: Registry[SolverSpec] = Registry("solver")


def register_solver(name: str, *, consumes: str = "problem", budget: str = "ceiling",
                    budget_kinds: Iterable[str] | None = None, weight_only: bool = False, prunes: bool = True,
                    options: type | None = None, label: str = "", act_cost: str | None = None,
                    image_pick: bool = False, rerank: bool = False) -> Callable[[SolverFn], SolverFn]:
    """Decorator: make `fn` reachable as `get_solver(name)`, declaring what it consumes (see `SolverSpec`)."""

    def deco(fn: SolverFn) -> SolverFn:
        kinds = tuple(budget_kinds) if budget_kinds is not None else None
        old = SOLVERS.get(name)
        if old is not None and old.fn is not fn:
            raise ValueError(f"solver {name!r} is already registered")
        SOLVERS[name] = SolverSpec(name, fn, consumes, budget, kinds, weight_only, prunes, options, label,
                                   act_cost, image_pick, rerank)
        return fn

    return deco


def get_solver(name: str) -> SolverSpec:
    """The spec of solver `name`; call it like the function: `get_solver("ilp")(problem, backend="cbc")`."""
    return SOLVERS.lookup(name)


def available_solvers() -> list[str]:
    return SOLVERS.names()


def solve(problem: Problem, method: str = "ilp", **options: Any) -> Solution:
    """Solve `problem` with the named solver (default: the exact ILP)."""
    return get_solver(method)(problem, **options)
