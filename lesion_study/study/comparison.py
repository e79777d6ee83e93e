"""Paired, per-image comparisons of a study's losses with a reference loss (results.md and results.csv).

Each run writes one row per test image (``per_image.csv``; ``per_volume.csv`` for 3D bundles). A loss's
value on an image is averaged over its runs (folds x seeds) first, so every image counts once; then each
loss is compared with the reference on the images both were evaluated on (lesion_study.study.statistics).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from custom_losses.handlers import CSV_FIELDS
from lesion_study.study.layout import ReportInputError
from lesion_study.study.statistics import holm, mcnemar_exact, mean_ci, median_ci, paired_difference


def _number(text: str) -> float:
    return math.nan if text in ("", None) else float(text)


def _flag(text: str) -> bool:
    if text not in ("True", "False"):
        raise ValueError(f"expected True or False, got {text!r}")
    return text == "True"


@dataclass(frozen=True)
class PairedMetric:
    """A per-image quantity compared between losses.

    ``value`` reads it from a per-image CSV row; ``images`` says which images it is defined on (``lesion``,
    ``lesion_free`` or ``all``); reported values are multiplied by ``scale`` and given in ``unit``.
    A ``binary`` metric is an image-level outcome (McNemar), the others are compared as paired means.
    """

    key: str
    title: str
    value: Callable[[dict], float]
    images: str = "all"
    scale: float = 1.0
    unit: str = ""
    better: str = "max"  # "max", "min" or "zero" (closest to 0)
    binary: bool = False


LESION_PAIRED = [
    PairedMetric("dice_lesion", "Dice lesion", lambda r: _number(r["dice"]), "lesion", 100, "points"),
    PairedMetric("iou_lesion", "IoU lesion", lambda r: _number(r["iou"]), "lesion", 100, "points"),
    PairedMetric(
        "area_error_hard", "area err. (mask)", lambda r: _number(r["area_error_hard"]), "lesion", 100, "% pts", "zero"
    ),
    PairedMetric(
        "area_error_soft", "area err. (prob.)", lambda r: _number(r["area_error_soft"]), "lesion", 100, "% pts", "zero"
    ),
    PairedMetric(
        "abs_area_error_hard",
        "abs. area err. (mask)",
        lambda r: abs(_number(r["area_error_hard"])),
        "lesion",
        100,
        "% pts",
        "min",
    ),
    PairedMetric(
        "abs_area_error_soft",
        "abs. area err. (prob.)",
        lambda r: abs(_number(r["area_error_soft"])),
        "lesion",
        100,
        "% pts",
        "min",
    ),
    PairedMetric(
        "lesion_free_fp_area",
        "lesion-free FP area",
        lambda r: _number(r["fp_area_fraction"]),
        "lesion_free",
        100,
        "% pts",
        "min",
    ),
    PairedMetric(
        "lesion_free_with_lesion",
        "lesion-free image predicted with a lesion",
        lambda r: not _flag(r["pred_empty"]),
        "lesion_free",
        better="min",
        binary=True,
    ),
    PairedMetric(
        "lesion_missed",
        "lesion image predicted empty",
        lambda r: _flag(r["pred_empty"]),
        "lesion",
        better="min",
        binary=True,
    ),
]


def _volume_metric(key: str, title: str, better: str, absolute: bool = False) -> PairedMetric:
    column = key.replace("abs_", "")
    if absolute:
        return PairedMetric(key, title, lambda r: abs(_number(r[column])), "all", 1.0, "ml", better)
    scale, unit = (100, "points") if key.endswith("_dice") else (1.0, "ml")
    return PairedMetric(key, title, lambda r: _number(r[column]), "all", scale, unit, better)


VOLUME_PAIRED = [
    _volume_metric("whole_dice", "Dice whole", "max"),
    _volume_metric("anterior_dice", "Dice anterior", "max"),
    _volume_metric("posterior_dice", "Dice posterior", "max"),
    _volume_metric("whole_error_hard_ml", "vol. err. hard", "zero"),
    _volume_metric("whole_error_soft_ml", "vol. err. soft", "zero"),
    _volume_metric("whole_abs_error_hard_ml", "abs. vol. err. hard", "min", absolute=True),
    _volume_metric("whole_abs_error_soft_ml", "abs. vol. err. soft", "min", absolute=True),
]

# the metrics the closing sentences speak about: in distribution, on lesion-free images, on areas/volumes
HEADLINE = ("dice_lesion", "lesion_free_fp_area", "lesion_free_with_lesion", "area_error_soft", "area_error_hard")
HEADLINE_VOLUME = ("whole_dice", "whole_error_soft_ml", "whole_error_hard_ml")


def read_runs(paths: list[Path]) -> dict[str, list[dict]]:
    """Rows of the per-image CSVs of one loss's runs, grouped by image name."""
    rows: dict[str, list[dict]] = {}
    for path in paths:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            required = set(CSV_FIELDS) if path.name == "per_image.csv" else {"image"}
            missing = sorted(required - set(reader.fieldnames or []))
            if missing:
                raise ReportInputError(f"{path}: columns {', '.join(missing)} missing (truncated or not a metrics CSV)")
            for index, row in enumerate(reader):
                name = row.get("image")
                if not name:
                    raise ReportInputError(f"{path}: row {index + 2} has no image name")
                rows.setdefault(name, []).append(row)
    return rows


