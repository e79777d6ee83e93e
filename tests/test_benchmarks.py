"""The benchmarks run end to end on a tiny CPU setting (their figures are not checked: speed is not tested)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
        precisions=("fp32", "bf16"),
    )
    report = json.loads(output.read_text())
    for name in ("polyp_ce", "polyp_dbce"):
        result = report["bundles"][name]
        assert result["data_pipeline"]["train_items"] > 0 and result["data_pipeline"]["images_per_s"] > 0
        assert result["ceiling"]["images_per_s"] > 0 and result["bundle"]["images_per_s"] > 0
        assert result["bundle"]["eval_images_per_s"] > 0 and len(result["bundle"]["epoch_seconds"]) == 2
        assert result["bundle_over_ceiling"] > 0
        assert {c["precision"] for c in result["ceilings"].values()} == {"fp32", "bf16"}
        assert result["ceiling_bf16_over_fp32"] > 0 and result["bundle_bf16_over_fp32"] > 0
        assert result["bundle_by_precision"]["bf16"]["over_fp32_ceiling"] > 0
        assert result["real_ceiling"]["precision"] in ("fp32", "bf16")
    assert report["polyp_dbce_over_ce_images_per_s"] > 0
    assert set(report["augmentation_ms_per_image_one_cpu_core"]) == {"352"}  # the bundles' own size
    assert report["postprocessing_host_ms_per_batch"]["decollated_ms"] > 0


@pytest.mark.slow
def test_throughput_of_a_3d_bundle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "throughput.json"
    load("throughput").main(
        device="cpu",
        bundles=("hippocampus_ce",),
        batch_size=2,
        epochs=2,
        num_workers=0,
        ceiling_steps=1,
        synthetic_images=8,
        output=str(output),
        precisions=("fp32",),
        ceiling_precisions=("fp32",),
    )
    result = json.loads(output.read_text())["bundles"]["hippocampus_ce"]
    assert result["image_size"] is None and "data_pipeline" not in result  # volumes: per-item transforms
    assert result["ceiling"]["precision"] == "fp32" and result["bundle"]["images_per_s"] > 0
    assert result["bundle"]["eval_images_per_s"] > 0 and result["resume_checkpoint"]["mib"] > 0


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


def test_mask_resize_loss_counts_vanishing_lesions(tmp_path, capsys):
    module = load("mask_resize_loss")
    disk = np.zeros((128, 128), dtype=bool)
    yy, xx = np.mgrid[:128, :128]
    disk[(yy - 60) ** 2 + (xx - 60) ** 2 <= 30**2] = True
    speck = np.zeros((128, 128), dtype=bool)
    speck[5, 5] = True  # one pixel: gone at a quarter of the size unless the grid hits it
    speck[101, 101] = True  # torch nearest samples rows and columns 0, 4, 8, ...: both are off the grid
    result = module.resize_loss([disk, speck, np.zeros((128, 128), dtype=bool)], 32)
    assert result["images_with_lesion"] == 2 and result["lesions"] == 3
    assert result["lesions_lost"] == 2 and result["images_lost"] == 1
    assert result["area_kept"] == pytest.approx((disk.sum() + 0) / (disk.sum() + 2), rel=0.05)
    same = module.resize_loss([disk, speck], 128)
    assert same["area_kept"] == pytest.approx(1.0) and same["lesions_lost"] == 0

    for index, mask in enumerate([disk, speck]):
        Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / f"m{index}.png")
    module.main(str(tmp_path), sizes=[32])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["masks"] == 2 and lines[1]["lesions_lost"] == 2
