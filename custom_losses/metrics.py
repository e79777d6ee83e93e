"""Per-image lesion metrics, calibration, and their summary over a test set.

Conventions (Galdran et al., DFUC 2022): a prediction is the foreground probability thresholded at
``threshold`` (0.5); Dice and IoU are 1 when prediction and label are both empty and 0 when exactly one
of them is. Areas are in pixels (voxels in 3D); relative area errors are only defined on images with a
lesion.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch


def _ratio_or_galdran(numerator: int, denominator: int, both_empty: bool) -> float:
    if both_empty:
        return 1.0
    return numerator / denominator if denominator > 0 else 0.0


def image_metrics(prob: torch.Tensor, label: torch.Tensor, threshold: float = 0.5) -> dict[str, float | bool]:
    """Metrics of one image from its foreground probability and binary label (same shape, any dims)."""
    if prob.shape != label.shape:
        raise ValueError(f"probability shape {tuple(prob.shape)} differs from label shape {tuple(label.shape)}")
    prob = prob.detach().double()
    truth = label.detach() > 0.5
    pred = prob > threshold
    intersection = int((pred & truth).sum())
    pred_area, true_area = int(pred.sum()), int(truth.sum())
    soft_area = float(prob.sum())
    both_empty = pred_area == 0 and true_area == 0
    has_lesion = true_area > 0
    return {
        "has_lesion": has_lesion,
        "dice": _ratio_or_galdran(2 * intersection, pred_area + true_area, both_empty),
        "iou": _ratio_or_galdran(intersection, pred_area + true_area - intersection, both_empty),
        "true_area": true_area,
        "pred_area": pred_area,
        "soft_area": soft_area,
        "pred_empty": pred_area == 0,
        "fp_area_fraction": int((pred & ~truth).sum()) / truth.numel(),
        "area_error_hard": (pred_area - true_area) / true_area if has_lesion else math.nan,
        "area_error_soft": (soft_area - true_area) / true_area if has_lesion else math.nan,
    }


class ReliabilityHistogram:
    """Accumulates per-pixel foreground probabilities in equal-width bins for ECE and reliability plots."""

    def __init__(self, num_bins: int = 20) -> None:
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        self.num_bins = num_bins
        self.count = torch.zeros(num_bins, dtype=torch.float64)
        self.sum_prob = torch.zeros(num_bins, dtype=torch.float64)
        self.sum_label = torch.zeros(num_bins, dtype=torch.float64)

    def update(self, prob: torch.Tensor, label: torch.Tensor) -> None:
        prob = prob.detach().flatten().double().cpu()
        truth = (label.detach().flatten() > 0.5).double().cpu()
        bins = (prob * self.num_bins).long().clamp_(0, self.num_bins - 1)
        self.count += torch.bincount(bins, minlength=self.num_bins)
        self.sum_prob += torch.bincount(bins, weights=prob, minlength=self.num_bins)
        self.sum_label += torch.bincount(bins, weights=truth, minlength=self.num_bins)

    def ece(self) -> float:
        """Expected calibration error: ``sum_b n_b / N * |mean prob_b - foreground frequency_b|``."""
        total = self.count.sum()
        if total == 0:
            return math.nan
        gap = (self.sum_prob - self.sum_label).abs()  # n_b * |mean prob - frequency|
        return float(gap.sum() / total)

    def curve(self) -> dict[str, list]:
        """Mean probability, observed foreground frequency and pixel count per bin (empty bins: None)."""

        def per_bin(sums: torch.Tensor) -> list[float | None]:
            return [float(s / n) if n > 0 else None for s, n in zip(sums, self.count, strict=True)]

        return {
            "bin_lower_edge": [i / self.num_bins for i in range(self.num_bins)],
            "mean_probability": per_bin(self.sum_prob),
            "foreground_frequency": per_bin(self.sum_label),
            "count": [int(v) for v in self.count],
        }


def _mean(values: Iterable[float]) -> float | None:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else None


def _median(values: Iterable[float]) -> float | None:
    values = sorted(v for v in values if not math.isnan(v))
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def summarize(rows: Sequence[dict], reliability: ReliabilityHistogram | None = None) -> dict:
    """Test-set summary from :func:`image_metrics` rows, each also holding ``lesion_free`` (from the datalist).

    In distribution = images marked not lesion-free; Dice over all images uses Galdran's convention;
    the false-positive rate is the share of lesion-free images with any predicted foreground.
    """
    if not rows:
        raise ValueError("no evaluated images to summarize")
    lesion = [r for r in rows if not r["lesion_free"]]
    lesion_free = [r for r in rows if r["lesion_free"]]
    summary = {
        "num_images": len(rows),
        "num_lesion": len(lesion),
        "num_lesion_free": len(lesion_free),
        "dice_lesion": _mean(r["dice"] for r in lesion),
        "iou_lesion": _mean(r["iou"] for r in lesion),
        "dice_all": _mean(r["dice"] for r in rows),
        "predicted_empty_share": _mean(float(r["pred_empty"]) for r in rows),
        "ideal_empty_share": len(lesion_free) / len(rows),
        "lesion_free_fp_rate": _mean(float(not r["pred_empty"]) for r in lesion_free),
        "lesion_free_fp_area": _mean(r["fp_area_fraction"] for r in lesion_free),
        "area_error_hard": _mean(r["area_error_hard"] for r in lesion),
        "area_error_soft": _mean(r["area_error_soft"] for r in lesion),
        "median_area_error_hard": _median(r["area_error_hard"] for r in lesion),
        "median_area_error_soft": _median(r["area_error_soft"] for r in lesion),
        "abs_area_error_hard": _mean(abs(r["area_error_hard"]) for r in lesion),
        "abs_area_error_soft": _mean(abs(r["area_error_soft"]) for r in lesion),
    }
    if reliability is not None:
        summary["ece"] = reliability.ece()
        summary["ece_bins"] = reliability.num_bins
        summary["reliability"] = reliability.curve()
    return summary


def test_metrics(summary: dict, exclude: Iterable[str] = ()) -> dict[str, float]:
    """The summary's finite numbers (booleans, lists and ``exclude`` left out) as ``test_<name>`` metrics,
    the names experiment trackers log an evaluation under."""
    excluded = set(exclude)
    return {
        name if name.startswith("test_") else f"test_{name}": value
        for name, value in summary.items()
        if isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and name not in excluded
    }


def volume_metrics(
    prob: torch.Tensor,
    label: torch.Tensor,
    voxel_ml: float,
    class_names: dict[int, str],
    expected: torch.Tensor | None = None,
) -> dict:
    """Per-class Dice and volumes (ml) of one volume from softmax probabilities ``(C, *spatial)``.

    For each class of ``class_names`` and for ``whole`` (all foreground classes together): Dice of the
    argmax mask (Galdran's convention for empty masks), the true volume, the volume of the argmax mask
    (hard) and the sum of probabilities (soft), their signed errors (ml) and relative errors. With
    ``expected``, the label law's per-voxel class probabilities ``(C, *spatial)``
    (custom_losses.label_uncertainty), also the expected volume (their sum) and the hard and soft errors
    against it (``<name>_expected_ml``, ``<name>_error_hard_expected_ml``, ``<name>_error_soft_expected_ml``).
    """
    if label.numel() != prob[0].numel():
        raise ValueError(f"label shape {tuple(label.shape)} does not fit probabilities {tuple(prob.shape)}")
    if expected is not None and tuple(expected.shape) != tuple(prob.shape):
        raise ValueError(f"expected label shape {tuple(expected.shape)} differs from probabilities {tuple(prob.shape)}")
    label = label.reshape(prob.shape[1:]).long()  # (1, *spatial) or (*spatial)
    prob = prob.detach().double()
    hard = prob.argmax(dim=0)
    row: dict = {}
    groups = {name: [c] for c, name in class_names.items()}
    groups["whole"] = list(class_names)
    for name, classes in groups.items():
        truth = torch.isin(label, torch.tensor(classes, device=label.device))
        pred = torch.isin(hard, torch.tensor(classes, device=hard.device))
        soft = float(prob[classes].sum()) * voxel_ml
        true_ml, hard_ml = int(truth.sum()) * voxel_ml, int(pred.sum()) * voxel_ml
        intersection = int((truth & pred).sum())
        total = int(truth.sum()) + int(pred.sum())
        row[f"{name}_dice"] = 1.0 if total == 0 else 2 * intersection / total
        row[f"{name}_true_ml"] = true_ml
        row[f"{name}_hard_ml"] = hard_ml
        row[f"{name}_soft_ml"] = soft
        row[f"{name}_error_hard_ml"] = hard_ml - true_ml
        row[f"{name}_error_soft_ml"] = soft - true_ml
        row[f"{name}_rel_error_hard"] = (hard_ml - true_ml) / true_ml if true_ml > 0 else math.nan
        row[f"{name}_rel_error_soft"] = (soft - true_ml) / true_ml if true_ml > 0 else math.nan
        if expected is not None:
            expected_ml = float(expected.detach().double()[classes].sum()) * voxel_ml
            row[f"{name}_expected_ml"] = expected_ml
            row[f"{name}_error_hard_expected_ml"] = hard_ml - expected_ml
            row[f"{name}_error_soft_expected_ml"] = soft - expected_ml
    return row


def bland_altman(differences: Sequence[float]) -> dict[str, float | None]:
    """Bias (mean difference) and 95% limits of agreement (bias +- 1.96 sample SD)."""
    values = [d for d in differences if not math.isnan(d)]
    if not values:
        return {"bias": None, "lower_limit": None, "upper_limit": None}
    bias = sum(values) / len(values)
    sd = math.sqrt(sum((v - bias) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"bias": bias, "lower_limit": bias - 1.96 * sd, "upper_limit": bias + 1.96 * sd}


def summarize_volumes(
    rows: Sequence[dict], class_names: dict[int, str], reliability: ReliabilityHistogram | None
) -> dict:
    """Mean Dice and volume errors per class, Bland-Altman bias and limits (hard and soft), ECE; with the
    rows' expected volumes (:func:`volume_metrics` ``expected``), the errors against them too."""
    if not rows:
        raise ValueError("no evaluated volumes to summarize")
    summary: dict = {"num_volumes": len(rows)}
    for name in [*class_names.values(), "whole"]:
        summary[f"{name}_dice"] = _mean(r[f"{name}_dice"] for r in rows)
        for kind in ("hard", "soft"):
            errors = [r[f"{name}_error_{kind}_ml"] for r in rows]
            summary[f"{name}_error_{kind}_ml"] = _mean(errors)
            summary[f"{name}_abs_error_{kind}_ml"] = _mean(abs(e) for e in errors)
            summary[f"{name}_rel_error_{kind}"] = _mean(r[f"{name}_rel_error_{kind}"] for r in rows)
            summary[f"{name}_bland_altman_{kind}"] = bland_altman(errors)
        summary[f"{name}_true_ml"] = _mean(r[f"{name}_true_ml"] for r in rows)
        if all(f"{name}_expected_ml" in r for r in rows):
            summary[f"{name}_expected_ml"] = _mean(r[f"{name}_expected_ml"] for r in rows)
            for kind in ("hard", "soft"):
                errors = [r[f"{name}_error_{kind}_expected_ml"] for r in rows]
                summary[f"{name}_error_{kind}_expected_ml"] = _mean(errors)
                summary[f"{name}_bland_altman_{kind}_expected"] = bland_altman(errors)
    if reliability is not None:
        summary["ece"] = reliability.ece()
        summary["ece_bins"] = reliability.num_bins
        summary["reliability"] = reliability.curve()
    return summary
