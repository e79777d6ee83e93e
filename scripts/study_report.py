"""The study report: every run's summary JSON -> results.csv, results.md and PNG plots."""

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
    ("ece", "ECE", "min"),
]


def loss_of(bundle: str) -> str:
    return bundle.split("_", 1)[1] if "_" in bundle else bundle


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(out: Path, names: list[str], folds: list[int]) -> list[dict]:
    """One record per bundle and kind (``folds``, ``ensemble``) with the summaries it aggregates."""
    records = []
    for name in names:
        run_dir = out / "runs" / name
        summaries = [s for f in folds if (s := _read_json(run_dir / "eval" / f"fold{f}" / "summary.json"))]
        if summaries:
            records.append({"bundle": name, "loss": loss_of(name), "kind": "folds", "summaries": summaries})
        ensemble = _read_json(run_dir / "eval" / "ensemble" / "summary.json")
        if ensemble:
            records.append({"bundle": name, "loss": loss_of(name), "kind": "ensemble", "summaries": [ensemble]})
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
    for kind in ("folds", "ensemble"):
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


def write_tables(out: Path, records: list[dict], metrics: list[tuple[str, str, str]], header: str) -> None:
    rows = []
    for record in records:
        row = {"loss": record["loss"], "bundle": record["bundle"], "kind": record["kind"]}
        row["n"] = len(record["summaries"])
        for key, _, _ in metrics:
            mean, std = mean_std(_values(record, key))
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
        rows.append(row)
    fields = ["loss", "bundle", "kind", "n"] + [f"{k}_{s}" for k, _, _ in metrics for s in ("mean", "std")]
    write_csv_atomic(out / "results.csv", rows, fields)

    best = best_per_column(records, metrics)
    lines = [header, ""]
    for kind, title in (("folds", "Mean ± std over folds"), ("ensemble", "Fold ensemble (mean probability)")):
        indices = [i for i, r in enumerate(records) if r["kind"] == kind]
        if not indices:
            continue
        lines += [f"### {title}", "", "| loss | n | " + " | ".join(t for _, t, _ in metrics) + " |"]
        lines.append("|---|---|" + "---|" * len(metrics))
        for i in indices:
            cells = []
            for key, _, _ in metrics:
                mean, std = mean_std(_values(records[i], key))
                text = "n/a" if mean is None else (f"{mean:.3f}" if kind == "ensemble" else f"{mean:.3f} ± {std:.3f}")
                cells.append(f"**{text}**" if i in best.get((kind, key), set()) else text)
            lines.append(f"| {records[i]['loss']} | {len(records[i]['summaries'])} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Best value per column in bold (pred. empty: closest to the share of lesion-free images; signed")
    lines.append("errors: closest to 0). Area errors are relative to the true area, on lesion images; volume errors")
    lines.append("are predicted minus true volume, hard = argmax mask, soft = sum of probabilities.")
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")


def plot_dice_vs_fp(out: Path, records: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for record in (r for r in records if r["kind"] == "folds"):
        x, x_err = mean_std(_values(record, "lesion_free_fp_rate"))
        y, y_err = mean_std(_values(record, "dice_lesion"))
        if x is None or y is None:
            continue
        ax.errorbar(x, y, xerr=x_err, yerr=y_err, fmt="o", capsize=3, label=record["loss"])
        ax.annotate(record["loss"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("lesion-free images with a false lesion (share)")
    ax.set_ylabel("Dice on lesion images")
    ax.set_title("In distribution vs lesion-free false positives")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "dice_vs_lesion_free_fp.png", dpi=120)
    plt.close(fig)


def _per_image_rows(out: Path, bundle: str, folds: list[int]) -> list[dict]:
    rows = []
    for fold in folds:
        path = out / "runs" / bundle / "eval" / f"fold{fold}" / "per_image.csv"
        if not path.is_file():
            path = path.with_name("per_volume.csv")
        if path.is_file():
            with open(path) as handle:
                rows += list(csv.DictReader(handle))
    return rows


def plot_area_errors(out: Path, names: list[str], folds: list[int], volumes: bool = False) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    keys = ("whole_rel_error_hard", "whole_rel_error_soft") if volumes else ("area_error_hard", "area_error_soft")
    for ax, key, title in zip(axes, keys, ("thresholded mask", "sum of probabilities"), strict=True):
        data, labels = [], []
        for name in names:
            values = [float(r[key]) for r in _per_image_rows(out, name, folds) if r.get(key) not in (None, "")]
            if values:
                data.append(values)
                labels.append(loss_of(name))
        if data:
            ax.boxplot(data, showfliers=False)
            ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_title(f"relative {'volume' if volumes else 'area'} error, {title}")
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("(predicted - true) / true area")
    fig.tight_layout()
    fig.savefig(out / "area_errors.png", dpi=120)
    plt.close(fig)


def plot_reliability(out: Path, records: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="calibrated")
    for record in (r for r in records if r["kind"] == "folds"):
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


def plot_examples(out: Path, names: list[str], fold: int) -> None:
    """Rows: losses; columns: example test images with the prediction in red (lesion-free ones last)."""
    images = sorted((out / "example_images").glob("*")) if (out / "example_images").is_dir() else []
    rows = [n for n in names if (out / "runs" / n / "examples" / f"fold{fold}").is_dir()]
    if not images or not rows:
        return
    fig, axes = plt.subplots(len(rows), len(images), figsize=(1.6 * len(images), 1.6 * len(rows)), squeeze=False)
    for r, name in enumerate(rows):
        for c, image_path in enumerate(images):
            ax = axes[r][c]
            rgb = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32) / 255
            prediction = out / "runs" / name / "examples" / f"fold{fold}" / f"{image_path.stem}_seg.png"
            if prediction.is_file():
                mask = np.asarray(Image.open(prediction).convert("L")) > 127
                rgb[mask] = 0.5 * rgb[mask] + 0.5 * np.array([1.0, 0.0, 0.0])
            ax.imshow(rgb)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("lesion-free" if image_path.name.startswith("free_") else "lesion", fontsize=8)
            if c == 0:
                ax.set_ylabel(loss_of(name), fontsize=8)
    fig.suptitle(f"Predictions (red), fold {fold}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "examples.png", dpi=110)
    plt.close(fig)


def write_report(
    out: Path, names: list[str], folds: list[int], status: dict, settings: dict, dataset: str
) -> list[dict]:
    """Write results.csv, results.md and the plots; returns the aggregated records."""
    out.mkdir(parents=True, exist_ok=True)
    records = collect(out, names, folds)
    header = [f"## Study `{dataset}`: {len(names)} loss bundle(s), folds {folds}", ""]
    if settings:
        header.append("Settings: " + ", ".join(f"`{k}={v}`" for k, v in sorted(settings.items())))
        header.append("")
    if status:
        header += ["| run | status | seconds |", "|---|---|---|"]
        header += [f"| {k} | {v['status']} | {v.get('seconds', '')} |" for k, v in status.items()]
        header.append("")
    volumes = any("whole_dice" in s for r in records for s in r["summaries"])
    write_tables(out, records, VOLUME_METRICS if volumes else LESION_METRICS, "\n".join(header))
    if records:
        if not volumes:
            plot_dice_vs_fp(out, records)
            plot_examples(out, names, folds[0])
        plot_area_errors(out, names, folds, volumes)
        plot_reliability(out, records)
    return records
