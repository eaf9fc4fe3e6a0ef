"""Factor search: constraints of the LongRoPE2 / LongRoPE spaces, resume from the per-generation log,
racing, and the stage end to end on the micro model."""

import json
import math

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
        self.sample_forwards += n
        d = float(np.mean((np.log(scaling.long_factor) - self.opt) ** 2))
        return d + float(self.noise[:n].mean()), 0.0


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


def test_search_stage_on_micro_model(tmp_path):
    from conftest import REPO, run_cli
    from transformers import AutoTokenizer

    micro = REPO / "tests/micro.yaml"
    small = tmp_path / "small.yaml"
    small.write_text("search: {population: 4, generations: 1, parents: 2, mutants: 2, crossovers: 1, initial: 6}\n"
                     "needles: {search_samples: 2, eval_samples: 2}\n")
    cfg = [REPO / "config/config.yaml", micro, small]
    run_cli("corpus", "--config", *cfg, "--out", tmp_path / "corpus")
    run_cli("pretrain", "--config", *cfg, "--corpus", tmp_path / "corpus", "--out", tmp_path / "base",
            "--checkpoint-dir", tmp_path / "ck")
    model = tmp_path / "base" / "model"
    run_cli("needles", "--config", *cfg, "--corpus", tmp_path / "corpus", "--tokenizer", model, "--out", tmp_path / "needles")
    tok = AutoTokenizer.from_pretrained(model)
    with np.load(tmp_path / "needles" / "search_needle.npz") as z:
        ids, labels = z["input_ids"], z["labels"]
    assert ids.shape == (2, 1024) and (ids[:, 0] == tok.bos_token_id).all()
    assert ((labels != -100).sum(1) == 8).all() and (labels[:, -8:] != -100).all()  # answer last, never cut
    for method in ("longrope2", "longrope"):
        out = tmp_path / "search" / method
        run_cli("search", "--config", *cfg, "--model", model, "--needles", tmp_path / "needles", "--method", method,
                "--out", out, "--checkpoint-dir", tmp_path / "ck" / method)
        f = json.loads((out / "factors.json").read_text())
        assert f["method"] == method and len(f["long_factor"]) == 8 and f["short_factor"] == [1.0] * 8
        assert f["hf_rope_parameters"]["rope_type"] == "longrope"
        assert f["attention_factor"] == pytest.approx(math.sqrt(1 + math.log(4) / math.log(256)))
        if method == "longrope2":
            assert 2 <= f["d_rcd"] <= 4 and f["fitness"]["objective"] == "search_needle"
        else:
            assert f["d_rcd"] == 0 and f["fitness"]["objective"] == "search_plain" and max(f["long_factor"]) <= 5.0
        assert (out / "trace.csv").read_text().startswith("generation,best_nll")
