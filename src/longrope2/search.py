"""Evolutionary search of per-pair RoPE rescale factors (LongRoPE2 paper, Alg. 1-2; LongRoPE v1).

A candidate is ``(d_rcd, genes)``: ``genes`` are the factors of pairs ``>= d_rcd``, on a 0.01 grid,
monotone non-decreasing, inside ``[lo, hi]``. In the LongRoPE2 space pairs below ``d_rcd`` follow NTK
anchored at the first gene and ``d_rcd`` is searched in ``[d10_tcd, d_tcd]``; in the all-pairs space
(LongRoPE v1, and the paper's ablation) ``d_rcd = 0`` and every pair is a gene.

The model is loaded once (per device); :class:`scoring.Evaluator` swaps the rotary factors per candidate
through the RoPE core and scores only labelled positions. The loop hands each batch of candidates to
``fitness.map`` -- one evaluator, or a :class:`scoring.EvaluatorPool` with one per GPU -- and gets the
results back in candidate order, so the seed alone fixes the outcome, whatever the number of devices.
Racing (successive halving) scores every new candidate on the first few samples and doubles the samples
for the best fraction of the survivors until the last ones are scored on the full set, so most of the
work goes to the promising candidates.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from . import rope, scoring
from .checkpoints import GenerationLog

Candidate = tuple[int, tuple[float, ...]]


# --------------------------------------------------------------------------------------------------
# Search space
# --------------------------------------------------------------------------------------------------


@dataclass
class Space:
    geom: rope.RopeGeometry
    target: int
    lo: float
    hi: float
    rcd_range: tuple[int, int]  # inclusive; (0, 0) = all pairs searched
    method: str  # label written to factors.json
    grid: float = 0.01

    @classmethod
    def longrope2(cls, geom, target, method="longrope2"):
        s = rope.scale_factor(geom, target)
        return cls(geom, target, s, 2 * s, (rope.critical_dim_10(geom), rope.critical_dim(geom)), method)

    @classmethod
    def all_pairs(cls, geom, target, hi_mult: float, method: str, lo: float = 1.0):
        s = rope.scale_factor(geom, target)
        return cls(geom, target, lo, hi_mult * s, (0, 0), method)

    @property
    def ntk_below(self) -> bool:
        return self.rcd_range != (0, 0)

    def snap(self, x: np.ndarray) -> np.ndarray:
        """Clip to [lo, hi], make monotone non-decreasing, round to the grid (inside the bounds)."""
        x = np.maximum.accumulate(np.clip(np.asarray(x, dtype=np.float64), self.lo, self.hi))
        lo_g, hi_g = math.ceil(self.lo / self.grid - 1e-9), math.floor(self.hi / self.grid + 1e-9)
        return np.clip(np.round(x / self.grid), lo_g, hi_g) * self.grid

    def full(self, cand: Candidate) -> np.ndarray:
        d, genes = cand
        if not self.ntk_below:
            return np.asarray(genes)
        return rope.longrope2_factors(self.geom, d, genes)

    def scaling(self, cand: Candidate) -> rope.RopeScaling:
        d, genes = cand
        if self.ntk_below:
            out = rope.longrope2(self.geom, self.target, d, genes)
        else:
            out = rope.longrope(self.geom, self.target, genes)
            out.extra["d_rcd"] = 0
        out.method = self.method
        return out

    def make(self, d: int, genes: Iterable[float]) -> Candidate:
        return int(d), tuple(float(round(g, 6)) for g in self.snap(np.asarray(list(genes))))

    @property
    def strata(self) -> list[int]:
        """The d_rcd values the search explores (one, 0, in the all-pairs space)."""
        return list(range(self.rcd_range[0], self.rcd_range[1] + 1))

    def move(self, cand: Candidate, d: int, rng: np.random.Generator) -> Candidate:
        """The candidate with d_rcd set to ``d``: genes dropped from, or drawn (monotone) in front of, its
        searched pairs; the pairs it keeps searching keep their factors."""
        d0, genes = cand[0], np.array(cand[1])
        if d < d0:
            genes = np.concatenate([np.sort(rng.uniform(self.lo, genes[0], d0 - d)), genes])
        elif d > d0:
            genes = genes[d - d0 :]
        return self.make(d, genes)


# --------------------------------------------------------------------------------------------------
# Operators (paper Alg. 1-2)
# --------------------------------------------------------------------------------------------------


def initial_population(space: Space, size: int, rng: np.random.Generator, seeds: list[np.ndarray] = ()) -> list[Candidate]:
    """Alg. 1: one flat candidate (all searched pairs = a scalar in [lo, hi]) per d_rcd in range, plus
    given seed vectors (e.g. PI/NTK/YaRN for LongRoPE v1), then mutations of those until ``size``."""
    n = space.geom.n_pairs
    pop: list[Candidate] = []
    for d in range(space.rcd_range[0], space.rcd_range[1] + 1):
        pop.append(space.make(d, np.full(n - d, rng.uniform(space.lo, space.hi))))
    for vec in seeds:
        pop.append(space.make(0, vec))
    base = list(pop)
    while len(set(pop)) < size:
        pop.append(mutate(space, base[int(rng.integers(len(base)))], 0.3, rng))
    return list(dict.fromkeys(pop))[:size]


def mutate(space: Space, cand: Candidate, p: float, rng: np.random.Generator, move_rcd: bool = True) -> Candidate:
    """Each gene is resampled with probability p between its neighbours (keeps monotonicity); in the
    LongRoPE2 space d_rcd moves by one pair with probability p (unless ``move_rcd`` is off)."""
    d, genes = cand[0], np.array(cand[1])
    if space.ntk_below and move_rcd and rng.random() < p:
        nd = int(np.clip(d + rng.choice([-1, 1]), *space.rcd_range))
        if nd < d:
            genes = np.concatenate([[rng.uniform(space.lo, genes[0])], genes])
        elif nd > d:
            genes = genes[1:]
        d = nd
    for i in range(len(genes)):
        if rng.random() < p:
            left = genes[i - 1] if i > 0 else space.lo
            right = genes[i + 1] if i + 1 < len(genes) else space.hi
            genes[i] = rng.uniform(left, max(left, right))
    return space.make(d, genes)


def crossover(space: Space, a: Candidate, b: Candidate, rng: np.random.Generator) -> Candidate:
    """Gene-wise from either parent's full factor vector, d_rcd from either parent; monotone repair."""
    d = a[0] if rng.random() < 0.5 else b[0]
    fa, fb = space.full(a), space.full(b)
    pick = rng.random(len(fa)) < 0.5
    child = np.where(pick, fa, fb)[d:]
    return space.make(d, child)


