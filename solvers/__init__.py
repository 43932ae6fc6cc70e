"""Bit allocation on plain numbers: a `Problem` in, a `Solution` out (no torch, no diffusers).

    from solvers import Problem, Constraint, solve
    sol = solve(problem, "ilp", backend="cbc")      # or get_solver("ilp")(problem)

Solvers: ilp (exact; cbc | scip | cpsat), mixdq (MixDQ's per-group ILPs and k-sweep), evolution
(TMPQ-DM joint timestep + bit search), bruteforce (tests). `pareto_front` traces loss against a budget.
"""

from . import bruteforce, evolution, ilp, mixdq  # noqa: F401  (importing registers the solvers)
from .backends import available_backends
from .evolution import EvolutionConfig, quad_groups, solve_evolution
from .ilp import smallest_feasible, solve_ilp
from .mixdq import MixDQPlan, MixDQResult, mixdq_search, solve_mixdq
from .pareto import ParetoFront, pareto_front
from .problem import Constraint, InfeasibleBudget, Option, Problem, Solution, StepProblem
from .registry import available_solvers, get_solver, register_solver, solve

__all__ = [
    "Constraint", "EvolutionConfig", "InfeasibleBudget", "MixDQPlan", "MixDQResult", "Option", "ParetoFront",
    "Problem", "Solution", "StepProblem", "available_backends", "available_solvers", "get_solver",
    "mixdq_search", "pareto_front", "quad_groups", "register_solver", "smallest_feasible", "solve",
    "solve_evolution", "solve_ilp", "solve_mixdq",
]
