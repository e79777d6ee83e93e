"""The study report: every run's summary JSON and per-image CSV -> results.csv, results.md and PNG plots.

A run is one (bundle, seed, fold) in ``OUTPUT/runs/<bundle>/seed<s>/``; the per-run tables give the mean
and spread over runs, the paired sections (lesion_study/study/comparison.py) compare each loss with a
reference loss image by image.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from custom_losses.atomic import write_csv_atomic, write_text_atomic  # noqa: E402
from custom_losses.conventions import EVALUATED_MODEL_FILES, lesion_pixels  # noqa: E402
from custom_losses.metrics import bland_altman  # noqa: E402
from lesion_study.study.comparison import (  # noqa: E402
    GALDRAN_2022,
    GALDRAN_PAIRED,
    HEADLINE,
    HEADLINE_VOLUME,
    LESION_PAIRED,
    VOLUME_PAIRED,
    PairedMetric,
    _number,
    claim_lines,
    compare,
    csv_columns,
    expected_volume,
    expected_volume_lines,
    format_difference,
    format_p,
    image_means,
    markdown,
    per_image_values,
    read_runs,
    sentences,
)
from lesion_study.study.layout import ReportInputError, read_settings, run_path  # noqa: E402
from lesion_study.study.statistics import mean_ci  # noqa: E402

# (summary key, column title, what is best: "max", "min", "zero" = closest to 0, "ideal" = closest to the ideal share)
LESION_METRICS = [
    ("dice_lesion", "Dice lesion", "max"),
    ("iou_lesion", "IoU lesion", "max"),
    ("dice_all", "Dice all", "max"),
    ("predicted_empty_share", "pred. empty", "ideal"),
    ("lesion_free_fp_rate", "lesion-free FP rate", "min"),
    ("lesion_free_fp_area", "lesion-free FP area", "min"),
    ("area_error_hard", "area err. (mask)", "zero"),
    ("area_error_soft", "area err. (prob.)", "zero"),
    ("abs_area_error_hard", "abs. area err. (mask)", "min"),
    ("abs_area_error_soft", "abs. area err. (prob.)", "min"),
    ("ece", "ECE", "min"),
]

BETTER = {
    "max": "higher is better",
    "min": "lower is better",
    "zero": "closest to 0 is better; + over-, - under-estimates",
    "ideal": "closest to the share of lesion-free test images is better",
}
COLUMN_MEANINGS = {
    "dice_lesion": "mean Dice over the test images that hold a lesion",
    "iou_lesion": "mean IoU (Jaccard) over the test images that hold a lesion",
    "dice_all": "mean Dice over all test images; a lesion-free image scores 1 if predicted empty, else 0",
    "predicted_empty_share": "share of test images predicted without any lesion",
    "lesion_free_fp_rate": "share of lesion-free images with at least one predicted lesion pixel",
    "lesion_free_fp_area": "mean share of a lesion-free image's pixels predicted as lesion",
    "area_error_hard": "mean of (predicted mask area - true area) / true area, on lesion images",
    "area_error_soft": "mean of (sum of lesion probabilities - true area) / true area, on lesion images",
    "abs_area_error_hard": "mean of |predicted mask area - true area| / true area, on lesion images",
    "abs_area_error_soft": "mean of |sum of probabilities - true area| / true area, on lesion images",
    "ece": "expected calibration error of the pixel probabilities (reliability.png)",
    "whole_dice": "Dice of the whole hippocampus (anterior + posterior), per volume",
    "anterior_dice": "Dice of the anterior class, per volume",
    "posterior_dice": "Dice of the posterior class, per volume",
    "whole_error_hard_ml": "predicted (argmax mask) minus true whole volume, ml",
    "whole_error_soft_ml": "summed probabilities minus true whole volume, ml",
    "whole_abs_error_hard_ml": "|predicted mask volume - true volume|, ml",
    "whole_abs_error_soft_ml": "|summed probabilities - true volume|, ml",
    "anterior_error_soft_ml": "summed anterior probabilities minus true anterior volume, ml",
    "posterior_error_soft_ml": "summed posterior probabilities minus true posterior volume, ml",
    "whole_error_hard_expected_ml": "predicted mask minus expected whole volume under the label law, ml",
    "whole_error_soft_expected_ml": "summed probabilities minus expected whole volume under the label law, ml",
}


VOLUME_METRICS = [
    ("whole_dice", "Dice whole", "max"),
    ("anterior_dice", "Dice anterior", "max"),
    ("posterior_dice", "Dice posterior", "max"),
    ("whole_error_hard_ml", "vol. err. hard (ml)", "zero"),
    ("whole_error_soft_ml", "vol. err. soft (ml)", "zero"),
    ("whole_abs_error_hard_ml", "abs. vol. err. hard (ml)", "min"),
    ("whole_abs_error_soft_ml", "abs. vol. err. soft (ml)", "min"),
    ("anterior_error_soft_ml", "anterior err. soft (ml)", "zero"),
    ("posterior_error_soft_ml", "posterior err. soft (ml)", "zero"),
    ("whole_error_hard_expected_ml", "vol. err. hard vs expected (ml)", "zero"),
    ("whole_error_soft_expected_ml", "vol. err. soft vs expected (ml)", "zero"),
    ("ece", "ECE", "min"),
]


def loss_of(bundle: str) -> str:
    return bundle.split("_", 1)[1] if "_" in bundle else bundle


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(out: Path, names: list[str], folds: list[int], seeds: list[int]) -> list[dict]:
    """One record per bundle and kind (``runs``: every (seed, fold); ``ensemble``: one per seed)."""
    records = []
    for name in names:
        runs = [run_path(out, name, seed) for seed in seeds]
        summaries = [s for r in runs for f in folds if (s := _read_json(r / "eval" / f"fold{f}" / "summary.json"))]
        if summaries:
            records.append({"bundle": name, "loss": loss_of(name), "kind": "runs", "summaries": summaries})
        ensembles = [s for r in runs if (s := _read_json(r / "eval" / "ensemble" / "summary.json"))]
        if ensembles:
            records.append({"bundle": name, "loss": loss_of(name), "kind": "ensemble", "summaries": ensembles})
    return records


def _values(record: dict, key: str) -> list[float]:
    return [s[key] for s in record["summaries"] if isinstance(s.get(key), (int, float)) and s[key] is not None]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def best_per_column(records: list[dict], metrics: list[tuple[str, str, str]]) -> dict[tuple[str, str], set[int]]:
    """Indices of the best record per (kind, metric)."""
    best: dict[tuple[str, str], set[int]] = {}
    for kind in ("runs", "ensemble"):
        indices = [i for i, r in enumerate(records) if r["kind"] == kind]
        for key, _, direction in metrics:
            scored = []
            for i in indices:
                mean, _ = mean_std(_values(records[i], key))
                if mean is None:
                    continue
                ideal = records[i]["summaries"][0].get("ideal_empty_share", 0.0)
                score = {"max": -mean, "min": mean, "zero": abs(mean), "ideal": abs(mean - ideal)}[direction]
                scored.append((score, i))
            if scored:
                top = min(score for score, _ in scored)
                best[(kind, key)] = {i for score, i in scored if math.isclose(score, top, rel_tol=1e-9, abs_tol=1e-12)}
    return best


def run_tables(records: list[dict], metrics: list[tuple[str, str, str]]) -> tuple[list[dict], list[str]]:
    """Rows of results.csv (mean and std over runs) and the markdown lines of the per-run tables."""
    rows = []
    for record in records:
        row = {"loss": record["loss"], "bundle": record["bundle"], "kind": record["kind"]}
        row["n"] = len(record["summaries"])
        for key, _, _ in metrics:
            mean, std = mean_std(_values(record, key))
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
        rows.append(row)

    best = best_per_column(records, metrics)
    lines = []
    titles = (("runs", "Mean ± std over runs (folds x seeds)"), ("ensemble", "Fold ensemble (mean probability)"))
    for kind, title in titles:
        indices = [i for i, r in enumerate(records) if r["kind"] == kind]
        if not indices:
            continue
        lines += [f"### {title}", "", "| loss | n | " + " | ".join(t for _, t, _ in metrics) + " |"]
        lines.append("|---|---|" + "---|" * len(metrics))
        for i in indices:
            cells = []
            for key, _, _ in metrics:
                mean, std = mean_std(_values(records[i], key))
                text = "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}"
                cells.append(f"**{text}**" if i in best.get((kind, key), set()) else text)
            lines.append(f"| {records[i]['loss']} | {len(records[i]['summaries'])} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Best value per column in bold. Columns, and which way is better:")
    lines.append("")
    lines += [f"- **{title}**: {COLUMN_MEANINGS[key]} ({BETTER[direction]})" for key, title, direction in metrics]
    lines.append("")
    return rows, lines


def _ranked(records: list[dict], key: str, score) -> list[tuple[float, str]]:
    """(mean over runs, loss) of the per-run records, best first by ``score(mean)``."""
    means = [(mean_std(_values(r, key))[0], r["loss"]) for r in records if r["kind"] == "runs"]
    return sorted(((m, loss) for m, loss in means if m is not None), key=lambda item: score(item[0]))


def opening_sentences(records: list[dict], volumes: bool) -> list[str]:
    """Three sentences from the measured means only: who won in distribution, on lesion-free images, on
    areas (volumes); the paired sections below say which of these differences are larger than the noise."""
    if not records:
        return []
    if volumes:
        dice, soft, hard = (
            _ranked(records, "whole_dice", lambda m: -m),
            _ranked(records, "whole_error_soft_ml", abs),
            _ranked(records, "whole_error_hard_ml", abs),
        )
        lines = []
        if dice:
            (best, best_loss), (worst, worst_loss) = dice[0], dice[-1]
            lines.append(f"Highest Dice (whole): {best_loss} ({best:.3f}; lowest {worst_loss}, {worst:.3f}).")
        if soft and hard:
            lines.append(
                f"Smallest volume bias: from probabilities {soft[0][1]} ({soft[0][0]:+.3f} ml, largest {soft[-1][1]} "
                f"{soft[-1][0]:+.3f} ml); from the mask {hard[0][1]} ({hard[0][0]:+.3f} ml)."
            )
        return lines + [""]
    dice = _ranked(records, "dice_lesion", lambda m: -m)
    fp_rate = _ranked(records, "lesion_free_fp_rate", lambda m: m)
    fp_area = _ranked(records, "lesion_free_fp_area", lambda m: m)
    soft, hard = _ranked(records, "area_error_soft", abs), _ranked(records, "area_error_hard", abs)
    lines = []
    if dice:
        lines.append(
            f"**In distribution**, {dice[0][1]} had the highest Dice on lesion images ({dice[0][0]:.3f}); "
            f"{dice[-1][1]} the lowest ({dice[-1][0]:.3f})."
        )
    if fp_rate and fp_area:
        lines.append(
            f"**On lesion-free images**, {fp_rate[0][1]} put a false lesion on the fewest "
            f"({fp_rate[0][0]:.0%} of them; "
            f"{fp_rate[-1][1]}: {fp_rate[-1][0]:.0%}) and {fp_area[0][1]} marked the smallest area "
            f"({fp_area[0][0]:.2%} of the pixels; {fp_area[-1][1]}: {fp_area[-1][0]:.2%})."
        )
    if soft and hard:
        lines.append(
            f"**Areas**: summed probabilities were closest to the true area with {soft[0][1]} "
            f"({soft[0][0]:+.0%} mean relative error; {soft[-1][1]}: {soft[-1][0]:+.0%}), the thresholded mask with "
            f"{hard[0][1]} ({hard[0][0]:+.0%})."
        )
    if lines:
        lines.append("(Means over runs; which differences exceed the noise: the paired sections below.)")
    return lines + [""]


def per_image_csvs(out: Path, bundle: str, folds: list[int], seeds: list[int]) -> list[Path]:
    """The per-image (2D) or per-volume (3D) CSVs of a bundle's evaluated runs."""
    paths = []
    for seed in seeds:
        for fold in folds:
            path = run_path(out, bundle, seed) / "eval" / f"fold{fold}" / "per_image.csv"
            path = path if path.is_file() else path.with_name("per_volume.csv")
            if path.is_file():
                paths.append(path)
    return paths


