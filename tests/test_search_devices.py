"""Search fan-out: a pool of per-device evaluators (here two CPU "devices", each with its own model copy)
gives the search exactly what one evaluator gives it -- factors, log and work -- because results come
back in candidate order."""

import copy
import numpy as np
import pytest
import torch

from longrope2 import rope
from longrope2.checkpoints import GenerationLog
from longrope2.scoring import Evaluator, EvaluatorPool
from longrope2.search import Search, SearchConfig, Space
from longrope2.stages.search import devices

GEOM = rope.RopeGeometry(head_dim=64, rope_base=10000.0, original_length=256)
TARGET = 512


@pytest.fixture(scope="module")
def model_and_set():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 64, size=(6, TARGET))
    labels = np.full_like(ids, -100)
    labels[:, -8:] = ids[:, -8:]  # the last tokens of every row are scored
    return model, ids, labels


def run_search(model, ids, labels, n_devices, log_path, racing):
    pool = EvaluatorPool([Evaluator(copy.deepcopy(model).to("cpu"), ids, labels, batch_tokens=2 * TARGET)
                          for _ in range(n_devices)])
    cfg = SearchConfig(population=6, generations=2, parents=3, mutants=3, crossovers=3, mutation_p=0.3, initial=8,
                       racing=racing, race_samples=2, race_keep=0.5)
    s = Search(Space.longrope2(GEOM, TARGET), pool, cfg, seed=7, log=GenerationLog(log_path, "test"))
    best = s.run()
    return best, s, pool


@pytest.mark.parametrize("racing", [True, False])
def test_two_devices_give_the_one_device_result(model_and_set, tmp_path, racing):
    model, ids, labels = model_and_set
    one, s1, p1 = run_search(model, ids, labels, 1, tmp_path / "one.jsonl", racing)
    two, s2, p2 = run_search(model, ids, labels, 2, tmp_path / "two.jsonl", racing)
    assert one == two
    assert s1.cache == s2.cache
    assert p1.sample_forwards == p2.sample_forwards > 0
    def records(name):  # the per-generation log without its timings
        return [{**rec, "trace": {k: v for k, v in rec["trace"].items() if k != "wall_s"}}
                for rec in GenerationLog(tmp_path / name, "test").read()]

    assert records("one.jsonl") == records("two.jsonl") != []
    # both evaluators did work: the jobs really were spread
    assert all(e.sample_forwards > 0 for e in p2.evaluators)
    np.testing.assert_allclose(s1.space.scaling(one).long_factor, s2.space.scaling(two).long_factor)


def test_pool_returns_results_in_job_order(model_and_set):
    model, ids, labels = model_and_set
    space = Space.longrope2(GEOM, TARGET)
    scalings = [space.scaling(space.make(d, np.full(GEOM.n_pairs - d, g))) for d, g in ((5, 2.5), (8, 3.0), (11, 3.5))]
    jobs = [(sc, 0, 6) for sc in scalings] + [(sc, 2, 4) for sc in scalings]
    single = Evaluator(copy.deepcopy(model), ids, labels).map(jobs)
    pool = EvaluatorPool([Evaluator(copy.deepcopy(model), ids, labels) for _ in range(3)])
    assert pool.map(jobs) == single
    assert pool.sample_forwards == 3 * 6 + 3 * 2


def test_pool_rejects_different_sample_sets(model_and_set):
    model, ids, labels = model_and_set
    with pytest.raises(ValueError, match="different sample sets"):
        EvaluatorPool([Evaluator(model, ids, labels), Evaluator(model, ids[:3], labels[:3])])


def test_device_spec():
    assert devices(["0"]) == [torch.device("cpu")]
    assert devices(["cpu", "cpu"]) == [torch.device("cpu")] * 2
    if torch.cuda.device_count() < 2:
        with pytest.raises(Exception, match="GPUs asked"):
            devices([str(torch.cuda.device_count() + 1)])
