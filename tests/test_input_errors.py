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
from ignite.engine import Engine
from monai.bundle import ConfigWorkflow
from monai.data import MetaTensor
from PIL import Image

from custom_losses.data import DataError, check_items
from custom_losses.errors import InputError, find_input_error, report_lines
from custom_losses.inference import ManifestUpdater, inference_items, output_name
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


def rgb_image(path: Path, height: int = 40, width: int = 48, seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def manifest_rows(prediction_dir: Path, input_dir: Path) -> dict[str, dict]:
    """The manifest's rows by input path relative to ``input_dir``."""
    with open(prediction_dir / "manifest.csv", newline="") as handle:
        return {Path(row["input"]).relative_to(input_dir).as_posix(): row for row in csv.DictReader(handle)}


def test_inference_skips_name_clashes_and_lists_images_in_subfolders(tmp_path):
    """a.png and a.jpg would both be predicted to a_seg.png: the second (in name order) is skipped, naming
    the first; images in subfolders are listed as skipped, hidden folders and the predictions are not."""
    frames = tmp_path / "frames"
    (frames / "patient2").mkdir(parents=True)
    (frames / ".thumbnails").mkdir()
    (frames / "predictions").mkdir()
    for path in (frames / "a.jpg", frames / "a.png", frames / "b.png", frames / "patient2" / "c.png"):
        rgb_image(path)
    rgb_image(frames / ".thumbnails" / "a.png")
    rgb_image(frames / "predictions" / "old_seg.png")  # an earlier run's output inside the input folder
    prediction_dir = frames / "predictions"

    items = inference_items(frames, prediction_dir)
    assert [Path(i["image"]).name for i in items] == ["a.jpg", "b.png"]
    rows = manifest_rows(prediction_dir, frames)
    assert sorted(rows) == ["a.jpg", "a.png", "b.png", "patient2/c.png"]
    assert rows["a.jpg"]["status"] == "pending" and rows["a.jpg"]["output"] == str(prediction_dir / "a_seg.png")
    assert rows["a.png"]["status"] == "skipped" and rows["a.png"]["output"] == ""
    assert "a_seg.png" in rows["a.png"]["reason"] and str(frames / "a.jpg") in rows["a.png"]["reason"]
    assert rows["patient2/c.png"]["status"] == "skipped" and "subfolder" in rows["patient2/c.png"]["reason"]

    with pytest.raises(InputError, match=r"input .*a\.png would overwrite the prediction a_seg\.png of .*a\.jpg"):
        inference_items(frames, tmp_path / "strict", strict=True)
    (frames / "a.png").unlink()
    with pytest.raises(InputError, match=r"input .*patient2/c\.png is in a subfolder"):
        inference_items(frames, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()


def test_inference_applies_the_training_image_checks(tmp_path):
    """A 16-bit grayscale PNG (convert('RGB') saturates it) or an 8-bit one: refused by training, skipped here."""
    frames = tmp_path / "frames"
    frames.mkdir()
    rgb_image(frames / "rgb.png")
    Image.fromarray(np.linspace(0, 60000, 40 * 48).reshape(40, 48).astype(np.uint16)).save(frames / "deep.png")
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(frames / "gray.png")
    assert Image.open(frames / "deep.png").mode.startswith("I")

    items = inference_items(frames, tmp_path / "predictions")
    assert [Path(i["image"]).name for i in items] == ["rgb.png"]
    rows = manifest_rows(tmp_path / "predictions", frames)
    for name in ("deep.png", "gray.png"):
        assert rows[name]["status"] == "skipped" and "expected an RGB image" in rows[name]["reason"], rows[name]
        training_message = f"image {frames / name} {rows[name]['reason']}"  # the training check's own words
        with pytest.raises(DataError) as error:
            check_items([{"image": str(frames / name), "label": str(frames / name)}])
        assert str(error.value) == training_message
    with pytest.raises(InputError, match=r"input .*deep\.png has 1 channel \(PIL mode I"):
        inference_items(frames, tmp_path / "strict", strict=True)


def test_a_failed_inference_marks_the_rows_not_predicted_not_run(tmp_path):
    """Predictions written before the failure stay ``ok``; the rest say ``not run`` and why."""
    frames = tmp_path / "frames"
    frames.mkdir()
    paths = [rgb_image(frames / f"{name}.png") for name in "abc"]
    prediction_dir = tmp_path / "predictions"
    items = inference_items(frames, prediction_dir)
    outputs = {Path(p).name: prediction_dir / output_name(p, "2d") for p in paths}

    def step(engine, item):
        if engine.state.iteration == 2:
            raise MemoryError("out of memory")
        outputs[Path(item["image"]).name].write_bytes(b"png")
        return {"image": MetaTensor(torch.zeros(1), meta={"filename_or_obj": item["image"]})}

    engine = Engine(step)
    ManifestUpdater(prediction_dir).attach(engine)
    with pytest.raises(MemoryError):
        engine.run(items)
    rows = manifest_rows(prediction_dir, frames)
    assert rows["a.png"]["status"] == "ok"
    assert [rows[n]["status"] for n in ("b.png", "c.png")] == ["not run", "not run"]
    assert rows["c.png"]["reason"] == "MemoryError: out of memory"


@pytest.mark.slow
def test_inference_of_clashing_names_subfolders_and_16_bit_images(tmp_path):
    """End to end: one prediction per output name (a.jpg's, not overwritten by a.png's), the others skipped."""
    bundle = Path(shutil.copytree(BUNDLES_DIR / "polyp_ce", tmp_path / "bundle"))
    untrained_checkpoint(bundle)
    frames = tmp_path / "frames"
    (frames / "patient2").mkdir(parents=True)
    rgb_image(frames / "a.jpg", 40, 48)
    rgb_image(frames / "a.png", 20, 24)
    rgb_image(frames / "patient2" / "c.png")
    Image.fromarray(np.full((40, 48), 40000, np.uint16)).save(frames / "deep.png")
    result = bundle_run(
        bundle, "configs/inference.json", "--input_dir", str(frames), "--device", "cpu", "--image_size", "32"
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "1 of 4 image file(s)" in result.stdout and "1 skipped as name clashes" in result.stdout
    predictions = bundle / "predictions"
    assert sorted(p.name for p in predictions.iterdir()) == ["a_seg.png", "manifest.csv"]
    assert np.asarray(Image.open(predictions / "a_seg.png")).shape == (40, 48)  # a.jpg's
    rows = manifest_rows(predictions, frames)
    assert {name: row["status"] for name, row in rows.items()} == {
        "a.jpg": "ok",
        "a.png": "skipped",
        "deep.png": "skipped",
        "patient2/c.png": "skipped",
    }


@pytest.mark.slow
def test_a_truncated_checkpoint_at_inference_ends_with_one_line(tmp_path):
    bundle = Path(shutil.copytree(BUNDLES_DIR / "polyp_ce", tmp_path / "bundle"))
    untrained_checkpoint(bundle)
    checkpoint = bundle / "models" / "fold1" / "model.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("a.png", "b.jpg"):
        rgb_image(frames / name)
    result = bundle_run(
        bundle, "configs/inference.json", "--input_dir", str(frames), "--device", "cpu", "--image_size", "32"
    )
    assert result.returncode == 1
    assert last_line(result).startswith(f"error: checkpoint {checkpoint} is unreadable (truncated")
    assert "Traceback" not in result.stdout + result.stderr  # kept in logs/error_traceback.txt
    predictions = bundle / "predictions"
    assert sorted(p.name for p in predictions.iterdir()) == ["manifest.csv"]
    rows = manifest_rows(predictions, frames)
    assert {row["status"] for row in rows.values()} == {"not run"}
    assert all(row["reason"].startswith(f"checkpoint {checkpoint} is unreadable") for row in rows.values())
