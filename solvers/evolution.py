"""TMPQ-DM's joint search over kept timesteps and per-layer bits (§2 of reference/methods.md).

Timesteps are split into non-uniform (quadratic) groups, fine near t = 0, and a candidate keeps one step
per group. Every item (unit of tied items) carries genes: one per component of its option key (a (w, a)
key gives a weight gene and an activation gene), or one option gene when keys are not tuples. Evolution
as in the released code: population 50, top-10 parents, 25 mutations (per-gene probability 0.25; a
timestep gene is resampled within its group), 10 uniform crossovers, 15 random candidates per epoch,
duplicates rejected. Every candidate meets every constraint of the problem (the BitOPs ceiling): random
ones are repaired by moving random units to cheaper options, offspring that break a constraint are
discarded and redrawn.

All-or-nothing groups (`solvers.all_or_nothing`, LAPTOP-Diff's pruned blocks) get one gene each, "taken"
or not, beside the option genes of their items, which keep their bits while the group is kept: a block is
pruned whole or not at all in every candidate, by construction. Mutation flips the gene with the same
probability as any other, crossover mixes it, random candidates take each group with probability 1/2, and
repair may take a group (prune a block) to fit the budget. The seed candidate takes none.

Fitness is a surrogate: Σ_g Σ_i step_loss[g, i, choice_i] (normalised as in `StepProblem`) plus the
kept steps' `timestep_loss` (or a `step_fitness` of the whole kept set, measured). An optional `evaluate(solution, kept_steps) -> float` (e.g. FID of sampled
images) re-ranks the best `rerank_top` candidates at the end, as TMPQ-DM re-evaluates its top 10.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .all_or_nothing import AllOrNothing, groups_of
from .problem import Problem, Solution, StepProblem
from .registry import register_solver
from .units import UnitModel, build_units

__all__ = ["EvolutionConfig", "quad_groups", "solve_evolution"]


@dataclass(frozen=True)
class EvolutionConfig:
    population: int = 50
    parents: int = 10
    mutations: int = 25
    crossovers: int = 10
    m_prob: float = 0.25
    init_m_prob: float = 0.1
    epochs: int = 20
    rerank_top: int = 10
    seed: int = 0


def quad_groups(n_groups: int, n_steps: int = 1000) -> list[tuple[int, int]]:
    """TMPQ-DM's quadratic timestep groups: boundaries ⌊(i·√(0.8·T)/(N−1))²⌋, i = 1..N−1.

    >>> quad_groups(5)
    [(0, 50), (50, 200), (200, 450), (450, 800), (800, 1000)]
    """
    if n_groups < 1:
        raise ValueError("n_groups must be ≥ 1")
    if n_groups == 1:
        return [(0, n_steps)]
    cuts = [int(math.floor((i * math.sqrt(0.8 * n_steps) / (n_groups - 1)) ** 2)) for i in range(1, n_groups)]
    edges = [0, *cuts, n_steps]
    groups = list(zip(edges[:-1], edges[1:], strict=True))
    if any(b <= a for a, b in groups):
        raise ValueError(f"{n_groups} groups do not fit {n_steps} steps")
    return groups


class _Genome:
    """A candidate is `(choice, flags)`: an option index per unit and, per all-or-nothing group
    (`solvers.all_or_nothing`: LAPTOP-Diff's pruned blocks), whether the group takes its key. `choice`
    never holds a group's key for the group's units (it keeps their bits while the group is kept, so
    un-pruning restores them); `decode` sets the units of taken groups to the key. Every decoded choice
    therefore satisfies every group: no block is ever partly pruned.

    Option genes: one per component of a unit's option key ((w, a) → a weight and an activation gene),
    or one option gene when keys are not tuples; vectorised over units with the same allowed keys.
    """

    def __init__(self, problem: Problem, m: UnitModel, groups: list[AllOrNothing]) -> None:
        U = m.n_units
        rows = np.arange(U)
        first = np.array([np.flatnonzero(m.unit_of == u)[0] for u in range(U)])
        self.allowed = m.valid.copy()
        # groups at the unit level: member units, and each member's unit option for the key
        self.members: list[np.ndarray] = []
        self.key_opt: list[np.ndarray] = []
        self.can: list[bool] = []  # False: some member cannot take the key, so the group is always kept
        self.names: list[str] = []
        owner = np.full(U, -1)
        for g in groups:
            units = np.unique(m.unit_of[list(g.items)])
            inside = np.isin(np.flatnonzero(np.isin(m.unit_of, units)), g.items).all()
            if not inside or (owner[units] >= 0).any():
                continue  # a tie reaches outside the group, or groups overlap: its rows alone guard it
            ks = np.full(len(units), -1)
            for n, u in enumerate(units):
                i = first[u]
                hit = [k for k in np.flatnonzero(m.valid[u]) if problem.keys[i][m.opt_of[i, k]] == g.key]
                ks[n] = hit[0] if hit else -1
            owner[units] = len(self.members)
            self.names.append(g.name)
            self.members.append(units)
            self.key_opt.append(ks)
            self.can.append(bool((ks >= 0).all()))
            self.allowed[units[ks >= 0], ks[ks >= 0]] = False
        if (self.allowed.sum(axis=1) == 0).any():
            raise ValueError("a unit of an all-or-nothing group has no option besides the group's key")
        self.grouped = owner >= 0
        self.n_opt = self.allowed.sum(axis=1)
        self.local_to_opt = np.full(m.valid.shape, -1)
        self.opt_to_local = np.full(m.valid.shape, -1)
        for u in range(U):
            opts = np.flatnonzero(self.allowed[u])
            self.local_to_opt[u, : len(opts)] = opts
            self.opt_to_local[u, opts] = np.arange(len(opts))
        keys = [tuple(problem.keys[i][m.opt_of[i, k]] for k in np.flatnonzero(self.allowed[u]))
                for u, i in zip(rows, first, strict=True)]
        self.tables: list[tuple[np.ndarray, np.ndarray]] = []  # (units, swap[k, j, v] → local option or −1)
        by_sig: dict[tuple, list[int]] = {}
        for u, ks in enumerate(keys):
            by_sig.setdefault(ks, []).append(u)
        for ks, units in by_sig.items():
            if all(isinstance(k, tuple) for k in ks) and len({len(k) for k in ks}) == 1 and len(ks[0]) > 1:
                d = len(ks[0])
                values = [sorted({k[j] for k in ks}, key=repr) for j in range(d)]
                V = max(len(v) for v in values)
                swap = np.full((len(ks), d, V), -1)
                index = {k: n for n, k in enumerate(ks)}
                for n, k in enumerate(ks):
                    for j in range(d):
                        for v_i, v in enumerate(values[j]):
                            swap[n, j, v_i] = index.get((*k[:j], v, *k[j + 1:]), -1)
            else:
                swap = np.tile(np.arange(len(ks))[None, None, :], (len(ks), 1, 1))
            self.tables.append((np.array(units), swap))

    @property
    def n_groups(self) -> int:
        return len(self.members)

    def decode(self, choice: np.ndarray, flags: np.ndarray) -> np.ndarray:
        out = choice.copy()
        for g in np.flatnonzero(flags):
            out[self.members[g]] = self.key_opt[g]
        return out

    def mutate(self, choice: np.ndarray, flags: np.ndarray, p: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        out = choice.copy()
        for units, swap in self.tables:
            n_k, d, V = swap.shape
            if n_k == 1:
                continue
            cur = self.opt_to_local[units, out[units]]
            for j in range(d):
                hit = rng.random(len(units)) < p
                v = rng.integers(0, V, len(units))
                new = swap[cur, j, v]
                cur = np.where(hit & (new >= 0), new, cur)
            out[units] = self.local_to_opt[units, cur]
        flip = (rng.random(self.n_groups) < p) & np.array(self.can, bool)
        return out, flags ^ flip

    def random(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        local = (rng.random(len(self.n_opt)) * self.n_opt).astype(np.int64)
        flags = (rng.random(self.n_groups) < 0.5) & np.array(self.can, bool)
        return self.local_to_opt[np.arange(len(local)), local], flags

    def split(self, m: UnitModel, unit_choice: np.ndarray, fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(choice, flags) of a decoded unit choice; a group's units that take the key get `fallback`'s
        options. Raises if a group is taken only in part."""
        choice, flags = unit_choice.copy(), np.zeros(self.n_groups, bool)
        for g, (units, ks) in enumerate(zip(self.members, self.key_opt, strict=True)):
            at_key = unit_choice[units] == ks
            if at_key.any() and not at_key.all():
                raise ValueError(f"start takes the key of all-or-nothing group {g} for only some of its items")
            if at_key.all():
                flags[g] = True
                choice[units] = fallback[units]
        return choice, flags


def _repair(m: UnitModel, genome: _Genome, choice: np.ndarray, flags: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Cut each broken upper row until it fits: random moves, each a unit to its cheapest allowed option
    or a whole group to its key, until their savings cover the excess (None if it still does not fit)."""
    choice, flags = choice.copy(), flags.copy()
    U, G = m.n_units, genome.n_groups
    rows = np.arange(U)
    for _ in range(2 + 2 * (G > 0)):
        dec = genome.decode(choice, flags)
        totals = m.totals(dec)
        over = np.flatnonzero(totals > m.hi)
        if len(over) == 0:
            break
        c = over[0]
        a = np.where(genome.allowed, m.A[c], np.inf)
        cheap = a.argmin(axis=1)
        cur = m.A[c][rows, dec]
        saving = cur - a[rows, cheap]
        for g in np.flatnonzero(flags):
            saving[genome.members[g]] = 0.0  # a taken group's units cost the key's, whatever their bits
        g_saving = np.array([(cur[u] - m.A[c][u, k]).sum() if genome.can[g] and not flags[g] else 0.0
                             for g, (u, k) in enumerate(zip(genome.members, genome.key_opt, strict=True))])
        moves = np.concatenate([saving, g_saving])
        order = rng.permutation(U + G)
        order = order[moves[order] > 0]
        need = totals[c] - m.hi[c]
        n = int(np.searchsorted(np.cumsum(moves[order]), need)) + 1
        take = order[:n]
        units, groups = take[take < U], take[take >= U] - U
        choice[units] = cheap[units]
        flags[groups] = True
    dec = genome.decode(choice, flags)
    return (choice, flags) if m.feasible(dec, rtol=0.0) else None


@dataclass(frozen=True)
class EvolutionOptions:
    """The options of `solve_evolution` besides the step-search callbacks (start, step_fitness, evaluate)."""

    config: EvolutionConfig = EvolutionConfig()
    seed: int | None = None

    def max_candidates(self) -> int:
        """How many candidates a search can score at most (the initial population and every epoch's)."""
        c = self.config
        return c.population + c.epochs * (c.mutations + c.crossovers + c.population)


@register_solver("evolution", consumes="steps", options=EvolutionOptions)
def solve_evolution(
    problem: Problem | StepProblem,
    *,
    config: EvolutionConfig = EvolutionConfig(),
    evaluate: Callable[[Solution, tuple[int, ...]], float] | None = None,
    seed: int | None = None,
    start: Sequence[int] | None = None,
    step_fitness: Callable[[tuple[int, ...]], float] | None = None,
    finalists: int | None = None,
) -> Solution:
    """Search kept steps and option per item; returns the best `Solution` with info["kept_steps"],
    info["step_groups"], info["history"] (best surrogate fitness after each epoch), info["fitness"],
    info["groups_taken"] (names of the all-or-nothing groups, e.g. pruned blocks, that took their key).

    A plain `Problem` is searched as one step group with its objective as the surrogate.
    start: the seed candidate (option index per item); default each unit's median-cost option, with no
    all-or-nothing group taken.
    step_fitness: a measured cost of a whole kept-step set (e.g. of sampling with it), replacing the sum of
    per-group `timestep_loss` when steps do not add up; called once per distinct set (memoised).
    finalists: how many best candidates `evaluate` re-ranks (default `config.rerank_top`).
    """
    t0 = time.perf_counter()
    cfg = replace(config, **({} if seed is None else {"seed": seed}),
                  **({} if finalists is None else {"rerank_top": finalists}))
    run = _Evolution(problem, cfg, step_fitness)
    run.seed_population(start)
    history = []
    for _ in range(cfg.epochs):
        history.append(run.epoch())
    run.pop.sort(key=lambda c: c[0])
    history.append(run.pop[0][0])
    finalists = run.pop[: max(1, cfg.rerank_top)]
    base, m, genome = run.base, run.m, run.genome

    def solution_of(cand) -> np.ndarray:
        return m.decode(genome.decode(cand[1], cand[2]))

    scores = None
    if evaluate is not None:
        scores = [float(evaluate(base.evaluate(solution_of(c)), c[3])) for c in finalists]
        best = finalists[int(np.argmin(scores))]
    else:
        best = finalists[0]
    taken = [genome.names[g] for g in np.flatnonzero(best[2])]
    info = {"kept_steps": best[3], "step_groups": tuple(run.groups), "fitness": best[0], "history": history,
            "evaluations": scores, "seed": cfg.seed, "groups_taken": taken,
            "step_sets_measured": dict(run.step_cost)}
    return base.evaluate(solution_of(best), status="feasible", time_s=time.perf_counter() - t0,
                         backend="evolution", info=info)


# A candidate: (fitness, choice, flags, kept steps); choice/flags as in `_Genome`.
_Candidate = tuple[float, np.ndarray, np.ndarray, tuple[int, ...]]


class _Evolution:
    """The population of one `solve_evolution` run and the moves on it (TMPQ-DM's loop: mutation,
    crossover, random newcomers, elitist truncation). The random draws happen in a fixed order, so a
    seed gives one result."""

    def __init__(self, problem: Problem | StepProblem, cfg: EvolutionConfig,
                 step_fitness: Callable[[tuple[int, ...]], float] | None) -> None:
        self.cfg, self.step_fitness = cfg, step_fitness
        self.rng = np.random.default_rng(cfg.seed)
        steps = problem if isinstance(problem, StepProblem) else None
        self.base = steps.problem if steps else problem
        m = self.m = build_units(self.base, prune=False)
        if steps:
            self.S = self._unit_step_objective(steps, m)
            self.groups = steps.step_groups
            self.tl = steps.timestep_loss or tuple(np.zeros(b - a) for a, b in self.groups)
        else:
            self.S = np.where(m.valid, m.obj, 0.0)[None]
            self.groups, self.tl = (), ()
        self.genome = _Genome(self.base, m, groups_of(self.base))
        self.rows = np.arange(m.n_units)
        self.step_cost: dict[tuple[int, ...], float] = {}
        self.seen: set[bytes] = set()
        self.pop: list[_Candidate] = []

    @staticmethod
    def _unit_step_objective(steps: StepProblem, m: UnitModel) -> np.ndarray:
        """[step group, unit, unit option] objective, summed over each unit's items."""
        so = steps.step_objective
        ii, kk = np.nonzero(m.opt_of >= 0)
        S = np.zeros((so.shape[0], m.n_units, m.valid.shape[1]))
        for g in range(so.shape[0]):
            S[g] = np.bincount(m.unit_of[ii] * S.shape[2] + kk, weights=so[g][ii, m.opt_of[ii, kk]],
                               minlength=S[g].size).reshape(S[g].shape)
        return S

    def fitness(self, choice: np.ndarray, ts: tuple[int, ...]) -> float:
        f = float(self.S[:, self.rows, choice].sum())
        if self.step_fitness is not None:
            if ts not in self.step_cost:
                self.step_cost[ts] = float(self.step_fitness(ts))
            return f + self.step_cost[ts]
        return f + sum(float(self.tl[g][t - self.groups[g][0]]) for g, t in enumerate(ts))

    def random_steps(self) -> tuple[int, ...]:
        return tuple(int(self.rng.integers(a, b)) for a, b in self.groups)

    def mutate_steps(self, ts: tuple[int, ...], p: float) -> tuple[int, ...]:
        return tuple(int(self.rng.integers(a, b)) if self.rng.random() < p else t
                     for t, (a, b) in zip(ts, self.groups, strict=True))

    def random(self) -> tuple[np.ndarray, np.ndarray] | None:
        return _repair(self.m, self.genome, *self.genome.random(self.rng), self.rng)

    def add(self, cand: tuple[np.ndarray, np.ndarray] | None, ts: tuple[int, ...]) -> bool:
        """Add a candidate if it is feasible and new; True when added."""
        if cand is None:
            return False
        choice, flags = cand
        dec = self.genome.decode(choice, flags)
        if not self.m.feasible(dec, rtol=0.0):
            return False
        tag = dec.tobytes() + np.array(ts, np.int64).tobytes()
        if tag in self.seen:
            return False
        self.seen.add(tag)
        self.pop.append((self.fitness(dec, ts), choice, flags, ts))
        return True

    def seed_population(self, start: Sequence[int] | None) -> None:
        """The seed candidate (`start`, else each unit's median-cost option), half the population random,
        the rest mutants of the seed."""
        m, genome, cfg = self.m, self.genome, self.cfg
        ref = m.A[0] if len(m.names) else m.obj
        order = np.argsort(np.where(genome.allowed, ref, np.inf), axis=1, kind="stable")
        median = order[self.rows, (genome.n_opt - 1) // 2]
        if start is not None:
            unit_start = m.encode(np.asarray(start))
            if unit_start is None:
                raise ValueError("start breaks a tie or a fixed item")
            seed_cand = genome.split(m, unit_start, median)
        else:
            seed_cand = (median, np.zeros(genome.n_groups, bool))
        seed_cand = _repair(m, genome, *seed_cand, self.rng)
        seed_steps = tuple(a for a, _ in self.groups)
        self.add(seed_cand, seed_steps)
        tries = 0
        while len(self.pop) < 1 + cfg.population // 2 and tries < 20 * cfg.population:
            tries += 1
            self.add(self.random(), self.random_steps())
        tries = 0
        while len(self.pop) < cfg.population and tries < 20 * cfg.population and seed_cand is not None:
            tries += 1
            self.add(_repair(m, genome, *genome.mutate(*seed_cand, cfg.init_m_prob, self.rng), self.rng),
                     self.mutate_steps(seed_steps, cfg.init_m_prob))
        if not self.pop:
            raise ValueError("evolution found no candidate meeting the constraints")

    def epoch(self) -> float:
        """One generation; returns the best fitness before it."""
        cfg, rng, genome = self.cfg, self.rng, self.genome
        self.pop.sort(key=lambda c: c[0])
        top = self.pop[: cfg.parents]
        best = top[0][0]
        self.pop = self.pop[: cfg.population]
        born, tries = 0, 0
        while born < cfg.mutations and tries < 10 * cfg.mutations:
            tries += 1
            _, ch, fl, ts = top[rng.integers(len(top))]
            born += self.add(genome.mutate(ch, fl, cfg.m_prob, rng), self.mutate_steps(ts, cfg.m_prob))
        born, tries = 0, 0
        while born < cfg.crossovers and tries < 10 * cfg.crossovers and len(top) > 1:
            tries += 1
            born += self.add(*self._crossover(top))
        n_random = cfg.population - cfg.mutations - cfg.crossovers
        born, tries = 0, 0
        while born < n_random and tries < 10 * max(n_random, 1):
            tries += 1
            born += self.add(self.random(), self.random_steps())
        # keep the best `population` of parents and children (elitist, as the released code's top-50)
        self.pop.sort(key=lambda c: c[0])
        self.pop = self.pop[: cfg.population]
        return best

    def _crossover(self, top: list[_Candidate]) -> tuple[tuple[np.ndarray, np.ndarray], tuple[int, ...]]:
        rng = self.rng
        i, j = rng.choice(len(top), 2, replace=False)
        mask = rng.random(self.m.n_units) < 0.5
        fmask = rng.random(self.genome.n_groups) < 0.5
        tmask = rng.random(len(self.groups)) < 0.5
        ts = tuple(a if t else b for a, b, t in zip(top[i][3], top[j][3], tmask, strict=True))
        return (np.where(mask, top[i][1], top[j][1]), np.where(fmask, top[i][2], top[j][2])), ts
