"""Factor search: constraints of the LongRoPE2 / LongRoPE spaces, resume from the per-generation log and
racing (the stage itself runs in the micro DAG, tests/test_workflow.py)."""

import numpy as np
import pytest

from longrope2 import rope
from longrope2.checkpoints import GenerationLog
from longrope2.search import Search, SearchConfig, Space, crossover, initial_population, mutate

GEOM = rope.RopeGeometry(head_dim=64, rope_base=10000.0, original_length=256)
TARGET = 1024


class Synthetic:
    """Cheap deterministic fitness: distance of log-factors to a hidden optimum (per-sample noise)."""

    def __init__(self, n=8):
        self.n, self.sample_forwards = n, 0
        s = TARGET / 256
        self.opt = np.log(rope.longrope2(GEOM, TARGET, 10, np.linspace(1.3 * s, 1.8 * s, GEOM.n_pairs - 10)).long_factor)
        self.noise = np.random.default_rng(0).normal(0, 0.01, n)

    def __len__(self):
        return self.n

    def __call__(self, scaling, n=None):
        n = self.n if n is None else min(n, self.n)
        nll, tok, _ = self.partial(scaling, 0, n)
        return nll / tok, 0.0

    def partial(self, scaling, start, stop):
        """Summed 'NLL' of samples start:stop (one token each), as scoring.Evaluator.partial returns it."""
        self.sample_forwards += stop - start
        d = float(np.mean((np.log(scaling.long_factor) - self.opt) ** 2))
        return d * (stop - start) + float(self.noise[start:stop].sum()), stop - start, 0

    def map(self, jobs):
        """Each ``(scaling, start, stop)`` job's :meth:`partial`, in order (scoring.Evaluator.map)."""
        return [self.partial(*job) for job in jobs]


CFG = SearchConfig(population=12, generations=6, parents=6, mutants=5, crossovers=5, mutation_p=0.3, initial=16)


def check(space, cand):
    d, genes = cand
    g = np.array(genes)
    assert space.rcd_range[0] <= d <= space.rcd_range[1]
    assert len(g) == GEOM.n_pairs - d
    assert np.all(np.diff(g) >= -1e-12), "monotone"
    assert np.all(g >= space.lo - 1e-9) and np.all(g <= space.hi + 1e-9), "bounds"
    assert np.allclose(np.round(g / 0.01) * 0.01, g), "0.01 grid"


@pytest.mark.parametrize("kind", ["longrope2", "v1"])
def test_operators_respect_the_search_space(kind):
    space = Space.longrope2(GEOM, TARGET) if kind == "longrope2" else Space.all_pairs(GEOM, TARGET, 1.25, "longrope")
    s = TARGET / 256
    assert (space.lo, space.hi) == ((s, 2 * s) if kind == "longrope2" else (1.0, 1.25 * s))
    if kind == "longrope2":
        assert space.rcd_range == (rope.critical_dim_10(GEOM), rope.critical_dim(GEOM)) == (5, 13)
    rng = np.random.default_rng(1)
    pop = initial_population(space, 40, rng)
    assert len(pop) == 40 == len(set(pop))
    if kind == "longrope2":  # Alg. 1: one flat candidate per d_rcd in range
        flat = [c for c in pop if len(set(c[1])) == 1]
        assert {c[0] for c in flat} == set(range(5, 14))
    for _ in range(300):
        a, b = pop[rng.integers(len(pop))], pop[rng.integers(len(pop))]
        for c in (mutate(space, a, 0.3, rng), crossover(space, a, b, rng)):
            check(space, c)
            full = space.scaling(c).long_factor
            if kind == "longrope2":  # NTK below d_rcd, anchored at the first searched pair
                d = c[0]
                np.testing.assert_allclose(full[:d], full[d] ** (np.arange(d) / d))
                assert rope.ood_bound_ok(GEOM, TARGET, full)


def test_search_improves_and_resumes_to_the_same_result(tmp_path):
    space = Space.longrope2(GEOM, TARGET)
    full = Search(space, Synthetic(), CFG, seed=5, log=GenerationLog(tmp_path / "a.jsonl", "test"))
    best = full.run()
    assert full.trace[-1]["best_nll"] < full.trace[0]["best_nll"]
    assert [t["generation"] for t in full.trace] == list(range(7))
    # interrupted after 3 generations, then resumed from the log with the full budget
    short = SearchConfig(**{**CFG.__dict__, "generations": 3})
    Search(space, Synthetic(), short, seed=5, log=GenerationLog(tmp_path / "b.jsonl", "test")).run()
    resumed = Search(space, Synthetic(), CFG, seed=5, log=GenerationLog(tmp_path / "b.jsonl", "test"))
    assert resumed.run() == best
    assert [t["best_nll"] for t in resumed.trace] == [t["best_nll"] for t in full.trace]
    assert resumed.fitness.sample_forwards == full.fitness.sample_forwards


