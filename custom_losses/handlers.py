"""Ignite handlers the bundles attach to MONAI engines."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from custom_losses.atomic import write_csv_atomic, write_json_atomic
from custom_losses.metrics import ReliabilityHistogram, image_metrics, summarize

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


class LesionMetricsWriter:
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

    def reset(self, engine: Engine | None = None) -> None:
        self.rows: list[dict] = []
        self.reliability = ReliabilityHistogram(self.num_bins)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

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


def load_network_weights(network: torch.nn.Module, path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a checkpoint written by MONAI's ``CheckpointSaver`` (plain or ``{"model": ...}``) into ``network``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (train this fold first)")
    state = torch.load(path, map_location=device, weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    network.load_state_dict(state)
    return network.to(device)
