"""Bad input as a user meets it: `python -m monai.bundle run` from the bundle folder and the study runner.

Each case checks the last non-empty line of the output (the one-line reason), the exit status and what
was written (nothing, or only complete predictions plus the manifest).
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image

from custom_losses.errors import find_input_error, report_lines
from custom_losses.inference import output_name
from scripts.make_bundles import BUNDLES_DIR
from scripts.synthetic import write_prepared_polyp

REPO = Path(__file__).resolve().parents[1]


def bundle_run(bundle: Path, config: str, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *overrides]
    return subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=timeout)


def last_line(result: subprocess.CompletedProcess) -> str:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()][-1]


def untrained_checkpoint(bundle: Path, config: str = "inference.json") -> None:
    """models/fold1/model.pt with freshly initialised weights: enough to run inference."""
    workflow = ConfigWorkflow(config_file=str(bundle / "configs" / config), workflow_type="infer")
    network = workflow.parser.get_parsed_content("network_def")
    (bundle / "models" / "fold1").mkdir(parents=True)
    torch.save(network.state_dict(), bundle / "models" / "fold1" / "model.pt")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_prepared_polyp(tmp_path_factory.mktemp("errors"), n_train=10, n_lesion=2, n_lesion_free=1)


def test_report_finds_the_input_error_in_monai_s_wrapping():
    from custom_losses.data import DataError

    try:
        try:
            raise DataError("image /data/x.png is unreadable or corrupt: image file is truncated")
        except DataError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression: $custom_losses.data.fold_split(...)") from inner
    except RuntimeError as outer:
        assert isinstance(find_input_error(outer), DataError)
        lines = report_lines(outer, Path("/out/logs/error_traceback.txt"))
    assert lines[-1] == "error: image /data/x.png is unreadable or corrupt: image file is truncated"
    assert "/out/logs/error_traceback.txt" in lines[0]
    assert find_input_error(RuntimeError("not an input error")) is None


@pytest.mark.slow
def test_training_on_a_missing_or_corrupt_dataset_ends_with_one_line(prepared, tmp_path):
    bundle = Path(shutil.copytree(BUNDLES_DIR / "polyp_ce", tmp_path / "bundle"))
    common = ["--epochs", "1", "--device", "cpu", "--num_workers", "0", "--image_size", "32"]
    missing = bundle_run(bundle, "configs/train.json", "--dataset_dir", str(tmp_path / "nowhere"), *common)
    assert missing.returncode == 1
    assert last_line(missing) == f"error: dataset_dir {tmp_path / 'nowhere'} does not exist (prepare it with " + (
        "scripts/prepare_data.py)"
    )
    assert "Traceback" not in missing.stderr  # kept in the file instead
    kept = (bundle / "logs" / "error_traceback.txt").read_text()
    assert kept.startswith(last_line(missing)) and "Failed to evaluate" in kept

    data = Path(shutil.copytree(prepared, tmp_path / "data"))
    victim = sorted((data / "train" / "images").glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    corrupt = bundle_run(bundle, "configs/train.json", "--dataset_dir", str(data), "--fold", "2", *common)
    assert corrupt.returncode == 1
    assert last_line(corrupt).startswith(f"error: image {victim} is unreadable or corrupt")
    assert not (bundle / "models" / "fold2" / "model_final.pt").exists()

    evaluate = bundle_run(
        bundle, "['configs/train.json','configs/evaluate.json']", "--dataset_dir", str(prepared), *common
    )  # no trained checkpoint
    assert evaluate.returncode == 1
    assert last_line(evaluate).startswith("error: checkpoint ") and "does not exist" in last_line(evaluate)


@pytest.mark.slow
def test_inference_skips_bad_files_with_a_manifest_or_stops_when_strict(prepared, tmp_path):
    bundle = Path(shutil.copytree(BUNDLES_DIR / "polyp_ce", tmp_path / "bundle"))
    untrained_checkpoint(bundle)
    inputs = tmp_path / "frames"
    inputs.mkdir()
    for name in ("a.png", "b.jpg"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(inputs / name)
    (inputs / "notes.png").write_text("not an image")
    (inputs / "readme.txt").write_text("frames of patient 3")
    (inputs / "Thumbs.db").write_bytes(b"\x00\x01")
    (inputs / ".hidden.png").write_text("editor backup")
    common = ["--input_dir", str(inputs), "--device", "cpu", "--image_size", "32"]

    strict = bundle_run(bundle, "configs/inference.json", *common, "--strict", "True")
    assert strict.returncode == 1
    assert last_line(strict).startswith(f"error: input {inputs / 'notes.png'} is unreadable")
    assert not (bundle / "predictions").exists()  # checked before anything was written

    lenient = bundle_run(bundle, "configs/inference.json", *common)
    assert lenient.returncode == 0, (lenient.stdout + lenient.stderr)[-3000:]
    output = lenient.stdout + lenient.stderr
    assert f"skipped {inputs / 'notes.png'}: " in output
    assert "2 of 3 image file(s)" in output and "1 skipped as unreadable" in output and "2 other file(s)" in output
    predictions = bundle / "predictions"
    assert sorted(p.name for p in predictions.iterdir()) == ["a_seg.png", "b_seg.png", "manifest.csv"]
    with open(predictions / "manifest.csv", newline="") as handle:
        rows = {Path(r["input"]).name: r for r in csv.DictReader(handle)}
    assert sorted(rows) == ["a.png", "b.jpg", "notes.png"]
    assert rows["a.png"]["status"] == "ok" and rows["a.png"]["output"] == str(predictions / "a_seg.png")
    assert rows["notes.png"]["status"] == "skipped" and rows["notes.png"]["reason"]
    assert np.asarray(Image.open(predictions / "a_seg.png")).shape == (40, 48)


@pytest.mark.slow
def test_3d_inference_refuses_4d_volumes_and_broken_orientation(tmp_path):
    bundle = Path(shutil.copytree(BUNDLES_DIR / "hippocampus_ce", tmp_path / "bundle"))
    untrained_checkpoint(bundle)
    inputs = tmp_path / "volumes"
    inputs.mkdir()
    volume = np.random.default_rng(1).normal(size=(12, 16, 12)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), inputs / "good.nii.gz")
    nibabel.save(nibabel.Nifti1Image(np.stack([volume] * 3, -1), np.eye(4)), inputs / "series.nii.gz")
    flat = np.eye(4)
    flat[2, 2] = 0.0  # a zero axis: no orientation (written raw: nibabel refuses to build such an image)
    broken = nibabel.Nifti1Image(volume, None)
    broken.header.set_sform(flat, code=1)
    broken.header.set_qform(None, code=0)
    nibabel.save(broken, inputs / "flat.nii.gz")
    (inputs / "not_a_volume.nii").write_text("plain text")
    common = ["--input_dir", str(inputs), "--device", "cpu", "--spatial_size", "[16, 16, 16]"]

    result = bundle_run(bundle, "configs/inference.json", *common)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    output = result.stdout + result.stderr
    assert "1 of 4 image file(s)" in output and "3 skipped as unreadable" in output
    assert "expected one 3D volume" in output and "not finite or not invertible" in output
    predictions = bundle / "predictions"
    assert sorted(p.name for p in predictions.iterdir()) == ["good_seg.nii.gz", "manifest.csv"]
    assert output_name(inputs / "good.nii.gz", "3d") == "good_seg.nii.gz"

    shutil.rmtree(predictions)
    strict = bundle_run(bundle, "configs/inference.json", *common, "--strict", "True")
    assert strict.returncode == 1 and last_line(strict).startswith("error: input ")
    assert not predictions.exists()


@pytest.mark.slow
def test_study_runner_ends_with_the_input_error(prepared, tmp_path):
    data = Path(shutil.copytree(prepared, tmp_path / "data"))
    victim = sorted((data / "train" / "images").glob("*.png"))[0]
    victim.write_bytes(b"")
    command = [sys.executable, str(REPO / "scripts" / "run_study.py"), "polyp", f"--data_dir={data}"]
    command += [f"--output_dir={tmp_path / 'study'}", "--bundles=[ce]", "--epochs=1", "--device=cpu"]
    command += ["--num_workers=0", "--image_size=32", "--examples=False"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert last_line(result).startswith(f"error: image {victim} is unreadable or corrupt")
    assert "failed (exit 1): error: image" in result.stdout


@pytest.mark.slow
def test_torchrun_two_processes_end_with_the_input_error_and_do_not_hang(prepared, tmp_path):
    bundle = Path(shutil.copytree(BUNDLES_DIR / "polyp_ce", tmp_path / "bundle"))
    data = Path(shutil.copytree(prepared, tmp_path / "data"))
    victim = sorted((data / "train" / "images").glob("*.png"))[-1]
    victim.write_bytes(victim.read_bytes()[:100])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    command += ["--config_file", "['configs/train.json','configs/multi_gpu_train.json']", "--dataset_dir", str(data)]
    command += ["--epochs", "1", "--device", "cpu", "--num_workers", "0", "--image_size", "32"]
    result = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    root_cause = output.split("Root Cause")[-1]
    assert f"traceback : error: image {victim} is unreadable or corrupt" in root_cause
    assert output.count(f"error: image {victim}") >= 2  # each rank said it
