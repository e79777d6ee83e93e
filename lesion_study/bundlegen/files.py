"""Every generated file of a bundle, as text."""

from __future__ import annotations

import json
from pathlib import Path

from lesion_study.paths import REPO

from .configs import (
    LOGGING_CONF,
    evaluate_config,
    evaluate_ensemble_config,
    finetune_config,
    inference_config,
    multi_gpu_config,
    train_config,
)
from .docs import docs_readme, results_table
from .metadata import metadata
from .specs import DATASETS, RESULTS_DIR, DatasetSpec, measured_results


def dump_json(data: dict) -> str:
    return json.dumps(data, indent=4, ensure_ascii=False) + "\n"


def bundle_files(spec: DatasetSpec, loss_name: str, results_dir: Path = RESULTS_DIR) -> dict[str, str]:
    """Every generated file of one bundle, relative path -> text."""
    results = measured_results(spec, results_dir).get(loss_name)
    return {
        "configs/metadata.json": dump_json(metadata(spec, loss_name, results)),
        "configs/train.json": dump_json(train_config(spec, loss_name)),
        "configs/evaluate.json": dump_json(evaluate_config(spec)),
        **(
            {}
            if spec.kind == "mri3d"
            else {"configs/evaluate_ensemble.json": dump_json(evaluate_ensemble_config(spec))}
        ),
        "configs/inference.json": dump_json(inference_config(spec)),
        "configs/multi_gpu_train.json": dump_json(multi_gpu_config(spec)),
        "configs/finetune.json": dump_json(finetune_config(spec)),
        "configs/logging.conf": LOGGING_CONF,
        "docs/README.md": docs_readme(spec, loss_name, results_table(spec, loss_name, results)),
        "docs/data_license.txt": spec.data_license + "\n",
        "LICENSE": (REPO / "LICENSE").read_text(),
    }


def all_bundles(specs: list[DatasetSpec] | None = None, results_dir: Path = RESULTS_DIR) -> dict[str, dict[str, str]]:
    """``<dataset>_<loss>`` -> its files, for the given dataset specs (default: the built-in ones)."""
    return {
        f"{spec.name}_{loss_name}": bundle_files(spec, loss_name, results_dir)
        for spec in (DATASETS.values() if specs is None else specs)
        for loss_name in spec.losses
    }