# --------------------------------------------------------------------------------------------------
# The search loop (resumable)
# --------------------------------------------------------------------------------------------------


@dataclass
class SearchConfig:
    population: int
    generations: int
    parents: int
    mutants: int
    crossovers: int
    mutation_p: float
    initial: int
    racing: bool = False
    race_samples: int = 4
    race_keep: float = 0.5
    stratified: bool = True  # children spread evenly over d_rcd (round robin) instead of drifting one pair at a time


class Search:
    """Evolutionary search with a per-generation JSONL log it resumes from (same seed, same result)."""

    def __init__(self, space: Space, fitness: scoring.Evaluator, cfg: SearchConfig, seed: int, log: GenerationLog,
                 seeds: list[np.ndarray] = (), progress: Callable | None = None):
        self.space, self.fitness, self.cfg = space, fitness, cfg
        self.log = log
        self.rng = np.random.default_rng(seed)
        self.seeds = list(seeds)
        self.cache: dict[Candidate, dict] = {}  # candidate -> {"nll", "acc", "full": bool}
        self.population: list[Candidate] = []
        self.trace: list[dict] = []
        self.generation = -1
        self.progress = progress
        self.wall = self.resumed_wall = 0.0

    # -- bookkeeping ---------------------------------------------------------------------------
    def _key(self, c: Candidate) -> float:
        r = self.cache[c]
        return r["nll"] if r["full"] else math.inf

    def _resume(self) -> None:
        lines = self.log.read()  # torn tails and logs of another config/inputs are set aside there
        if not lines:
            return
        for rec in lines:
            for d, genes, r in rec["evaluated"]:
                self.cache[(int(d), tuple(genes))] = r
        last = lines[-1]
        self.generation = last["generation"]
        self.population = [(int(d), tuple(g)) for d, g in last["population"]]
        self.trace = [rec["trace"] for rec in lines]
        self.rng.bit_generator.state = last["rng_state"]
        self.fitness.sample_forwards = last["trace"]["sample_forwards"]
        self.wall = self.resumed_wall = last["trace"]["wall_s"]

    def _log(self, evaluated: list[Candidate], proposed: list[Candidate] = ()) -> None:
        ranked = sorted(self.population, key=self._key)
        fits = [self.cache[c]["nll"] for c in ranked if self.cache[c]["full"]]
        trace = {
            "generation": self.generation,
            "best_nll": fits[0],
            "median_nll": float(np.median(fits)),
            "best_d_rcd": ranked[0][0],
            "evaluated": len(self.cache),
            "sample_forwards": self.fitness.sample_forwards,
            "wall_s": round(self.wall, 2),
        }
        self.trace.append(trace)
        rec = {
            "generation": self.generation,
            "population": [[d, list(g)] for d, g in self.population],
            "evaluated": [[d, list(g), self.cache[(d, g)]] for d, g in evaluated],
            "proposed_d_rcd": [d for d, _ in proposed],  # every child's d_rcd, duplicates included
            "rng_state": self.rng.bit_generator.state,
            "trace": trace,
        }
        self.log.append(rec)
        if self.progress:
            self.progress(trace)

    def _evaluate(self, cands: list[Candidate]) -> list[Candidate]:
        new = [c for c in dict.fromkeys(cands) if c not in self.cache]
        t0 = time.perf_counter()
        full = len(self.fitness)
        if self.cfg.racing and len(new) > 1:
            # successive halving: every new candidate on the first race_samples samples, then the best
            # race_keep of the survivors on twice as many, ... until the survivors are scored on all
            # (each rung adds samples to a survivor's running sums: nothing is scored twice)
            alive, seen, n = list(new), 0, min(self.cfg.race_samples, full)
            sums = {c: [0.0, 0, 0] for c in new}
            while True:
                # one rung is one batch of jobs: a pool of per-device evaluators scores them in parallel and
                # returns them in candidate order
                parts = self.fitness.map([(self.space.scaling(c), seen, n) for c in alive])
                for c, part in zip(alive, parts):
                    sums[c] = [a + b for a, b in zip(sums[c], part)]
                    self.cache[c] = {"nll": sums[c][0] / max(sums[c][1], 1), "acc": sums[c][2] / n, "full": n >= full}
                if n >= full:
                    break
                alive = sorted(alive, key=lambda c: self.cache[c]["nll"])[: max(1, math.ceil(self.cfg.race_keep * len(alive)))]
                seen, n = n, min(2 * n, full)
        else:
            parts = self.fitness.map([(self.space.scaling(c), 0, full) for c in new])
            for c, (nll_sum, n_tok, hits) in zip(new, parts):
                self.cache[c] = {"nll": nll_sum / max(n_tok, 1), "acc": hits / full, "full": True}
        self.wall += time.perf_counter() - t0
        return new

    # -- Alg. 2 ----------------------------------------------------------------------------------
    def run(self) -> Candidate:
        self._resume()
        c = self.cfg
        if self.generation < 0:
            init = initial_population(self.space, c.initial, self.rng, self.seeds)
            evaluated = self._evaluate(init)
            self.population = sorted(init, key=self._key)[: c.population]
            self.generation = 0
            self._log(evaluated)
        strata = self.space.strata
        while self.generation < c.generations:
            parents = sorted(self.population, key=self._key)[: c.parents]
            stratify = c.stratified and len(strata) > 1
            # round robin over d_rcd, continued across generations, so every value gets the same number of children
            slot = iter(strata[(self.generation * (c.mutants + c.crossovers) + k) % len(strata)]
                        for k in range(c.mutants + c.crossovers))

            def place(child: Candidate) -> Candidate:
                return self.space.move(child, next(slot), self.rng) if stratify else child

            children = [mutate(self.space, place(parents[int(self.rng.integers(len(parents)))]), c.mutation_p, self.rng,
                               move_rcd=not stratify) for _ in range(c.mutants)]
            for _ in range(c.crossovers):
                i, j = self.rng.choice(len(parents), size=2, replace=len(parents) < 2)
                children.append(mutate(self.space, place(crossover(self.space, parents[i], parents[j], self.rng)),
                                       c.mutation_p / 3, self.rng, move_rcd=not stratify))
            evaluated = self._evaluate(children)
            pool = list(dict.fromkeys(self.population + children))
            self.population = sorted(pool, key=self._key)[: c.population]
            self.generation += 1
            self._log(evaluated, children)
        return self.best

    @property
    def best(self) -> Candidate:
        return sorted(self.population, key=self._key)[0]
