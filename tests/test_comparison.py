"""Paired statistics of the study report: bootstrap intervals, Wilcoxon, exact McNemar, Holm."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lesion_study.study.statistics import holm, mcnemar_exact, mean_ci, paired_difference


def test_interval_covers_a_known_difference_and_excludes_zero_when_large():
    rng = np.random.default_rng(3)
    reference = rng.uniform(0.5, 0.9, size=80)
    shifted = reference + 0.05 + rng.normal(0.0, 0.02, size=80)  # true mean difference 0.05
    result = paired_difference(shifted, reference)
    assert result["ci_low"] < 0.05 < result["ci_high"]
    assert result["ci_low"] > 0  # large against its noise: the interval excludes 0
    assert result["p"] < 1e-6
    assert result["n"] == 80
    assert result["difference"] == pytest.approx(float(np.mean(shifted - reference)))


def test_interval_coverage_over_repeated_experiments():
    """About 95% of the intervals cover the true mean difference (BCa on a skewed distribution)."""
    covered = 0
    for seed in range(100):
        rng = np.random.default_rng(100 + seed)
        reference = rng.uniform(size=40)
        values = reference + rng.exponential(0.1, size=40) - 0.1  # true mean difference 0
        result = paired_difference(values, reference, resamples=1999, seed=seed)
        covered += result["ci_low"] <= 0.0 <= result["ci_high"]
    assert 88 <= covered <= 99


def test_identical_losses_include_zero_and_are_not_significant():
    values = np.random.default_rng(0).uniform(size=30)
    result = paired_difference(values, values)
    assert (result["difference"], result["ci_low"], result["ci_high"], result["p"]) == (0.0, 0.0, 0.0, 1.0)

    rng = np.random.default_rng(1)
    noise_only = values + rng.normal(0.0, 0.05, size=30) * np.where(np.arange(30) % 2, 1, -1)
    result = paired_difference(noise_only, values)
    assert result["ci_low"] < 0 < result["ci_high"]
    assert result["p"] > 0.05


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(5)
    a, b = rng.uniform(size=25), rng.uniform(size=25)
    assert paired_difference(a, b, seed=7) == paired_difference(a, b, seed=7)
    assert paired_difference(a, b, seed=7)["ci_low"] != paired_difference(a, b, seed=8)["ci_low"]


def test_mean_ci_edge_cases():
    assert mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    mean, low, high = mean_ci([0.5])
    assert mean == 0.5 and math.isnan(low) and math.isnan(high)
    mean, low, high = mean_ci([0.0] * 19 + [1.0])  # one positive of 20 (BCa or percentile fallback)
    assert mean == 0.05 and 0.0 <= low <= 0.05 <= high <= 0.25
    with pytest.raises(ValueError, match="NaN"):
        mean_ci([1.0, math.nan])
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])


def test_paired_difference_refuses_unpaired_input():
    with pytest.raises(ValueError, match="one value per image each, got 3 and 2"):
        paired_difference([1, 2, 3], [1, 2])


def test_mcnemar_on_a_hand_computed_table():
    # 2x2 table: both 5, only A 8, only B 1, neither 6 -> exact p = 2 * P(X <= 1 | n=9, 1/2) = 2 * 10/512
    a = [True] * 5 + [True] * 8 + [False] * 1 + [False] * 6
    b = [True] * 5 + [False] * 8 + [True] * 1 + [False] * 6
    result = mcnemar_exact(a, b)
    assert (result["only_this"], result["only_reference"], result["count"], result["reference_count"]) == (8, 1, 13, 6)
    assert result["p"] == pytest.approx(20 / 512)
    assert mcnemar_exact(b, a)["p"] == pytest.approx(20 / 512)  # symmetric
    assert mcnemar_exact([True, False], [True, False])["p"] == 1.0  # no discordant pair
    # 3 vs 0 discordant: p = 2 * (1/2)^3 = 0.25, not significant however lopsided
    assert mcnemar_exact([True] * 3 + [False] * 17, [False] * 20)["p"] == pytest.approx(0.25)


def test_holm_on_a_hand_computed_list():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = holm([0.02, math.nan])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])  # m counts the defined p-values
    assert holm([]) == []