def _error_bar(mean_low_high: tuple[float, float, float] | None) -> tuple[float, list[list[float]]] | None:
    if mean_low_high is None:
        return None
    mean, low, high = mean_low_high
    if math.isnan(low):
        return mean, [[0.0], [0.0]]
    return mean, [[mean - low], [high - mean]]


def plot_dice_vs_fp(out: Path, runs_by_loss: dict[str, dict[str, list[dict]]]) -> None:
    """Dice on lesion images against the share of lesion-free images with a false lesion (95% CI over images)."""
    fp_images = next(m for m in LESION_PAIRED if m.key == "lesion_free_with_lesion")
    dice = next(m for m in LESION_PAIRED if m.key == "dice_lesion")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for loss, rows_by_image in runs_by_loss.items():
        x, y = _error_bar(image_means(rows_by_image, fp_images)), _error_bar(image_means(rows_by_image, dice))
        if x is None or y is None:
            continue
        ax.errorbar(x[0], y[0], xerr=x[1], yerr=y[1], fmt="o", capsize=3, label=loss)
        ax.annotate(loss, (x[0], y[0]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("lesion-free images with a false lesion (share)")
    ax.set_ylabel("Dice on lesion images")
    ax.set_title("In distribution vs lesion-free false positives (95% CI over images)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "dice_vs_lesion_free_fp.png", dpi=120)
    plt.close(fig)


def plot_area_errors(out: Path, runs_by_loss: dict[str, dict[str, list[dict]]], volumes: bool = False) -> None:
    """Per-image relative area (volume) errors as boxes, with the mean and its 95% CI over images."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    columns = ("whole_rel_error_hard", "whole_rel_error_soft") if volumes else ("area_error_hard", "area_error_soft")
    for ax, column, title in zip(axes, columns, ("thresholded mask", "sum of probabilities"), strict=True):
        metric = PairedMetric(column, column, lambda r, c=column: _number(r.get(c, "")), "all" if volumes else "lesion")
        data, labels, means = [], [], []
        for loss, rows_by_image in runs_by_loss.items():
            values = list(per_image_values(rows_by_image, metric).values())
            if values:
                data.append(values)
                labels.append(loss)
                means.append(mean_ci(values))
        if data:
            ax.boxplot(data, showfliers=False)
            ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right")
            for position, (mean, low, high) in enumerate(means, start=1):
                bar = [[0.0], [0.0]] if math.isnan(low) else [[mean - low], [high - mean]]
                ax.errorbar(position, mean, yerr=bar, fmt="D", color="tab:red", markersize=4, capsize=3)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_title(f"relative {'volume' if volumes else 'area'} error, {title}")
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("(predicted - true) / true area")
    fig.suptitle("boxes: per-image errors; red: mean with 95% CI over images", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "area_errors.png", dpi=120)
    plt.close(fig)


def plot_bland_altman_expected(out: Path, runs_by_loss: dict[str, dict[str, list[dict]]]) -> None:
    """Bland-Altman per loss: whole volume predicted minus expected (label law) against their mean, per
    volume (averaged over runs), from probabilities (dots) and mask (crosses), bias and 95% limits."""
    losses = list(runs_by_loss)
    if not losses:
        return
    columns = min(len(losses), 3)
    rows = math.ceil(len(losses) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.8 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(losses) :]:
        ax.axis("off")
    for ax, loss in zip(axes.flat, losses, strict=False):
        for kind, marker, colour in (("soft", "o", "tab:blue"), ("hard", "x", "tab:orange")):
            points = []
            for rows_of_image in runs_by_loss[loss].values():
                predicted = [_number(r[f"whole_{kind}_ml"]) for r in rows_of_image]
                expected = [expected_volume(r, "whole") for r in rows_of_image]
                points.append((float(np.mean(predicted)), float(np.mean(expected))))
            mean = [(p + e) / 2 for p, e in points]
            difference = [p - e for p, e in points]
            label = "probabilities" if kind == "soft" else "mask"
            ax.scatter(mean, difference, s=12, marker=marker, color=colour, label=label, alpha=0.8)
            limits = bland_altman(difference)
            if limits["bias"] is not None:
                style = "-" if kind == "soft" else "--"
                for value in (limits["bias"], limits["lower_limit"], limits["upper_limit"]):
                    ax.axhline(value, color=colour, linestyle=style, linewidth=1 if value == limits["bias"] else 0.6)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_title(loss, fontsize=10)
        ax.set_xlabel("(predicted + expected) / 2, whole (ml)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("predicted - expected (ml)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        "Bland-Altman against the expected volume of the label law: lines = bias and 95% limits of agreement",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "bland_altman_expected.png", dpi=120)
    plt.close(fig)


VALIDATION_TAG = "val_mean_dice"
# a curve has flattened when the best validation Dice rose by less than this over its last fifth of epochs
FLAT_TOLERANCE = 0.01
FLAT_TAIL = 0.2


CURVE_FILE = "validation.csv"  # in logs/fold<k>/ of a kept record (``keep``): epoch, val_mean_dice


def validation_curve(run_dir: Path, fold: int) -> list[tuple[int, float]]:
    """Validation Dice per epoch from a run's TensorBoard log (a resumed run's repeated epochs: the last),
    or from the ``validation.csv`` of a kept record, which has no TensorBoard log."""
    log_dir = run_dir / "logs" / f"fold{fold}"
    if not log_dir.is_dir():
        return []
    if not any(log_dir.glob("events.out.tfevents.*")):
        return read_curve(log_dir / CURVE_FILE) if (log_dir / CURVE_FILE).is_file() else []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    if VALIDATION_TAG not in events.Tags().get("scalars", []):
        return []
    by_epoch = {}
    for event in sorted(events.Scalars(VALIDATION_TAG), key=lambda e: e.wall_time):
        by_epoch[int(event.step)] = float(event.value)
    return sorted(by_epoch.items())


def read_curve(path: Path) -> list[tuple[int, float]]:
    try:
        with open(path, newline="") as handle:
            return [(int(row["epoch"]), float(row[VALIDATION_TAG])) for row in csv.DictReader(handle)]
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as error:
        raise ReportInputError(f"{path}: not a validation curve (columns epoch, {VALIDATION_TAG}): {error!r}") from None


def write_curve(path: Path, curve: list[tuple[int, float]]) -> None:
    write_csv_atomic(path, [{"epoch": e, VALIDATION_TAG: repr(v)} for e, v in curve], ["epoch", VALIDATION_TAG])


def convergence(curve: list[tuple[int, float]]) -> dict:
    """Best and last validation Dice, and the gain of the best value over the last fifth of the epochs."""
    epochs = [e for e, _ in curve]
    values = [v for _, v in curve]
    tail = max(2, math.ceil(FLAT_TAIL * len(values)))
    best = max(values)
    before_tail = max(values[:-tail]) if len(values) > tail else math.nan
    gain = best - before_tail
    return {
        "epochs": epochs[-1],
        "best": best,
        "best_epoch": epochs[values.index(best)],
        "last": values[-1],
        "tail_epochs": tail,
        "tail_gain": gain,
        "flattened": bool(gain < FLAT_TOLERANCE) if not math.isnan(gain) else False,
        # not flattened, but the last epochs fell back from a late best: a peak rather than a rise
        "fell_after_peak": bool(values[-1] < best - FLAT_TOLERANCE),
    }


def convergence_verdict(result: dict) -> str:
    if result["flattened"]:
        return "yes"
    if math.isnan(result["tail_gain"]):
        return "**no** (too few epochs to tell)"
    if result["fell_after_peak"]:
        return f"**no**: peaked at epoch {result['best_epoch']}, then fell"
    return "**no**: still rising"


def run_curves(out: Path, names: list[str], folds: list[int], seeds: list[int]) -> dict[str, list]:
    """Every run's (seed, fold, validation curve) per loss."""
    curves: dict[str, list] = {}
    for name in names:
        for seed in seeds:
            for fold in folds:
                curve = validation_curve(run_path(out, name, seed), fold)
                if curve:
                    curves.setdefault(loss_of(name), []).append((seed, fold, curve))
    return curves


def labelled_curves(by_run: dict[str, list]) -> dict[str, list]:
    """``run_curves``' runs as (label, curve) per loss."""
    return {loss: [(f"seed {s} fold {f}", c) for s, f, c in runs] for loss, runs in by_run.items()}


def validation_curves(out: Path, names: list[str], folds: list[int], seeds: list[int]) -> dict[str, list]:
    """Every run's (label, validation curve) per loss."""
    return labelled_curves(run_curves(out, names, folds, seeds))


EVALUATED_EPOCH = {"best": "best epoch's", "final": "last epoch's"}  # the bundles' evaluation_model
ENSEMBLE_MEMBER = {"best": "the bundles' best-validation checkpoint", "final": "the last epoch"}


def convergence_lines(curves: dict[str, list], evaluation_model: str = "best") -> list[str]:
    """The convergence table; ``evaluation_model`` (best or final) says which epoch's model was evaluated."""
    if not curves:
        return []
    evaluated = EVALUATED_EPOCH.get(evaluation_model, evaluation_model)
    lines = [
        "### Convergence (validation Dice per epoch, `validation_curves.png`)",
        "",
        "| loss | run | epochs | best (epoch) | last | gain over the last epochs | flattened |",
        "|---|---|---|---|---|---|---|",
    ]
    for loss, runs in curves.items():
        for label, curve in runs:
            c = convergence(curve)
            gain = "n/a" if math.isnan(c["tail_gain"]) else f"{c['tail_gain']:+.3f} (last {c['tail_epochs']})"
            lines.append(
                f"| {loss} | {label} | {c['epochs']} | {c['best']:.3f} ({c['best_epoch']}) | {c['last']:.3f} | "
                f"{gain} | {convergence_verdict(c)} |"
            )
    lines += [
        "",
        f"Flattened: the best validation Dice rose by less than {FLAT_TOLERANCE} over the last fifth of the epochs",
        f"(at least 2). *Still rising*: it ended within {FLAT_TOLERANCE} of a best reached in that stretch, so",
        "more epochs may still help. *Peaked, then fell*: its best came in that stretch and the last epoch was",
        f"more than {FLAT_TOLERANCE} below it (the evaluated model is the {evaluated}); whether more epochs help",
        "or the peak is the noise of a small validation set, only a longer run tells.",
        "",
    ]
    return lines


def plot_validation_curves(out: Path, curves: dict[str, list]) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for index, (loss, runs) in enumerate(curves.items()):
        color = f"C{index % 10}"
        for number, (_, curve) in enumerate(runs):
            epochs, values = zip(*curve, strict=True)
            ax.plot(epochs, values, color=color, marker=".", linewidth=1, label=loss if number == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Dice")
    ax.set_title("Validation Dice per epoch (one line per run)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "validation_curves.png", dpi=120)
    plt.close(fig)


def plot_reliability(out: Path, records: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="calibrated")
    for record in (r for r in records if r["kind"] == "runs"):
        curves = [s["reliability"] for s in record["summaries"] if "reliability" in s]
        if not curves:
            continue
        count = np.sum([c["count"] for c in curves], axis=0).astype(float)
        sum_prob = np.sum(
            [[(m or 0) * n for m, n in zip(c["mean_probability"], c["count"], strict=True)] for c in curves], axis=0
        )
        sum_label = np.sum(
            [[(f or 0) * n for f, n in zip(c["foreground_frequency"], c["count"], strict=True)] for c in curves], axis=0
        )
        present = count > 0
        ax.plot(
            sum_prob[present] / count[present], sum_label[present] / count[present], marker=".", label=record["loss"]
        )
    ax.set_xlabel("predicted lesion probability")
    ax.set_ylabel("observed lesion frequency")
    ax.set_title("Reliability (all test pixels)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=120)
    plt.close(fig)


def plot_examples(out: Path, names: list[str], fold: int, seed: int) -> None:
    """Rows: losses; columns: example test images, the prediction in red over the image and the ground
    truth outlined in green (lesion-free images last, titled so)."""
    images = sorted((out / "example_images").glob("*")) if (out / "example_images").is_dir() else []
    prediction_dirs = {n: run_path(out, n, seed) / "examples" / f"fold{fold}" for n in names}
    rows = [n for n in names if prediction_dirs[n].is_dir()]
    if not images or not rows:
        return
    fig, axes = plt.subplots(len(rows), len(images), figsize=(1.6 * len(images), 1.6 * len(rows)), squeeze=False)
    for r, name in enumerate(rows):
        for c, image_path in enumerate(images):
            ax = axes[r][c]
            rgb = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32) / 255
            prediction = prediction_dirs[name] / f"{image_path.stem}_seg.png"
            if prediction.is_file():
                mask = lesion_pixels(Image.open(prediction).convert("L").resize(rgb.shape[1::-1], Image.NEAREST))
                rgb[mask] = 0.5 * rgb[mask] + 0.5 * np.array([1.0, 0.0, 0.0])
            ax.imshow(rgb)
            truth_path = out / "example_masks" / image_path.name
            if truth_path.is_file():
                truth = lesion_pixels(Image.open(truth_path).convert("L").resize(rgb.shape[1::-1], Image.NEAREST))
                if truth.any():
                    ax.contour(truth, levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("lesion-free" if image_path.name.startswith("free_") else "lesion", fontsize=8)
            if c == 0:
                ax.set_ylabel(loss_of(name), fontsize=8)
    fig.suptitle(f"Prediction in red, ground truth outlined in green (fold {fold}, seed {seed})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "examples.png", dpi=110)
    plt.close(fig)


def ensemble_csvs(out: Path, bundle: str, seeds: list[int]) -> list[Path]:
    """The per-image CSVs of a bundle's fold-ensemble evaluations (one per seed)."""
    paths = [run_path(out, bundle, seed) / "eval" / "ensemble" / "per_image.csv" for seed in seeds]
    return [p for p in paths if p.is_file()]


def last_validation(by_run: dict[str, list]) -> dict[str, list[dict]]:
    """Per loss and run: the validation Dice of the last validated epoch (Galdran's), and the best one."""
    return {
        loss: [
            {"seed": seed, "fold": fold, "epoch": curve[-1][0], "value": curve[-1][1], "best": max(v for _, v in curve)}
            for seed, fold, curve in runs
        ]
        for loss, runs in by_run.items()
    }


def fold_spread(entries: list[dict], key: str = "value") -> tuple[float, float | None, str]:
    """Mean and std (numpy's, ddof 0, as Galdran's ``print_cv_results``) over folds of ``key``, each fold's
    value first averaged over its seeds; with one fold, over its seeds; and what the spread is over."""
    by_fold: dict[int, list[float]] = {}
    for entry in entries:
        by_fold.setdefault(entry["fold"], []).append(entry[key])
    if len(by_fold) > 1:
        means = [statistics.fmean(values) for _, values in sorted(by_fold.items())]
        per_fold = max(len(values) for values in by_fold.values())
        seeds = f", each fold the mean of its {per_fold} seeds" if per_fold > 1 else ""
        return statistics.fmean(means), statistics.pstdev(means), f"{len(means)} folds{seeds}"
    ((fold, values),) = by_fold.items()
    if len(values) > 1:
        return statistics.fmean(values), statistics.pstdev(values), f"{len(values)} seeds of fold {fold}, not folds"
    return values[0], None, f"one run (fold {fold})"


def _points(mean: float | None, std: float | None = None, digits: int = 2) -> str:
    if mean is None:
        return "n/a"
    return f"{100 * mean:.{digits}f}" + ("" if std is None else f" ± {100 * std:.{digits}f}")


def _false_lesions(summary: dict) -> str:
    rate, count = summary.get("lesion_free_fp_rate"), summary.get("num_lesion_free")
    return "" if rate is None or not count else f"{round(rate * count)}/{count}"


def _paired_table(results: list[dict], reference: str) -> list[str]:
    """One table of paired tests against ``reference``: mean differences (bootstrap interval, Wilcoxon) and
    image-level outcomes (discordant images, exact McNemar), Holm-corrected per metric over the losses."""
    lines = [
        f"| metric | loss | this loss | {reference} | difference to {reference} [95% CI], or images only under one "
        "| p | Holm p |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        metric = r["metric"]
        if metric.binary:
            lines.append(
                f"| {metric.title} | {r['loss']} | {r['count']}/{r['n']} | {r['reference_count']}/{r['n']} | "
                f"only this loss {r['only_this']}, only {reference} {r['only_reference']} | {format_p(r['p'])} "
                f"(McNemar) | {format_p(r['p_holm'])} |"
            )
        else:
            lines.append(
                f"| {metric.title} ({metric.unit}) | {r['loss']} | {metric.scale * r['mean']:.2f} | "
                f"{metric.scale * r['reference_mean']:.2f} | {format_difference(r)} | {format_p(r['p'])} | "
                f"{format_p(r['p_holm'])} |"
            )
    return lines + [
        "",
        "Per test image: each image's value averaged over a loss's runs (outcomes: in at least half of them), "
        f"then loss minus {reference} over the images; Dice all images is over all test images with Galdran's "
        "convention, Dice lesion over the images with a lesion, FP area over the lesion-free ones. 95% BCa "
        "bootstrap interval (paired, 9999 resamples, seed 0; bold: it excludes 0) and Wilcoxon signed-rank p; "
        "image counts: exact McNemar p on the discordant images. Holm over the losses compared, per metric.",
        "",
    ]


def _test_rows(records: list[dict], kind: str, paper: dict, per_run: bool) -> list[str]:
    """Rows of Galdran's test measures (Dice over all images, share predicted empty) for ``kind`` records."""
    lines = []
    for record in (r for r in records if r["kind"] == kind):
        theirs = paper.get(record["loss"], {})
        dice_all = mean_std(_values(record, "dice_all"))
        empty = mean_std(_values(record, "predicted_empty_share"))
        std = (lambda pair: pair[1]) if len(record["summaries"]) > 1 else (lambda pair: None)
        cells = [
            record["loss"],
            str(len(record["summaries"])),
            _points(dice_all[0], std(dice_all)),
            f"{theirs['test_dice_all']:.3f}" if theirs else "",
            _points(empty[0], std(empty)),
            f"{theirs['test_predicted_empty']:.3f}" if theirs else "",
        ]
        if not per_run:
            cells.append(_points(mean_std(_values(record, "dice_lesion"))[0]))
        cells.append(", ".join(filter(None, (_false_lesions(s) for s in record["summaries"]))))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _claim_b_sentence(records: list[dict], kind: str, what: str) -> str:
    """Who had the highest Dice over all images and the fewest lesion-free images with a false lesion."""
    means = {
        r["loss"]: (mean_std(_values(r, "dice_all"))[0], mean_std(_values(r, "lesion_free_fp_rate"))[0])
        for r in records
        if r["kind"] == kind
    }
    dice = [m[0] for m in means.values() if m[0] is not None]
    fp_rate = [m[1] for m in means.values() if m[1] is not None]
    if not dice or not fp_rate:
        return ""
    most, fewest = max(dice), min(fp_rate)
    top = [loss for loss, m in means.items() if m[0] is not None and math.isclose(m[0], most)]
    quiet = [loss for loss, m in means.items() if m[1] is not None and math.isclose(m[1], fewest)]
    return (
        f"Over all test images ({what}), {' and '.join(top)} had the highest Dice ({100 * most:.2f}) and "
        f"{' and '.join(quiet)} put a false lesion on the fewest lesion-free images ({fewest:.0%}); "
        "Galdran's claim is that CE does both. Which differences exceed the noise: the paired tests."
    )


def galdran_lines(
    dataset: str,
    records: list[dict],
    runs_by_loss: dict[str, dict[str, list[dict]]],
    ensembles_by_loss: dict[str, dict[str, list[dict]]],
    validation: dict[str, list[dict]],
    reference: str = "ce",
) -> list[str]:
    """Galdran et al.'s comparison as he measured it, for a study whose test set has lesion-free images:
    Dice over all test images and the share predicted empty, of the fold ensemble when there is one (his
    figures are of the five-fold ensemble) and of the single models, each with paired tests against
    ``reference``; the validation Dice at the last epoch, mean ± std over folds, beside his
    cross-validation Dice. His figures come from ``GALDRAN_2022`` (polyp data only)."""
    lesion_free = any(rows[0].get("lesion_free") == "True" for by in runs_by_loss.values() for rows in by.values())
    if not lesion_free:
        return []
    published = GALDRAN_2022.get(dataset)
    paper = published["losses"] if published else {}
    lines = ["### Galdran et al.'s comparison, as he measured it", ""]
    if published:
        lines += [
            f"His figures: {published['source']}. His setting: {published['setting']}. His test figures: "
            f"{published['test']}. His in-distribution figures: {published['cv']}.",
            "",
        ]
    else:
        lines += [
            "Galdran et al.'s own figures (arXiv 2209.06078; `GALDRAN_2022` in lesion_study/study/comparison.py) are "
            f"of the polyp data (EndoTect test set); none are set beside study `{dataset}`: the tables give its "
            "figures in his measures.",
            "",
        ]
    ideal = next((s["ideal_empty_share"] for r in records for s in r["summaries"] if "ideal_empty_share" in s), None)
    ideal_text = f" (ideal {100 * ideal:.2f}%: the share of lesion-free test images)" if ideal is not None else ""
    lines += [
        f"Dice all: mean Dice over all test images, a lesion-free image scoring 1 if predicted empty, else 0 (the "
        f'report\'s `dice_all`, his "Dice with OoD data"), in points; predicted empty: % of all test images '
        f"predicted without any lesion{ideal_text}.",
        "",
    ]
    ensemble_records = [r for r in records if r["kind"] == "ensemble"]
    if ensemble_records:
        folds = sorted({tuple(s.get("folds", ())) for r in ensemble_records for s in r["summaries"]})
        fold_text = ", ".join(str(list(f)) for f in folds if f) or "not recorded"
        loaded = sorted({s.get("evaluation_model", "best") for r in ensemble_records for s in r["summaries"]})
        checkpoints = " or ".join(
            f"`models/fold<k>/{EVALUATED_MODEL_FILES.get(m, m)}` ({ENSEMBLE_MEMBER.get(m, m)})" for m in loaded
        )
        his_too = ", as his" if loaded == ["final"] else "; his: the last epoch"
        lines += [
            "#### Test set, fold ensemble: the rows to set beside his test table",
            "",
            f"Mean probability of the fold models, thresholded at 0.5 (the study's `--ensemble=True` evaluation, "
            f"`eval/ensemble/`); folds {fold_text}"
            + ("" if folds == [(1, 2, 3, 4, 5)] else " (his: all five)")
            + f". Each fold model is the one the ensemble loads, {checkpoints}{his_too}. One ensemble per seed; "
            "± is the sample std over seeds.",
            "",
            "| loss | seeds | Dice all | Galdran | predicted empty (%) | Galdran | Dice lesion | lesion-free images "
            "with a false lesion, per seed |",
            "|---|---|---|---|---|---|---|---|",
            *_test_rows(records, "ensemble", paper, per_run=False),
            "",
            'Every other test figure of the ensembles: the table "Fold ensemble (mean probability)" above.',
            "",
        ]
        if reference in ensembles_by_loss and len(ensembles_by_loss) > 1:
            lines += [f"Fold ensembles against {reference}, image by image:", ""]
            lines += _paired_table(compare(ensembles_by_loss, reference, GALDRAN_PAIRED), reference)
        sentence = _claim_b_sentence(records, "ensemble", "fold ensembles")
        lines += [sentence, ""] if sentence else []
    lines += ["#### Test set, single models (one per run)", ""]
    if not ensemble_records:
        lines += [
            "**His test figures are of the five-fold ensemble; these rows are single models** (one model per run, "
            "not an ensemble), so they are not the same measurement as his test table: with all five folds, "
            "`--ensemble=True` adds the ensemble rows to set beside it.",
            "",
        ]
    lines += [
        "| loss | runs | Dice all | Galdran (ensemble) | predicted empty (%) | Galdran (ensemble) | lesion-free "
        "images with a false lesion, per run |",
        "|---|---|---|---|---|---|---|",
        *_test_rows(records, "runs", paper, per_run=True),
        "",
        "Means over the runs (folds x seeds), ± their sample std.",
        "",
    ]
    if reference in runs_by_loss and len(runs_by_loss) > 1:
        lines += [f"Single models against {reference}, image by image:", ""]
        lines += _paired_table(compare(runs_by_loss, reference, GALDRAN_PAIRED), reference)
    sentence = _claim_b_sentence(records, "runs", "single models")
    lines += [sentence, ""] if sentence else []
    if validation:
        lines += [
            "#### In distribution: validation Dice at the last epoch, beside his cross-validation Dice",
            "",
            "Each run's validation Dice (`val_mean_dice`: per-image Dice at threshold 0.5, mean over its validation "
            "fold) at its last validated epoch, as his `val_metrics.txt`; mean ± std over folds (numpy's std, "
            "ddof 0, as his `print_cv_results`), each fold first averaged over its seeds. With one fold the spread "
            "is over its seeds, and the table says so. Best epoch: the curve's highest value (the bundles keep "
            "the best validation epoch as `model.pt`, CE then Dice the best of its Dice epochs).",
            "",
            "| loss | runs | last epoch | validation Dice, last epoch | spread over | Galdran, 5-fold CV | "
            "validation Dice, best epoch |",
            "|---|---|---|---|---|---|---|",
        ]
        for loss, entries in validation.items():
            mean, std, over = fold_spread(entries)
            best, best_std, _ = fold_spread(entries, "best")
            epochs = sorted({e["epoch"] for e in entries})
            theirs = paper.get(loss)
            cv = f"{theirs['cv_dice']:.2f} ± {theirs['cv_std']:.2f}" if theirs else ""
            lines.append(
                f"| {loss} | {len(entries)} | {', '.join(map(str, epochs))} | {_points(mean, std)} | {over} | "
                f"{cv} | {_points(best, best_std)} |"
            )
        lines.append("")
        if reference in validation:
            ours = fold_spread(validation[reference])[0]
            mixes = [m for m in ("ce_dice", "ce_linear_dice", "ce_finetune_dice") if m in validation]
            if mixes:
                parts = []
                for mix in mixes:
                    text = f"{mix} {100 * (fold_spread(validation[mix])[0] - ours):+.2f}"
                    if reference in paper and mix in paper:
                        text += f" (his {paper[mix]['cv_dice'] - paper[reference]['cv_dice']:+.2f})"
                    parts.append(text)
                lines += [
                    f"Mixes minus {reference}, validation Dice at the last epoch (points): {', '.join(parts)}. "
                    "Galdran's claim in distribution: the mixes are level with or above CE.",
                    "",
                ]
    return lines if paper else _drop_columns(lines, "Galdran")


def _drop_columns(lines: list[str], prefix: str) -> list[str]:
    """The markdown lines with every table column whose header starts with ``prefix`` left out."""
    kept, drop = [], set()
    for index, line in enumerate(lines):
        if not line.startswith("|"):
            drop = set()
            kept.append(line)
            continue
        cells = line.strip("|").split("|")
        if index == 0 or not lines[index - 1].startswith("|"):  # a table's header
            drop = {i for i, cell in enumerate(cells) if cell.strip().startswith(prefix)}
        kept.append("|" + "|".join(c for i, c in enumerate(cells) if i not in drop) + "|")
    return kept


def _listed(settings: dict) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in sorted(settings.items()))


def settings_lines(out: Path, names: list[str], folds: list[int], seeds: list[int], command: dict) -> list[str]:
    """The settings each evaluated run recorded when its training started (seed aside: the runs' labels
    give it); where runs differ, which run had which value. Runs that recorded none (trained by an earlier
    version) are taken to have had ``command``'s, the settings of the last study command, and the page
    says so."""
    recorded, unrecorded = {}, []
    for name in names:
        for seed in seeds:
            for fold in folds:
                run_dir = run_path(out, name, seed)
                summary = _read_json(run_dir / "eval" / f"fold{fold}" / "summary.json")
                if summary is None:
                    continue
                settings = read_settings(run_dir, fold)
                label = f"{loss_of(name)} seed {seed} fold {fold}"
                if settings is None:
                    unrecorded.append(label)
                recorded[label] = {k: v for k, v in (command if settings is None else settings).items() if k != "seed"}
                if "precision" in summary:  # what the run's precision (auto) meant on the machine that evaluated it
                    recorded[label]["computed_in"] = summary["precision"]
    if not recorded:
        return ["Settings: " + _listed(command), ""] if command else []
    keys = sorted({k for s in recorded.values() for k in s})
    missing = "(bundle default)"
    values = {k: {label: s.get(k, missing) for label, s in recorded.items()} for k in keys}
    common = {k: next(iter(v.values())) for k, v in values.items() if len({json.dumps(x) for x in v.values()}) == 1}
    lines = []
    if unrecorded:
        lines.append(f"Runs trained before settings were recorded ({', '.join(unrecorded)}): the study command's.")
    if len(common) == len(keys):
        return lines + [f"Settings{' (each run its own)' if not unrecorded else ''}: " + _listed(common), ""]
    lines += ["**The runs differ in their settings** (each run its own):", ""]
    lines += ["| setting | value | runs |", "|---|---|---|"]
    for key in (k for k in keys if k not in common):
        by_value: dict[str, list[str]] = {}
        for label, value in values[key].items():
            by_value.setdefault(json.dumps(value) if value != missing else missing, []).append(label)
        lines += [f"| {key} | {value} | {', '.join(labels)} |" for value, labels in by_value.items()]
    lines += ["", "Same in every run: " + (_listed(common) or "nothing else"), ""]
    return lines


LAW_THEORY_FILE = "label_law_theory.json"  # scripts/volume_bias_study.py label_law, written by run_study.py


def law_lines(out: Path, runs_by_loss: dict[str, dict[str, list[dict]]], reference: str, settings: dict) -> list[str]:
    """The volume errors against the label law's expected volume, with the calculation's prediction when
    ``OUT/label_law_theory.json`` is of the study's width (``label_uncertainty_width``, default 0)."""
    width = settings.get("label_uncertainty_width", 0)
    theory = _read_json(out / LAW_THEORY_FILE)
    note = []
    if theory is not None and not math.isclose(float(theory.get("width", math.nan)), float(width)):
        note = [f"({LAW_THEORY_FILE} is of width {theory.get('width')}, not the study's {width}: left out.)", ""]
        theory = None
    if theory is not None and settings.get("label_uncertainty_targets") == "expected":
        note = [
            f"({LAW_THEORY_FILE} is of training on drawn annotations; these runs trained on the law's expected "
            "labels (`label_uncertainty_targets` expected): left out.)",
            "",
        ]
        theory = None
    return expected_volume_lines(runs_by_loss, reference, float(width), theory) + note


def write_report(
    out: Path,
    names: list[str],
    folds: list[int],
    status: dict,
    settings: dict,
    dataset: str,
    seeds: list[int] = (0,),
    reference: str = "ce",
) -> list[dict]:
    """Write results.csv, results.md and the plots; returns the aggregated records.

    ``reference`` is the loss every other loss is compared with, image by image; without it among the
    evaluated losses, the paired sections are left out and the report says so.
    """
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds)
    records = collect(out, names, folds, seeds)
    volumes = any("whole_dice" in s for r in records for s in r["summaries"])
    metrics, paired = (VOLUME_METRICS, VOLUME_PAIRED) if volumes else (LESION_METRICS, LESION_PAIRED)
    csvs_by_loss = {loss_of(n): per_image_csvs(out, n, folds, seeds) for n in names}
    runs_by_loss = {loss: read_runs(csvs) for loss, csvs in csvs_by_loss.items() if csvs}
    num_runs = {loss: len(csvs) for loss, csvs in csvs_by_loss.items()}

    lines = [f"## Study `{dataset}`: {len(names)} loss bundle(s), folds {folds}, seeds {seeds}", ""]
    lines += opening_sentences(records, volumes)
    lines += settings_lines(out, names, folds, seeds, settings)
    if status:
        lines += ["| run | status | seconds |", "|---|---|---|"]
        lines += [f"| {k} | {v['status']} | {v.get('seconds', '')} |" for k, v in status.items()]
        lines.append("")
    rows, table_lines = run_tables(records, metrics)
    lines += table_lines
    by_run = run_curves(out, names, folds, seeds)
    curves = labelled_curves(by_run)
    lines += convergence_lines(curves, settings.get("evaluation_model", "best"))

    comparison: list[dict] = []
    if reference in runs_by_loss and len(runs_by_loss) > 1:
        comparison = compare(runs_by_loss, reference, paired)
        lines += markdown(comparison, reference, num_runs)
        lines += ["### Reading", ""]
        lines += sentences(comparison, reference, HEADLINE_VOLUME if volumes else HEADLINE)
        lines.append("")
    elif runs_by_loss and reference not in runs_by_loss:
        lines += [f"No paired comparison: the reference loss {reference!r} has no evaluated run here.", ""]
    lines += claim_lines(runs_by_loss, paired, HEADLINE_VOLUME if volumes else HEADLINE)
    if not volumes:
        ensembles_by_loss = {loss_of(n): read_runs(p) for n in names if (p := ensemble_csvs(out, n, seeds))}
        lines += galdran_lines(dataset, records, runs_by_loss, ensembles_by_loss, last_validation(by_run), reference)
    if volumes:
        lines += law_lines(out, runs_by_loss, reference, settings)

    paired_by_loss, paired_fields = csv_columns(comparison)
    for row in rows:
        if row["kind"] == "runs":
            row["reference"] = reference if comparison else ""
            row.update(paired_by_loss.get(row["loss"], {}))
    fields = ["loss", "bundle", "kind", "n"] + [f"{k}_{s}" for k, _, _ in metrics for s in ("mean", "std")]
    write_csv_atomic(out / "results.csv", rows, fields + (["reference"] + paired_fields if comparison else []))
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")

    if records:
        if not volumes:
            plot_dice_vs_fp(out, runs_by_loss)
            plot_examples(out, names, folds[0], seeds[0])
        plot_area_errors(out, runs_by_loss, volumes)
        if volumes:
            plot_bland_altman_expected(out, runs_by_loss)
        plot_reliability(out, records)
    if curves:
        plot_validation_curves(out, curves)
    return records
