"""Paired comparisons of two losses on the same test images: is a difference larger than the noise?

Every test image is segmented by every loss, so each loss is compared with a reference loss image by
image (paired):

- continuous per-image metrics (Dice, area errors, false-positive area): the mean of the per-image
  differences with a bootstrap confidence interval (SciPy's ``bootstrap``, BCa, seeded) and the
  Wilcoxon signed-rank p-value (SciPy's ``wilcoxon``);
- binary per-image outcomes (a lesion-free image predicted with a lesion, a lesion image predicted
  empty): the discordant pairs and the exact McNemar p-value (a two-sided binomial test of the
  discordant pairs, SciPy's ``binomtest``);
- Holm's step-down correction of the p-values over the losses compared with the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 9999


def _as_array(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one value per image, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError(f"{name} holds NaN: drop images without a value before comparing")
    return array


def mean_ci(
    values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` and its bootstrap confidence interval ``(mean, low, high)`` (BCa, seeded).

    All-equal values have a zero-width interval; a single value has none (NaN bounds).
    """
    return _bootstrap_ci(values, np.mean, confidence, resamples, seed)


def median_ci(
    values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """Median of ``values`` and its bootstrap confidence interval ``(median, low, high)``, as :func:`mean_ci`
    (BCa where it is defined, else the percentile interval)."""
    return _bootstrap_ci(values, np.median, confidence, resamples, seed)


def _bootstrap_ci(values, statistic, confidence: float, resamples: int, seed: int) -> tuple[float, float, float]:
    array = _as_array(values, "values")
    if array.size == 0:
        raise ValueError("no values to average")
    estimate = float(statistic(array))
    if array.size == 1:
        return estimate, math.nan, math.nan
    if np.all(array == array[0]):
        return estimate, estimate, estimate
    low, high = math.nan, math.nan
    for method in ("BCa", "percentile"):  # BCa is undefined for some degenerate resamples
        with np.errstate(all="ignore"):
            result = stats.bootstrap(
                (array,),
                statistic,
                confidence_level=confidence,
                n_resamples=resamples,
                method=method,
                vectorized=True,
                rng=np.random.default_rng(seed),
            )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if not (math.isnan(low) or math.isnan(high)):
            break
    return estimate, low, high


def paired_difference(
    values: Sequence[float],
    reference: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, float | int]:
    """Mean per-image difference ``values - reference``, its bootstrap CI and the Wilcoxon p-value.

    Resampling the per-image differences is the paired bootstrap: an image is drawn with both of its
    values. When every difference is 0 the interval is [0, 0] and p is 1.
    """
    values, reference = _as_array(values, "values"), _as_array(reference, "reference")
    if values.shape != reference.shape:
        raise ValueError(f"paired values need one value per image each, got {values.size} and {reference.size}")
    differences = values - reference
    mean, low, high = mean_ci(differences, confidence, resamples, seed)
    if np.all(differences == 0):
        p_value = 1.0
    else:
        p_value = float(stats.wilcoxon(differences, zero_method="wilcox").pvalue)
    return {"difference": mean, "ci_low": low, "ci_high": high, "p": p_value, "n": int(differences.size)}


def mcnemar_exact(outcome: Sequence[bool], reference: Sequence[bool]) -> dict[str, float | int]:
    """Exact McNemar test of two paired binary outcomes.

    ``only_this`` counts images where ``outcome`` is true and ``reference`` false, ``only_reference`` the
    opposite; under the null each discordant pair goes either way with probability 1/2, so the p-value is
    the two-sided binomial test of ``only_this`` out of all discordant pairs (1 when there are none).
    """
    outcome, reference = np.asarray(outcome, dtype=bool), np.asarray(reference, dtype=bool)
    if outcome.shape != reference.shape or outcome.ndim != 1:
        raise ValueError(f"paired outcomes need one value per image each, got {outcome.shape} and {reference.shape}")
    only_this = int(np.sum(outcome & ~reference))
    only_reference = int(np.sum(~outcome & reference))
    discordant = only_this + only_reference
    p_value = 1.0 if discordant == 0 else float(stats.binomtest(only_this, discordant, 0.5).pvalue)
    return {
        "count": int(outcome.sum()),
        "reference_count": int(reference.sum()),
        "only_this": only_this,
        "only_reference": only_reference,
        "p": p_value,
        "n": int(outcome.size),
    }


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given; NaN stays NaN.

    Sorted ascending, the i-th smallest of m p-values becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``.
    """
    indexed = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p_value, index) in enumerate(sorted(indexed)):
        running = max(running, min(1.0, (len(indexed) - rank) * p_value))
        adjusted[index] = running
    return adjusted