def _in_subset(rows: list[dict], images: str) -> bool:
    if images == "all":
        return True
    lesion_free = _flag(rows[0]["lesion_free"])
    return lesion_free if images == "lesion_free" else not lesion_free


def per_image_values(rows_by_image: dict[str, list[dict]], metric: PairedMetric) -> dict[str, float]:
    """The metric on each image it is defined on, averaged over runs (binary: true in at least half of them)."""
    values = {}
    for name, rows in rows_by_image.items():
        if not _in_subset(rows, metric.images):
            continue
        run_values = [float(metric.value(r)) for r in rows]
        run_values = [v for v in run_values if not math.isnan(v)]
        if run_values:
            mean = sum(run_values) / len(run_values)
            values[name] = float(mean >= 0.5) if metric.binary else mean
    return values


def compare(
    runs_by_loss: dict[str, dict[str, list[dict]]], reference: str, metrics: list[PairedMetric], seed: int = 0
) -> list[dict]:
    """Every loss against ``reference`` on every metric, Holm-corrected per metric over the losses."""
    if reference not in runs_by_loss:
        raise ReportInputError(f"reference loss {reference!r} has no evaluated runs (have: {', '.join(runs_by_loss)})")
    results = []
    for metric in metrics:
        reference_values = per_image_values(runs_by_loss[reference], metric)
        block = []
        for loss, rows_by_image in runs_by_loss.items():
            if loss == reference:
                continue
            values = per_image_values(rows_by_image, metric)
            images = sorted(set(values) & set(reference_values))
            if not images:
                continue
            this = [values[i] for i in images]
            other = [reference_values[i] for i in images]
            if metric.binary:
                result = mcnemar_exact([v > 0.5 for v in this], [v > 0.5 for v in other])
            else:
                result = paired_difference(this, other, seed=seed)
                result["mean"], result["reference_mean"] = float(np.mean(this)), float(np.mean(other))
            block.append({"loss": loss, "metric": metric, **result})
        for entry, adjusted in zip(block, holm([e["p"] for e in block]), strict=True):
            entry["p_holm"] = adjusted
        results += block
    return results


def image_means(rows_by_image: dict[str, list[dict]], metric: PairedMetric) -> tuple[float, float, float] | None:
    """Mean of the metric over images (per-image values averaged over runs) and its bootstrap 95% CI."""
    values = list(per_image_values(rows_by_image, metric).values())
    return mean_ci(values) if values else None


