"""Evaluation writers: per-image (2D) and per-volume (3D) metrics into a CSV and ``summary.json``."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from ..atomic import write_csv_atomic, write_json_atomic
from ..label_uncertainty import completed_probabilities
from ..metrics import ReliabilityHistogram, image_metrics, summarize, summarize_volumes, test_metrics, volume_metrics

CSV_FIELDS = [
    "image",
    "lesion_free",
    "has_lesion",
    "dice",
    "iou",
    "true_area",
    "pred_area",
    "soft_area",
    "pred_empty",
    "fp_area_fraction",
    "area_error_hard",
    "area_error_soft",
]


def _image_name(item: dict, index: int) -> str:
    for key in ("image", "label"):
        meta = getattr(item.get(key), "meta", None)
        if meta and "filename_or_obj" in meta:
            return os.path.basename(str(meta["filename_or_obj"]))
    return f"image_{index:05d}"


class _EvaluationWriter:
    """Collects one row per evaluated item and writes the files at the end of the evaluator's (single) epoch.

    The summary's numbers also go into ``engine.state.metrics`` as ``test_<name>``, where handlers attached
    after this one read them: ``StatsHandler`` prints them, ``--tracking mlflow`` logs them.
    """

    num_bins: int
    extra: dict

    def reset(self, engine: Engine | None = None) -> None:
        self.rows: list[dict] = []
        self.reliability = ReliabilityHistogram(self.num_bins)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write_and_publish)

    def write_and_publish(self, engine: Engine) -> None:
        for key, value in test_metrics(self.write(engine), exclude=(*self.extra, "threshold")).items():
            engine.state.metrics.setdefault(key, value)

    def collect(self, engine: Engine) -> None:
        raise NotImplementedError

    def write(self, engine: Engine | None = None) -> dict:
        raise NotImplementedError


class LesionMetricsWriter(_EvaluationWriter):
    """Per-image lesion metrics and their summary, written as ``per_image.csv`` and ``summary.json``.

    Attach to an evaluator whose post-processing keeps the foreground probability under ``prob_key``
    (``(1, *spatial)``) next to the binary ``label``. Each item's ``lesion_free`` flag comes from the
    datalist. Both files are written atomically when the run completes, the CSV first, so a
    ``summary.json`` exists only for a finished evaluation.

    Args:
        output_dir: folder for the two files.
        threshold: probability threshold of the hard prediction.
        num_bins: bins of the reliability histogram (ECE).
        extra: fields copied into the summary (bundle name, fold, checkpoint, ...).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        prob_key: str = "prob",
        label_key: str = "label",
        lesion_free_key: str = "lesion_free",
        threshold: float = 0.5,
        num_bins: int = 20,
        extra: dict | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.prob_key, self.label_key, self.lesion_free_key = prob_key, label_key, lesion_free_key
        self.threshold = threshold
        self.num_bins = num_bins
        self.extra = dict(extra or {})
        self.logger = logging.getLogger(__name__)
        self.reset()

    def collect(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            if self.prob_key not in item:
                raise KeyError(f"LesionMetricsWriter: no {self.prob_key!r} in the engine output (keys: {sorted(item)})")
            prob, label = item[self.prob_key], item[self.label_key]
            if prob.shape[0] != 1:
                raise ValueError(f"LesionMetricsWriter expects a 1-channel probability, got shape {tuple(prob.shape)}")
            label = label[:1] if label.shape[0] > 1 else label
            row = image_metrics(prob, label, self.threshold)
            lesion_free = item.get(self.lesion_free_key)
            row["lesion_free"] = bool(lesion_free) if lesion_free is not None else not row["has_lesion"]
            row["image"] = _image_name(item, len(self.rows))
            self.rows.append(row)
            self.reliability.update(prob, label)

    def write(self, engine: Engine | None = None) -> dict:
        summary = summarize(self.rows, self.reliability)
        summary.update(threshold=self.threshold, **self.extra)
        csv_rows = [{k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in self.rows]
        write_csv_atomic(self.output_dir / "per_image.csv", csv_rows, CSV_FIELDS)
        write_json_atomic(self.output_dir / "summary.json", summary)
        self.logger.info(
            "evaluation of %d images written to %s: dice_lesion=%.4f dice_all=%.4f lesion_free_fp_rate=%s",
            len(self.rows),
            self.output_dir,
            summary["dice_lesion"] or math.nan,
            summary["dice_all"],
            summary["lesion_free_fp_rate"],
        )
        return summary


def voxel_volume_ml(image: torch.Tensor) -> float:
    """Voxel volume in ml from a MetaTensor's affine (mm), 1 mm^3 = 0.001 ml."""
    affine = getattr(image, "affine", None)
    if affine is None:
        raise ValueError("volume metrics need a MetaTensor with an affine (the voxel spacing)")
    return float(abs(torch.linalg.det(torch.as_tensor(affine, dtype=torch.float64)[:3, :3]))) / 1000.0


class VolumeMetricsWriter(_EvaluationWriter):
    """Per-volume Dice and volumes (``per_volume.csv``) and their summary (``summary.json``) for 3D bundles.

    Attach to an evaluator whose post-processing keeps the softmax probabilities under ``prob_key``
    (``(C, *spatial)``, in the label's space) and the integer ``label``; voxel sizes come from the label's
    affine. With ``expected_key``, the item also holds the label law's class probabilities (``(C,
    *spatial)``, custom_losses.label_uncertainty.ExpectedLabeld, in the label's space; voxels where they are
    all zero, outside the grid they were computed in, count as the label's class), and each row gets the
    expected volumes and the errors against them; ``label_uncertainty_width`` goes into the summary.
    Files are written atomically when the run completes, the CSV first.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: dict,
        prob_key: str = "prob",
        label_key: str = "label",
        num_bins: int = 20,
        extra: dict | None = None,
        expected_key: str | None = None,
        label_uncertainty_width: float | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = {int(k): str(v) for k, v in class_names.items() if int(k) > 0}
        self.prob_key, self.label_key, self.expected_key = prob_key, label_key, expected_key
        self.num_bins = num_bins
        self.extra = dict(extra or {})
        if label_uncertainty_width is not None:
            self.extra["label_uncertainty_width"] = label_uncertainty_width
        self.reset()

    def collect(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            prob, label = item[self.prob_key], item[self.label_key]
            expected = None
            if self.expected_key is not None:
                if self.expected_key not in item:
                    raise KeyError(f"VolumeMetricsWriter: no {self.expected_key!r} in the evaluated item")
                expected = completed_probabilities(item[self.expected_key], label)
            row = volume_metrics(prob, label, voxel_volume_ml(label), self.class_names, expected)
            row["image"] = _image_name(item, len(self.rows))
            self.rows.append(row)
            foreground = prob[list(self.class_names)].sum(0)  # whole-structure probability
            self.reliability.update(foreground, label.reshape(foreground.shape) > 0)

    def write(self, engine: Engine | None = None) -> dict:
        summary = summarize_volumes(self.rows, self.class_names, self.reliability)
        summary.update(class_names=self.class_names, **self.extra)
        fields = ["image"] + [k for k in self.rows[0] if k != "image"]
        csv_rows = [{k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in self.rows]
        write_csv_atomic(self.output_dir / "per_volume.csv", csv_rows, fields)
        write_json_atomic(self.output_dir / "summary.json", summary)
        logging.getLogger(__name__).info(
            "evaluation of %d volumes written to %s: whole dice=%.4f, volume error hard=%.3f ml, soft=%.3f ml",
            summary["num_volumes"],
            self.output_dir,
            summary["whole_dice"],
            summary["whole_error_hard_ml"],
            summary["whole_error_soft_ml"],
        )
        return summary
