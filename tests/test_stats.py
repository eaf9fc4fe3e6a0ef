"""Intervals behind every table cell: known values, determinism, pairing and stratification."""

import json

import numpy as np
import pytest

from longrope2.stats import (Interval, bootstrap_mean, paired_bootstrap_diff, paired_bootstrap_ratio, verdict, wilson,
                             z_value)


def test_z_value_matches_normal_quantiles():
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-5)
    assert z_value(0.90) == pytest.approx(1.644854, abs=1e-5)
    assert z_value(0.99) == pytest.approx(2.575829, abs=1e-5)
    with pytest.raises(ValueError):
        z_value(1.0)


def test_wilson_known_values():
    iv = wilson(8, 10)
    assert iv.estimate == pytest.approx(0.8)
    assert iv.lo == pytest.approx(0.4902, abs=1e-3)
    assert iv.hi == pytest.approx(0.9433, abs=1e-3)
    assert iv.n == 10


def test_wilson_boundaries_are_exact_and_inside_unit_interval():
    none = wilson(0, 10)
    assert none.lo == 0.0 and none.hi == pytest.approx(0.2775, abs=1e-3)
    every = wilson(10, 10)
    assert every.hi == 1.0 and every.lo == pytest.approx(0.7225, abs=1e-3)


def test_wilson_rejects_no_trials():
    with pytest.raises(ValueError, match="n=0"):
        wilson(0, 0)


def test_bootstrap_of_bernoulli_agrees_with_wilson():
    rng = np.random.default_rng(123)
    scores = (rng.random(4000) < 0.3).astype(float)
    boot = bootstrap_mean(scores)
    ref = wilson(scores.sum(), scores.size)
    assert boot.estimate == pytest.approx(ref.estimate)
    assert abs(boot.lo - ref.lo) < 0.01 and abs(boot.hi - ref.hi) < 0.01
    assert boot.n == 4000


def test_bootstrap_is_deterministic_and_seed_dependent():
    scores = np.random.default_rng(1).random(300)
    assert bootstrap_mean(scores, seed=7) == bootstrap_mean(scores, seed=7)
    assert bootstrap_mean(scores, seed=7) != bootstrap_mean(scores, seed=8)


def test_grouped_estimate_is_mean_of_group_means():
    scores = [1.0, 0.0, 0.0, 0.0, 0.5, 1.0]
    groups = ["a", "b", "b", "b", "c", "c"]
    iv = bootstrap_mean(scores, groups=groups)
    assert iv.estimate == pytest.approx((1.0 + 0.0 + 0.75) / 3)
    assert iv.n == 6


def test_stratified_resampling_keeps_group_sizes():
    # Unstratified resampling would mix 1s and 0s in varying proportion;
    # within-group resampling keeps each task mean fixed here.
    scores = [1.0] * 10 + [0.0] * 30
    groups = ["easy"] * 10 + ["hard"] * 30
    iv = bootstrap_mean(scores, groups=groups)
    assert (iv.estimate, iv.lo, iv.hi) == (0.5, 0.5, 0.5)
    assert bootstrap_mean(scores).hi > bootstrap_mean(scores).lo


def test_constant_scores_give_degenerate_interval():
    iv = bootstrap_mean([0.1] * 37)
    assert iv.lo == iv.hi == iv.estimate


def test_paired_diff_of_identical_scores_is_exactly_zero():
    a = np.random.default_rng(2).random(200)
    diff = paired_bootstrap_diff(a, a.copy())
    assert (diff.estimate, diff.lo, diff.hi) == (0.0, 0.0, 0.0)
    assert verdict(diff) == "no difference"


def test_clear_difference_verdicts():
    ones, zeros = np.ones(50), np.zeros(50)
    assert verdict(paired_bootstrap_diff(ones, zeros)) == "higher"
    assert verdict(paired_bootstrap_diff(zeros, ones)) == "lower"
    assert paired_bootstrap_diff(ones, zeros).estimate == 1.0


def test_paired_interval_is_narrower_than_unpaired():
    rng = np.random.default_rng(3)
    b = (rng.random(500) < 0.5).astype(float)
    a = b.copy()
    a[rng.choice(500, size=25, replace=False)] = 1.0  # a = b with a few extra wins
    paired = paired_bootstrap_diff(a, b)
    # Shuffling b keeps its mean but breaks the pairing: an unpaired bootstrap.
    unpaired = paired_bootstrap_diff(a, rng.permutation(b))
    assert paired.estimate == pytest.approx(unpaired.estimate)
    assert (paired.hi - paired.lo) < 0.5 * (unpaired.hi - unpaired.lo)
    assert verdict(paired) == "higher"


def test_paired_diff_with_groups_uses_group_means():
    a = [1.0, 1.0, 1.0, 0.0]
    b = [0.0, 0.0, 0.0, 0.0]
    groups = ["x", "y", "y", "y"]
    assert paired_bootstrap_diff(a, b, groups=groups).estimate == pytest.approx((1.0 + 2 / 3) / 2)


def test_fmt_and_as_dict():
    iv = Interval(estimate=0.5312, lo=0.4621, hi=0.6, n=208)
    assert iv.fmt(scale=100, digits=1) == "53.1 [46.2, 60.0] (n=208)"
    assert iv.fmt() == "0.5 [0.5, 0.6] (n=208)"
    d = iv.as_dict()
    assert d == {"estimate": 0.5312, "lo": 0.4621, "hi": 0.6, "n": 208}
    json.dumps(wilson(np.int64(3), np.int64(9)).as_dict())
    assert iv.covers(0.5) and not iv.covers()


def test_input_errors():
    with pytest.raises(ValueError, match="empty"):
        bootstrap_mean([])
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap_diff([], [])
    with pytest.raises(ValueError, match=r"len\(a\)=3.*len\(b\)=2"):
        paired_bootstrap_diff([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="groups"):
        bootstrap_mean([1.0, 0.0], groups=["a"])


def test_paired_ratio_is_retention():
    before = np.array([1.0] * 40 + [0.0] * 10)
    after = before.copy()
    after[:4] = 0.0  # four of the 40 solved samples lost
    ratio = paired_bootstrap_ratio(after, before, seed=1)
    assert ratio.estimate == pytest.approx(36 / 40)
    assert ratio.lo < 0.9 < ratio.hi <= 1.0
    assert paired_bootstrap_ratio(before, before).as_dict() == {"estimate": 1.0, "lo": 1.0, "hi": 1.0, "n": 50}
    with pytest.raises(ValueError, match="0 or less"):
        paired_bootstrap_ratio([1.0, 0.0], [0.0, 0.0])