def excludes_zero(result: dict) -> bool:
    low, high = result.get("ci_low", math.nan), result.get("ci_high", math.nan)
    return not (math.isnan(low) or math.isnan(high)) and (low > 0 or high < 0)


def format_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_clause(p: float) -> str:
    """``p < 0.001`` or ``p = 0.012`` for running text."""
    text = format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _scaled(result: dict, key: str) -> float:
    return result[key] * result["metric"].scale


def _digits(metric: PairedMetric) -> int:
    return 3 if metric.unit == "ml" else 1


def format_difference(result: dict) -> str:
    digits = _digits(result["metric"])
    text = f"{_scaled(result, 'difference'):+.{digits}f}"
    if not math.isnan(result["ci_low"]):
        text += f" [{_scaled(result, 'ci_low'):+.{digits}f}, {_scaled(result, 'ci_high'):+.{digits}f}]"
    return f"**{text}**" if excludes_zero(result) else text


def markdown(results: list[dict], reference: str, num_runs: dict[str, int], seed: int = 0) -> list[str]:
    """The two paired tables (mean differences, image-level outcomes) with their legends."""
    continuous = [r for r in results if not r["metric"].binary]
    binary = [r for r in results if r["metric"].binary]
    losses = sorted({r["loss"] for r in results})
    compared = len(losses)
    runs = ", ".join(f"{loss} {num_runs[loss]}" for loss in [reference, *losses] if loss in num_runs)
    lines = []
    if continuous:
        lines += [
            f"### Paired differences to {reference} (per test image)",
            "",
            f"| metric | loss | mean | {reference} | difference to {reference} [95% CI] | p | Holm p |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in continuous:
            metric, digits = r["metric"], _digits(r["metric"])
            lines.append(
                f"| {metric.title} ({metric.unit}) | {r['loss']} | {_scaled(r, 'mean'):.{digits}f} | "
                f"{_scaled(r, 'reference_mean'):.{digits}f} | {format_difference(r)} | {format_p(r['p'])} | "
                f"{format_p(r['p_holm'])} |"
            )
        lines += [
            "",
            f"Each image's value is first averaged over a loss's runs (runs per loss: {runs}); the difference is",
            f"loss minus {reference}, averaged over the n images both were evaluated on (Dice, IoU and area errors on",
            "lesion images, FP area on lesion-free images), with a 95% BCa bootstrap interval over images (paired",
            f"resampling, 9999 resamples, seed {seed}). Bold: the interval excludes 0. p: Wilcoxon signed-rank test;",
            f"Holm p: Holm's correction over the {compared} losses compared with {reference}, per metric.",
            "Dice, IoU: higher is better; area errors (predicted minus true, % of the true area): closest to 0;",
            "abs. errors, FP area (% of the image's pixels): lower is better. The interval is about the mean",
            "difference, the Wilcoxon test about the typical paired difference: with heavy-tailed errors (areas) they",
            "can disagree, and the reading below lists a difference only when both do (interval excludes 0, Holm",
            "p < 0.05).",
            "",
        ]
    if binary:
        lines += [
            f"### Image-level outcomes against {reference}",
            "",
            f"| outcome | loss | images | {reference} | only this loss | only {reference} | McNemar p | Holm p |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in binary:
            lines.append(
                f"| {r['metric'].title} | {r['loss']} | {r['count']}/{r['n']} | {r['reference_count']}/{r['n']} | "
                f"{r['only_this']} | {r['only_reference']} | {format_p(r['p'])} | {format_p(r['p_holm'])} |"
            )
        lines += [
            "",
            "An image counts when the outcome occurred in at least half of the loss's runs. Only the discordant",
            "images (the outcome under one loss but not the other) carry information: p is the exact McNemar test",
            f"(two-sided binomial test of the discordant images); Holm over the {compared} losses compared. Fewer is",
            "better for both outcomes.",
            "",
        ]
    return lines


def sentences(results: list[dict], reference: str, headline: tuple[str, ...]) -> list[str]:
    """One sentence per loss from the measured differences only: among the headline metrics, those whose
    interval excludes 0 and whose Holm-corrected Wilcoxon p is below 0.05 (outcomes: Holm McNemar p below
    0.05), or a statement that there were none."""
    lines = []
    for loss in dict.fromkeys(r["loss"] for r in results):
        parts = []
        for key in headline:
            for r in (r for r in results if r["loss"] == loss and r["metric"].key == key):
                metric = r["metric"]
                if metric.binary and r["p_holm"] < 0.05:
                    parts.append(
                        f"{metric.title} {r['count']}/{r['n']} against {r['reference_count']}/{r['n']} "
                        f"(Holm {p_clause(r['p_holm'])})"
                    )
                elif not metric.binary and excludes_zero(r) and r["p_holm"] < 0.05:
                    digits = _digits(metric)
                    parts.append(
                        f"{_scaled(r, 'difference'):+.{digits}f} {metric.unit} {metric.title} "
                        f"[{_scaled(r, 'ci_low'):+.{digits}f}, {_scaled(r, 'ci_high'):+.{digits}f}], "
                        f"Holm {p_clause(r['p_holm'])}"
                    )
        if parts:
            lines.append(f"- {loss} against {reference}: " + "; ".join(parts) + ".")
        else:
            lines.append(f"- {loss}: no headline difference to {reference} (interval excluding 0 and Holm p < 0.05).")
    return lines


def csv_columns(results: list[dict]) -> tuple[dict[str, dict], list[str]]:
    """results.csv columns per loss: ``<metric>_diff/_ci_low/_ci_high/_p/_p_holm`` (outcomes: counts)."""
    by_loss: dict[str, dict] = {}
    fields: list[str] = []
    for r in results:
        key = r["metric"].key
        if r["metric"].binary:
            values = {
                f"{key}_count": r["count"],
                f"{key}_reference_count": r["reference_count"],
                f"{key}_only_this": r["only_this"],
                f"{key}_only_reference": r["only_reference"],
            }
        else:
            values = {
                f"{key}_diff": _scaled(r, "difference"),
                f"{key}_ci_low": _scaled(r, "ci_low"),
                f"{key}_ci_high": _scaled(r, "ci_high"),
            }
        values.update({f"{key}_n": r["n"], f"{key}_p": r["p"], f"{key}_p_holm": r["p_holm"]})
        by_loss.setdefault(r["loss"], {}).update(values)
        fields += [f for f in values if f not in fields]
    return by_loss, fields


# The DBCE paper's claim (arXiv 2412.06045): better than balanced CE, on par with CE + Dice. Checked image by
# image whenever both losses of a pair were run.
CLAIM_PAIRS = (("dbce", "balanced_ce"), ("dbce", "ce_dice"))


def claim_lines(
    runs_by_loss: dict[str, dict[str, list[dict]]], metrics: list[PairedMetric], headline: tuple[str, ...]
) -> list[str]:
    """The headline metrics of each claim pair (loss minus the other), Holm-corrected per metric over the
    pairs; empty when no pair was run."""
    pairs = [(loss, other) for loss, other in CLAIM_PAIRS if loss in runs_by_loss and other in runs_by_loss]
    if not pairs:
        return []
    chosen = [m for m in metrics if m.key in headline]
    by_pair = [compare({other: runs_by_loss[other], loss: runs_by_loss[loss]}, other, chosen) for loss, other in pairs]
    names = {"balanced_ce": "balanced CE", "ce_dice": "CE + Dice"}
    lines = [
        f"### DBCE against {' and '.join(names[other] for _, other in pairs)} (arXiv 2412.06045: better than "
        "balanced CE, close to CE + Dice)",
        "",
        "| metric | loss - other | difference [95% CI] or images | p | Holm p |",
        "|---|---|---|---|---|",
    ]
    for metric in chosen:
        block = [
            (pair, r) for pair, results in zip(pairs, by_pair, strict=True) for r in results if r["metric"] is metric
        ]
        for ((loss, other), r), adjusted in zip(block, holm([r["p"] for _, r in block]), strict=True):
            if metric.binary:
                value = f"{r['count']}/{r['n']} against {r['reference_count']}/{r['n']}"
                title = metric.title
            else:
                value, title = format_difference(r), f"{metric.title} ({metric.unit})"
            lines.append(f"| {title} | {loss} - {other} | {value} | {format_p(r['p'])} | {format_p(adjusted)} |")
    lines += [
        "",
        "Per test image, as the paired section above (images averaged over runs first; bootstrap interval and",
        f"Wilcoxon p, exact McNemar p for image counts); Holm over the {len(pairs)} comparison(s) per metric.",
        "",
    ]
    return lines


# Galdran et al.'s own figures (arXiv 2209.06078), the one place this repository keeps them. Per dataset:
# where they were read, how he measured them, and per loss ``test_dice_all`` and ``test_predicted_empty``
# (% of test images; the five-fold ensemble on the test set) and ``cv_dice`` / ``cv_std`` (the
# cross-validation Dice: mean and numpy std, ddof 0, over the five folds of each fold model's validation
# Dice). Only the polyp data has them: his foot-ulcer experiments are on DFUC 2022, not on FUSeg.
GALDRAN_2022 = {
    "polyp": {
        "source": "Galdran, Carneiro, Gonzalez Ballester, DFUC 2022 (arXiv 2209.06078); the figures as printed "
        "by `test_polyps.ipynb` of github.com/agaldran/lesion_losses_ood (commit c6726e0b0ccf, cell "
        '"Resnet18": `fpnet_resnet18_W`), the training in its `train_losses.py`',
        "setting": "FPN-ResNet18 in a two-network cascade, ImageNet-pretrained, 480x640 inputs, NAdam 3e-4 with "
        "per-iteration cosine annealing over 12 epochs, batch 8; trained on the five Kvasir-SEG folds, tested on "
        "EndoTect (200 polyp and 20 lesion-free images)",
        "test": "Dice over all 220 test images (a lesion-free image scores 1 if predicted empty, else 0) and the "
        "share of them predicted empty, both of the five fold models' mean probability thresholded at 0.5, "
        "each fold model at its last epoch (`evaluate_test_preds`)",
        "cv": "each fold model's validation Dice at the last epoch (`val_metrics.txt`), mean and std over the "
        "five folds (`print_cv_results`: numpy's std, ddof 0)",
        "losses": {
            "ce": {"test_dice_all": 87.333, "test_predicted_empty": 6.364, "cv_dice": 89.19, "cv_std": 1.18},
            "dice": {"test_dice_all": 81.914, "test_predicted_empty": 1.818, "cv_dice": 88.83, "cv_std": 1.04},
            "ce_finetune_dice": {
                "test_dice_all": 86.616,
                "test_predicted_empty": 5.909,
                "cv_dice": 89.06,
                "cv_std": 1.30,
            },
            "ce_linear_dice": {
                "test_dice_all": 86.939,
                "test_predicted_empty": 5.455,
                "cv_dice": 89.76,
                "cv_std": 1.12,
            },
            "ce_dice": {"test_dice_all": 84.889, "test_predicted_empty": 4.091, "cv_dice": 89.81, "cv_std": 1.16},
        },
    },
}

# Galdran's test measure, per image: Dice over all test images with his convention (the per-image CSV's
# ``dice`` already scores a lesion-free image 1 if predicted empty, else 0)
DICE_ALL = PairedMetric("dice_all", "Dice all images", lambda r: _number(r["dice"]), "all", 100, "points")
# the paired tests of his comparison: Dice over all images, on lesion images, and the lesion-free images
GALDRAN_PAIRED = [DICE_ALL] + [
    m
    for m in LESION_PAIRED
    if m.key in ("dice_lesion", "lesion_free_fp_area", "lesion_free_with_lesion", "lesion_missed")
]


# Volumes against the expected volume of the training label law (custom_losses.label_uncertainty): per class
# and whole, from the argmax mask and from the probabilities.
LAW_VOLUMES = ("anterior", "posterior", "whole")
LAW_KINDS = (("hard", "mask"), ("soft", "probabilities"))


def expected_error(row: dict, name: str, kind: str) -> float:
    """``name``'s hard or soft volume error (ml) against the expected volume of the label law. A row written
    before evaluations wrote expected volumes (such runs had no label uncertainty) is taken against the
    label's volume, which is then the expected volume."""
    column = f"{name}_error_{kind}_expected_ml"
    return _number(row[column]) if column in row else _number(row[f"{name}_error_{kind}_ml"])


def expected_volume(row: dict, name: str) -> float:
    """The expected volume of ``name`` (ml); the label's for rows without it (see :func:`expected_error`)."""
    column = f"{name}_expected_ml"
    return _number(row[column]) if column in row else _number(row[f"{name}_true_ml"])


EXPECTED_PAIRED = [
    PairedMetric(
        f"{name}_error_{kind}_expected_ml",
        f"{name}, {source}",
        lambda r, n=name, k=kind: expected_error(r, n, k),
        "all",
        1.0,
        "ml",
        "zero",
    )
    for name in LAW_VOLUMES
    for kind, source in LAW_KINDS
]

# which minimiser of scripts/volume_bias_study.label_law_ideal_volumes a loss has, per source (mask, probabilities)
THEORY_LOSSES = {"ce": ("ce_hard", "ce"), "dice": ("dice", "dice"), "batch_dice": ("batch_dice", "batch_dice")}


def format_interval(estimate: tuple[float, float, float], digits: int = 3) -> str:
    value, low, high = estimate
    return f"{value:+.{digits}f}" + ("" if math.isnan(low) else f" [{low:+.{digits}f}, {high:+.{digits}f}]")


def theory_bias(theory: dict, loss: str, name: str, kind: str, images: set[str]) -> tuple[float, float] | None:
    """Mean bias (ml) and mean relative bias of ``loss``'s minimiser for ``name`` over ``images`` (the volumes of
    the theory file that were evaluated), or None when the calculation has no minimiser for that loss or
    none of the volumes."""
    if loss not in THEORY_LOSSES:
        return None
    minimiser = THEORY_LOSSES[loss][0 if kind == "hard" else 1]
    entries = [e for e in theory["volumes"] if e.get("image") in images]
    if not entries:
        return None
    bias = float(np.mean([e["bias"][minimiser][name] for e in entries]))
    return bias, bias / float(np.mean([e["expected"][name] for e in entries]))


def expected_volume_lines(
    runs_by_loss: dict[str, dict[str, list[dict]]],
    reference: str,
    width: float,
    theory: dict | None = None,
    seed: int = 0,
) -> list[str]:
    """The section on volume errors against the expected volume: per class and whole, from the mask and the
    probabilities, mean and median over volumes with 95% intervals and, against ``reference``, the paired
    mean and median differences; then the Dice each loss reaches next to its bias, and the minimisers' bias
    that the controlled study's calculation gives for this law (``theory``, label_law_theory.json)."""
    if not runs_by_loss:
        return []
    has_reference = reference in runs_by_loss and len(runs_by_loss) > 1
    paired = (
        {(r["loss"], r["metric"].key): r for r in compare(runs_by_loss, reference, EXPECTED_PAIRED, seed)}
        if (has_reference)
        else {}
    )
    lines = [
        f"### Volume error against the expected volume (label law width {width:g} voxels)",
        "",
        "The expected volume of a class is the sum of its per-voxel probabilities under the label law the",
        "models were trained on (`custom_losses.label_uncertainty`; at width 0, the label's volume): what an",
        "unbiased model hits. Error = predicted minus expected, in ml, per volume (averaged over a loss's runs).",
        "",
        f"| volume | from | loss | mean [95% CI] | median [95% CI] | mean - {reference} [95% CI] | "
        f"median of differences to {reference} [95% CI] | Holm p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for metric in EXPECTED_PAIRED:
        name, source = metric.title.split(", ")
        reference_values = per_image_values(runs_by_loss.get(reference, {}), metric)
        for loss, rows_by_image in runs_by_loss.items():
            values = per_image_values(rows_by_image, metric)
            if not values:
                continue
            cells = [
                format_interval(mean_ci(list(values.values()), seed=seed)),
                format_interval(median_ci(list(values.values()), seed=seed)),
            ]
            result = paired.get((loss, metric.key))
            if result is None:
                cells += ["", "", ""]
            else:
                images = sorted(set(values) & set(reference_values))
                differences = [values[i] - reference_values[i] for i in images]
                cells += [
                    format_difference(result),
                    format_interval(median_ci(differences, seed=seed)),
                    format_p(result["p_holm"]),
                ]
            lines.append(f"| {name} | {source} | {loss} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Intervals: 95% BCa bootstrap over volumes (percentile where BCa is undefined), 9999 resamples, seed",
        f"{seed}; the paired differences resample volumes with both losses' values. Holm p: Wilcoxon signed-rank",
        f"test of the paired differences, Holm's correction over the losses compared with {reference}, per row",
        "group. Bold: the interval of the mean difference excludes 0.",
        "",
    ]
    dice_metrics = {n: next(m for m in VOLUME_PAIRED if m.key == f"{n}_dice") for n in LAW_VOLUMES}
    theory_note = theory is not None
    head = "| loss | Dice whole | anterior | posterior | bias whole, mask | bias whole, prob. | anterior, prob. | "
    head += "posterior, prob. |"
    rule = "|---|---|---|---|---|---|---|---|"
    if theory_note:
        head += " theory: whole, mask | whole, prob. | anterior | posterior |"
        rule += "---|---|---|---|"
    lines += ["### Dice next to the volume bias, and what the calculation predicts", "", head, rule]
    biases = {
        (n, k): next(m for m in EXPECTED_PAIRED if m.key == f"{n}_error_{k}_expected_ml")
        for n in LAW_VOLUMES
        for k in ("hard", "soft")
    }
    for loss, rows_by_image in runs_by_loss.items():
        cells = []
        for name in ("whole", "anterior", "posterior"):  # the header's order
            values = per_image_values(rows_by_image, dice_metrics[name])
            cells.append(f"{100 * np.mean(list(values.values())):.1f}" if values else "n/a")
        for name, kind in (("whole", "hard"), ("whole", "soft"), ("anterior", "soft"), ("posterior", "soft")):
            values = per_image_values(rows_by_image, biases[(name, kind)])
            cells.append(f"{np.mean(list(values.values())):+.3f}" if values else "n/a")
        if theory_note:
            images = set(rows_by_image)
            for name, kind in (("whole", "hard"), ("whole", "soft"), ("anterior", "soft"), ("posterior", "soft")):
                predicted = theory_bias(theory, loss, name, kind, images)
                cells.append("n/a" if predicted is None else f"{predicted[0]:+.3f} ({100 * predicted[1]:+.1f}%)")
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Dice: mean over volumes (points); bias: mean error against the expected volume (ml).",
    ]
    if theory_note:
        lines += [
            "Theory: the bias of each loss's minimiser of the expected training loss under this law (width",
            f"{theory['width']:g}), mean over the same volumes, ml and % of the expected volume",
            "(`scripts/volume_bias_study.py label_law`): CE's probabilities are unbiased and its mask is the argmax",
            "of the law's probabilities; per-image soft Dice's minimiser is the best 0/1 map (the controlled",
            "study's calculation); batch soft Dice's the large-batch limit. No calculation for the mixed losses.",
        ]
    return lines + [""]
