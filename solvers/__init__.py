"""Bit allocation on plain numbers: a `Problem` in, a `Solution` out (no torch, no diffusers).

    from solvers import Problem, Constraint, solve
    sol = solve(problem, "ilp", backend="cbc")      # or get_solver("ilp")(problem)

Solvers: ilp (exact; cbc | scip | cpsat), mixdq (MixDQ's per-group ILPs and k-sweep), evolution
(TMPQ-DM joint timestep + bit search), bruteforce (tests). `pareto_front` traces loss against a budget.
Each registers with `@register_solver(name, consumes=..., budget=..., options=...)` (see `registry.py`);
adding one is a new file imported below.
"""

from . import bruteforce, evolution, ilp, mixdq  # noqa: F401  (importing registers the solvers)
from .backends import available_backends
from .candidates import Candidate, distinct_plans
from .evolution import EvolutionConfig, EvolutionOptions, quad_groups, solve_evolution
from .ilp import IlpOptions, smallest_feasible, solve_ilp
from .mixdq import MixDQOptions, MixDQPlan, MixDQResult, mixdq_act_search, mixdq_search, solve_mixdq
from .pareto import ParetoFront, pareto_front
from .problem import Constraint, InfeasibleBudget, Option, Problem, Solution, StepProblem
from .registry import Registry, SolverSpec, available_solvers, get_solver, register_solver, solve

__all__ = [
    "Candidate", "Constraint", "EvolutionConfig", "EvolutionOptions", "IlpOptions", "InfeasibleBudget", "MixDQOptions",
    "MixDQPlan", "MixDQResult", "Option", "ParetoFront", "Problem", "Registry", "Solution", "SolverSpec",
    "StepProblem", "available_backends", "available_solvers", "distinct_plans", "get_solver",
    "mixdq_act_search", "mixdq_search", "pareto_front", "quad_groups", "register_solver", "smallest_feasible", "solve",
    "solve_evolution", "solve_ilp", "solve_mixdq",
]
