"""Evidence-to-question distances: measured on the corpus, and needle placements that follow them."""

import random

import numpy as np

from longrope2 import distances as dist
from longrope2.corpus import TokenizedCorpus
from longrope2.needles import NeedleBuilder


def test_repeat_distances_of_identifiers(tiny_llama):
    _, tok = tiny_llama
    mask = dist.identifier_tokens(tok)
    words = [i for i, ok in enumerate(mask) if ok][:3]
    other = next(i for i, ok in enumerate(mask) if not ok)

    class Doc:
        split = "train"

        def __len__(self):
            return 1

        def __getitem__(self, i):
            a, b, c = words
            return np.array([a, other, b, other, a, b, other, c, a])

    # a at 0, 4, 8 -> 4, 4; b at 2, 5 -> 3; c once; the non-identifier token is never counted
    assert sorted(dist.repeat_distances(Doc(), tok).tolist()) == [3, 4, 4]


def test_sampler_follows_the_histogram_conditioned_on_the_room():
    weights = np.zeros(101)
    weights[[5, 50, 100]] = [0.7, 0.2, 0.1]
    s = dist.DistanceSampler(weights)
    rng = random.Random(0)
    draws = np.array([s.draw(rng, 100) for _ in range(4000)])
    assert set(draws.tolist()) == {5, 50, 100}
    assert abs((draws == 5).mean() - 0.7) < 0.03 and abs((draws == 100).mean() - 0.1) < 0.02
    # with room for 60 tokens only, the mass beyond is dropped and the rest renormalised
    short = np.array([s.draw(rng, 60) for _ in range(2000)])
    assert set(short.tolist()) == {5, 50} and abs((short == 5).mean() - 0.7 / 0.9) < 0.03


def test_needles_at_corpus_distances_are_mostly_close_to_the_question(tiny_corpus, tiny_llama):
    _, tok = tiny_llama
    train = TokenizedCorpus(tiny_corpus, "train")
    measured = dist.repeat_distances(train, tok)
    s = dist.DistanceSampler.from_distances(measured, 512)
    b = NeedleBuilder(train, tok, {"preamble": ""}, seed=3)
    placed = np.array([b.sample(512, 1, distances=s).distance for _ in range(200)])
    uniform = np.array([b.sample(512, 1).distance for _ in range(200)])
    within = measured[measured <= 512]
    # needles snap to the nearest line start: placed distances track the corpus's
    assert abs(np.median(placed) - np.median(within)) < 0.25 * np.median(within) + 8
    assert np.median(placed) < np.median(uniform) and (placed > 256).mean() < (uniform > 256).mean()
    for smp in (b.sample(512, 4, distances=s), b.sample(512, 1)):
        assert len(smp.input_ids) == 512 and 0 < smp.distance < 512
