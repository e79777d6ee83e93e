"""The benchmarks run end to end on a tiny CPU setting (their figures are not checked: speed is not tested)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_throughput_writes_every_figure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "throughput.json"
    load("throughput").main(
        device="cpu",
        bundles=("polyp_ce", "polyp_dbce"),
        image_size=32,
        batch_size=4,
        epochs=2,
        num_workers=0,
        ceiling_steps=2,
        synthetic_images=16,
        output=str(output),
    )
    report = json.loads(output.read_text())
    for name in ("polyp_ce", "polyp_dbce"):
        result = report["bundles"][name]
        assert result["data_pipeline"]["train_items"] > 0 and result["data_pipeline"]["images_per_s"] > 0
        assert result["ceiling"]["images_per_s"] > 0 and result["bundle"]["images_per_s"] > 0
        assert result["bundle"]["eval_images_per_s"] > 0 and len(result["bundle"]["epoch_seconds"]) == 2
        assert result["bundle_over_ceiling"] > 0
    assert report["polyp_dbce_over_ce_images_per_s"] > 0
    assert set(report["augmentation_ms_per_image_one_cpu_core"]) == {"352"}  # the bundles' own size
    assert report["postprocessing_host_ms_per_batch"]["decollated_ms"] > 0


def test_throughput_names_a_missing_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="no prepared dataset for polyp_ce"):
        load("throughput").main(device="cpu", data_dir=str(tmp_path), bundles=("polyp_ce",), data_only=True)


def test_loss_benchmark_writes_every_loss(tmp_path):
    output = tmp_path / "losses.json"
    load("bench_losses").main(device="cpu", batch=2, size=32, repeats=2, output=str(output))
    report = json.loads(output.read_text())
    losses = {"bce", "soft_dice", "batch_dice", "ce_dice", "balanced_ce", "dbce_r5"}
    assert losses <= set(report["loss_ms"]) and all(report["loss_ms"][name] > 0 for name in losses)
    assert report["ratio_to_bce"]["bce"] == 1.0
