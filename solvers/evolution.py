"""TMPQ-DM's joint search over kept timesteps and per-layer bits (§2 of reference/methods.md).

Timesteps are split into non-uniform (quadratic) groups, fine near t = 0, and a candidate keeps one step
per group. Every item (unit of tied items) carries genes: one per component of its option key (a (w, a)
key gives a weight gene and an activation gene), or one option gene when keys are not tuples. Evolution
as in the released code: population 50, top-10 parents, 25 mutations (per-gene probability 0.25; a
timestep gene is resampled within its group), 10 uniform crossovers, 15 random candidates per epoch,
duplicates rejected. Every candidate meets every constraint of the problem (the BitOPs ceiling): random
ones are repaired by moving random units to cheaper options, offspring that break a constraint are
discarded and redrawn.

Fitness is a surrogate: Σ_g Σ_i step_loss[g, i, choice_i] (normalised as in `StepProblem`) plus the
kept steps' `timestep_loss`. An optional `evaluate(solution, kept_steps) -> float` (e.g. FID of sampled
images) re-ranks the best `rerank_top` candidates at the end, as TMPQ-DM re-evaluates its top 10.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

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
    """Per-unit gene tables: option index ↔ key components, vectorised over units with the same keys."""

    def __init__(self, problem: Problem, m: UnitModel) -> None:
        first = np.array([np.flatnonzero(m.unit_of == u)[0] for u in range(m.n_units)])
        self.n_opt = m.valid.sum(axis=1)
        keys = [tuple(problem.keys[i][m.opt_of[i, k]] for k in range(self.n_opt[u]))
                for u, i in enumerate(first)]
        self.tables: list[tuple[np.ndarray, np.ndarray]] = []  # (units, swap[k, j, v] → option or −1)
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

    def mutate(self, choice: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
        out = choice.copy()
        for units, swap in self.tables:
            n_k, d, V = swap.shape
            if n_k == 1:
                continue
            cur = out[units]
            for j in range(d):
                hit = rng.random(len(units)) < p
                v = rng.integers(0, V, len(units))
                new = swap[cur, j, v]
                cur = np.where(hit & (new >= 0), new, cur)
            out[units] = cur
        return out

    def random(self, rng: np.random.Generator) -> np.ndarray:
        return (rng.random(len(self.n_opt)) * self.n_opt).astype(np.int64)


def _repair(m: UnitModel, choice: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """Move random units to their cheapest option in each broken upper row until it fits (None if not)."""
    choice = choice.copy()
    rows = np.arange(m.n_units)
    for _ in range(3):
        totals = m.totals(choice)
        over = np.flatnonzero(totals > m.hi)
        if len(over) == 0:
            break
        c = over[0]
        a = np.where(m.valid, m.A[c], np.inf)
        cheap = a.argmin(axis=1)
        saving = a[rows, choice] - a[rows, cheap]
        order = rng.permutation(m.n_units)
        need = totals[c] - m.hi[c]
        cum = np.cumsum(saving[order])
        n = int(np.searchsorted(cum, need)) + 1
        take = order[:n]
        choice[take] = cheap[take]
    return choice if m.feasible(choice, rtol=0.0) else None


@register_solver("evolution")
def solve_evolution(
    problem: Problem | StepProblem,
    *,
    config: EvolutionConfig = EvolutionConfig(),
    evaluate: Callable[[Solution, tuple[int, ...]], float] | None = None,
    seed: int | None = None,
    start: Sequence[int] | None = None,
) -> Solution:
    """Search kept steps and option per item; returns the best `Solution` with info["kept_steps"],
    info["step_groups"], info["history"] (best surrogate fitness after each epoch), info["fitness"].

    A plain `Problem` is searched as one step group with its objective as the surrogate.
    start: the seed candidate (option index per item); default each unit's median-cost option.
    """
    t0 = time.perf_counter()
    cfg = config if seed is None else EvolutionConfig(**{**config.__dict__, "seed": seed})
    rng = np.random.default_rng(cfg.seed)
    steps = problem if isinstance(problem, StepProblem) else None
    base = steps.problem if steps else problem
    m = build_units(base, prune=False)
    U = m.n_units
    if steps:
        so = steps.step_objective
        G = so.shape[0]
        ii, kk = np.nonzero(m.opt_of >= 0)
        S = np.zeros((G, U, m.valid.shape[1]))
        for g in range(G):
            S[g] = np.bincount(m.unit_of[ii] * S.shape[2] + kk, weights=so[g][ii, m.opt_of[ii, kk]],
                               minlength=S[g].size).reshape(S[g].shape)
        groups = steps.step_groups
        tl = steps.timestep_loss or tuple(np.zeros(b - a) for a, b in groups)
    else:
        S = np.where(m.valid, m.obj, 0.0)[None]
        groups, tl = (), ()
    genome = _Genome(base, m)
    rows = np.arange(U)

    def fitness(choice: np.ndarray, ts: tuple[int, ...]) -> float:
        f = float(S[:, rows, choice].sum())
        return f + sum(float(tl[g][t - groups[g][0]]) for g, t in enumerate(ts))

    def random_steps() -> tuple[int, ...]:
        return tuple(int(rng.integers(a, b)) for a, b in groups)

    def mutate_steps(ts: tuple[int, ...], p: float) -> tuple[int, ...]:
        return tuple(int(rng.integers(a, b)) if rng.random() < p else t
                     for t, (a, b) in zip(ts, groups, strict=True))

    seen: set[bytes] = set()
    pop: list[tuple[float, np.ndarray, tuple[int, ...]]] = []

    def add(choice: np.ndarray | None, ts: tuple[int, ...]) -> bool:
        if choice is None or not m.feasible(choice, rtol=0.0):
            return False
        tag = choice.tobytes() + np.array(ts, np.int64).tobytes()
        if tag in seen:
            return False
        seen.add(tag)
        pop.append((fitness(choice, ts), choice, ts))
        return True

    if start is not None:
        seed_choice = m.encode(np.asarray(start))
        if seed_choice is None:
            raise ValueError("start breaks a tie or a fixed item")
    else:
        ref = m.A[0] if len(m.names) else m.obj
        order = np.argsort(np.where(m.valid, ref, np.inf), axis=1, kind="stable")
        seed_choice = order[rows, (genome.n_opt - 1) // 2]
    seed_choice = _repair(m, seed_choice, rng)
    seed_steps = tuple(a for a, _ in groups)
    add(seed_choice, seed_steps)
    tries = 0
    while len(pop) < 1 + cfg.population // 2 and tries < 20 * cfg.population:
        tries += 1
        add(_repair(m, genome.random(rng), rng), random_steps())
    tries = 0
    while len(pop) < cfg.population and tries < 20 * cfg.population and seed_choice is not None:
        tries += 1
        add(_repair(m, genome.mutate(seed_choice, cfg.init_m_prob, rng), rng),
            mutate_steps(seed_steps, cfg.init_m_prob))
    if not pop:
        raise ValueError("evolution found no candidate meeting the constraints")
    history = []
    for _ in range(cfg.epochs):
        pop.sort(key=lambda c: c[0])
        top = pop[: cfg.parents]
        history.append(top[0][0])
        nxt = list(pop[: cfg.population])
        pop = nxt
        born, tries = 0, 0
        while born < cfg.mutations and tries < 10 * cfg.mutations:
            tries += 1
            _, ch, ts = top[rng.integers(len(top))]
            born += add(genome.mutate(ch, cfg.m_prob, rng), mutate_steps(ts, cfg.m_prob))
        born, tries = 0, 0
        while born < cfg.crossovers and tries < 10 * cfg.crossovers and len(top) > 1:
            tries += 1
            i, j = rng.choice(len(top), 2, replace=False)
            mask = rng.random(U) < 0.5
            ch = np.where(mask, top[i][1], top[j][1])
            tmask = rng.random(len(groups)) < 0.5
            ts = tuple(a if t else b for a, b, t in zip(top[i][2], top[j][2], tmask, strict=True))
            born += add(ch, ts)
        n_random = cfg.population - cfg.mutations - cfg.crossovers
        born, tries = 0, 0
        while born < n_random and tries < 10 * max(n_random, 1):
            tries += 1
            born += add(_repair(m, genome.random(rng), rng), random_steps())
        # keep the best `population` of parents and children (elitist, as the released code's top-50)
        pop.sort(key=lambda c: c[0])
        pop = pop[: cfg.population]
    pop.sort(key=lambda c: c[0])
    history.append(pop[0][0])
    finalists = pop[: max(1, cfg.rerank_top)]
    scores = None
    if evaluate is not None:
        scores = [float(evaluate(base.evaluate(m.decode(ch)), ts)) for _, ch, ts in finalists]
        best = finalists[int(np.argmin(scores))]
    else:
        best = finalists[0]
    info = {"kept_steps": best[2], "step_groups": tuple(groups), "fitness": best[0], "history": history,
            "evaluations": scores, "seed": cfg.seed}
    return base.evaluate(m.decode(best[1]), status="feasible", time_s=time.perf_counter() - t0,
                         backend="evolution", info=info)