def test_racing_spends_fewer_sample_forwards(tmp_path):
    space = Space.longrope2(GEOM, TARGET)
    plain = Search(space, Synthetic(), CFG, seed=3, log=GenerationLog(tmp_path / "p.jsonl", "test"))
    plain.run()
    raced_cfg = SearchConfig(**{**CFG.__dict__, "racing": True, "race_samples": 2, "race_keep": 0.25})
    raced = Search(space, Synthetic(), raced_cfg, seed=3, log=GenerationLog(tmp_path / "r.jsonl", "test"))
    raced.run()
    assert raced.fitness.sample_forwards < 0.65 * plain.fitness.sample_forwards
    # selection only ever keeps fully evaluated candidates
    assert all(raced.cache[c]["full"] for c in raced.population[: CFG.parents])
    # a survivor's running sums over the rungs (2, 4, 8 samples) equal one pass over all samples
    both = [c for c in raced.cache if raced.cache[c]["full"] and c in plain.cache]
    assert both and all(raced.cache[c]["nll"] == pytest.approx(plain.cache[c]["nll"], abs=1e-12) for c in both)
    forwards = Synthetic()
    Search(space, forwards, raced_cfg, seed=3, log=GenerationLog(tmp_path / "again.jsonl", "test")).run()
    assert forwards.sample_forwards == raced.fitness.sample_forwards  # seeded: the same work again


def test_stratified_search_spreads_children_evenly_over_d_rcd(tmp_path):
    """Every d_rcd in [d10_tcd, d_tcd] gets the same number of children (to within one), not a drift."""
    from collections import Counter

    space = Space.longrope2(GEOM, TARGET)
    strata = space.strata
    assert strata == list(range(5, 14))
    cfg = SearchConfig(**{**CFG.__dict__, "generations": 9, "mutants": 5, "crossovers": 4})
    s = Search(space, Synthetic(), cfg, seed=2, log=GenerationLog(tmp_path / "s.jsonl", "test"))
    s.run()
    children = Counter()
    for rec in s.log.read()[1:]:
        for d, genes, _ in rec["evaluated"]:
            check(space, (d, tuple(genes)))
        children.update(rec["proposed_d_rcd"])
    assert children == Counter({d: 9 for d in strata})  # 81 children over 9 strata
    drift = Search(space, Synthetic(), SearchConfig(**{**cfg.__dict__, "stratified": False}), seed=2,
                   log=GenerationLog(tmp_path / "d.jsonl", "test"))
    drift.run()
    moved = Counter(d for rec in drift.log.read()[1:] for d in rec["proposed_d_rcd"])
    assert max(moved.values()) - min(moved.get(d, 0) for d in strata) > 3  # drifting: some values hardly tried


def test_overfit_check_tells_a_harder_held_out_set_from_over_fitting():
    """A held-out set 0.5 nats harder for every method parts the two PPL intervals, but the paired
    difference best - reference is the same on both sets; a best that is only good on its own samples
    differs from the reference on held-out by more than on the search set."""
    from longrope2.stages.search import overfit_check

    rng = np.random.default_rng(0)
    n = 64
    difficulty = {"search": rng.normal(1.0, 0.1, n), "heldout": rng.normal(1.5, 0.1, n)}  # held-out harder
    hit = np.zeros(n, dtype=bool)
    ref = {k: d + rng.normal(0.3, 0.02, n) for k, d in difficulty.items()}  # an unselected method, 0.3 nats worse
    honest = {k: d + rng.normal(0.0, 0.02, n) for k, d in difficulty.items()}
    check = overfit_check((honest["search"], hit), (honest["heldout"], hit),
                          {"ntk": ((ref["search"], hit), (ref["heldout"], hit))}, seed=0)
    assert not check["agree"]  # e^1.0 vs e^1.5: the sets differ, whoever is scored
    r = check["references"]["ntk"]
    assert r["agree"] and r["ppl"]["heldout"]["lo"] > r["ppl"]["search_set"]["hi"]
    for part in ("search_set", "heldout"):
        assert r["best_minus_reference"][part]["estimate"] == pytest.approx(-0.3, abs=0.02)
        assert r["best_minus_reference"][part]["n"] == n

    fitted = dict(honest, search=honest["search"] - 0.2)  # 0.2 nats better on its own samples only
    check = overfit_check((fitted["search"], hit), (fitted["heldout"], hit),
                          {"ntk": ((ref["search"], hit), (ref["heldout"], hit))}, seed=0)
    d = check["references"]["ntk"]["best_minus_reference"]
    assert not check["references"]["ntk"]["agree"] and d["search_set"]["hi"] < d["heldout"]["lo"]
