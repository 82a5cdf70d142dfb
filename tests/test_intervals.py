"""Intervals of reported figures: known answers, and the unit of resampling is respected."""
import numpy as np
import pytest

from diffmine.evaluation.intervals import (clears, mean_estimate, proportion_interval, statistic_estimate,
                                           unit_interval)
from diffmine.evaluation.metrics import auroc


def test_clopper_pearson_known_answers():
    lo, hi = proportion_interval(8, 8)
    assert lo == pytest.approx(0.025 ** (1 / 8), abs=1e-6) and hi == 1.0  # 0.631: 8/8 is no proof of 1.0
    lo, hi = proportion_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-6)


def test_mean_interval_matches_the_normal_approximation():
    x = np.random.default_rng(1).normal(3.0, 1.0, 400)
    est = mean_estimate(x)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert est["value"] == pytest.approx(x.mean())
    assert est["ci"][0] == pytest.approx(x.mean() - half, abs=0.03)
    assert est["ci"][1] == pytest.approx(x.mean() + half, abs=0.03)
    assert est["n"] == 400 and mean_estimate(x) == est  # seeded: the same interval on a rerun


def test_rows_of_one_unit_are_resampled_together():
    """Three copies of each of 20 values: as 60 units the interval would be ~sqrt(3) too narrow."""
    x = np.random.default_rng(2).normal(0, 1, 20)
    rows, units = np.repeat(x, 3), np.repeat(np.arange(20), 3)
    grouped = mean_estimate(rows, units)
    alone = mean_estimate(x)
    naive = mean_estimate(rows)
    width = lambda e: e["ci"][1] - e["ci"][0]
    assert grouped["n"] == 20 and naive["n"] == 60
    assert width(grouped) == pytest.approx(width(alone), rel=0.15)
    assert width(naive) < 0.75 * width(grouped)


def test_paired_margin_of_two_aurocs():
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(60, bool), np.ones(60, bool)]
    good = y + rng.normal(0, 0.6, 120)
    bad = y + rng.normal(0, 2.0, 120)
    margin = statistic_estimate(np.arange(120), lambda r: auroc(good[r], y[r]) - auroc(bad[r], y[r]))
    assert margin["value"] == pytest.approx(auroc(good, y) - auroc(bad, y))
    assert margin["ci"][0] < margin["value"] < margin["ci"][1]
    assert clears(margin, 0.0)
    same = statistic_estimate(np.arange(120), lambda r: auroc(good[r], y[r]) - auroc(good[r], y[r]))
    assert same["ci"] == [0.0, 0.0] and not clears(same, 0.0)


def test_a_single_unit_has_no_spread():
    assert unit_interval([7, 7, 7], lambda r: float(len(r))) == (3.0, 3.0)
