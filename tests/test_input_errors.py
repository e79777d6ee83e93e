"""Bad input as a user meets it: `python -m monai.bundle run` from the bundle folder and the study runner.

Each case checks the last non-empty line of the output (the one-line reason), the exit status and what
was written (nothing, or only complete predictions plus the manifest).
"""

from __future__ import annotations

import csv
import json
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
from custom_losses.errors import InputError, error_line, find_input_error, report_lines
from custom_losses.inference import ManifestUpdater, inference_items, output_name
from lesion_study.bundlegen.cli import BUNDLES_DIR
from lesion_study.synthetic import write_prepared_polyp

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


# ------------------------------------------------------------------ settings given on the command line

FLEXIBLE_UNET = ("FlexibleUNet", 2, [2, 2, 2, 2, 2])
UNET_3D = ("UNet", 3, [2, 2, 2, 2])
DOWNSAMPLES_32 = "(the FlexibleUNet downsamples by 2 x 2 x 2 x 2 x 2 = 32)"


@pytest.mark.parametrize(
    ("name", "value", "network", "expected"),
    [
        ("epochs", -1, FLEXIBLE_UNET, "epochs must be a positive integer, got -1"),
        ("epochs", "abc", FLEXIBLE_UNET, "epochs must be a positive integer, got 'abc'"),
        ("epochs", True, FLEXIBLE_UNET, "epochs must be a positive integer, got True"),
        ("batch_size", 0, FLEXIBLE_UNET, "batch_size must be a positive integer, got 0"),
        ("val_batch_size", 2.5, FLEXIBLE_UNET, "val_batch_size must be a positive integer, got 2.5"),
        ("learning_rate", -0.001, FLEXIBLE_UNET, "learning_rate must be a positive number, got -0.001"),
        ("learning_rate", float("nan"), FLEXIBLE_UNET, "learning_rate must be a positive number, got nan"),
        ("num_workers", -1, FLEXIBLE_UNET, "num_workers must be an integer >= 0, got -1"),
        ("cache_rate", 1.5, FLEXIBLE_UNET, "cache_rate must be a number in [0, 1], got 1.5"),
        ("resume", "yes", FLEXIBLE_UNET, "resume must be True or False, got 'yes'"),
        ("fold", 0, FLEXIBLE_UNET, "fold must be a positive integer, got 0"),
        ("folds", [1, 1], FLEXIBLE_UNET, "folds must be a list of at least two distinct positive fold numbers"),
        ("folds", [1], FLEXIBLE_UNET, "folds must be a list of at least two distinct positive fold numbers such as"),
        (
            "image_size",
            7,
            FLEXIBLE_UNET,
            f"image_size must be a positive multiple of 32 {DOWNSAMPLES_32}, got 7: use 32",
        ),
        ("image_size", 100, FLEXIBLE_UNET, f"image_size must be a positive multiple of 32 {DOWNSAMPLES_32}, got 100: "),
        ("spatial_size", [100, 100], FLEXIBLE_UNET, "spatial_size must be 2 positive multiples of 32"),
        (
            "spatial_size",
            [48, 60, 40],
            UNET_3D,
            "spatial_size must be 3 positive multiples of 16 (the UNet downsamples by 2 x 2 x 2 x 2 = 16), "
            "got [48, 60, 40]: e.g. [48, 64, 48]",
        ),
        ("spatial_size", [48, 64], UNET_3D, "spatial_size must be 3 positive multiples of 16"),
        ("device", "gpu", FLEXIBLE_UNET, "device must be cpu, cuda or cuda:N, got 'gpu'"),
        ("precision", "fp16", FLEXIBLE_UNET, "precision must be one of auto, bf16, fp32, got 'fp16'"),
        ("threshold", 1, FLEXIBLE_UNET, "threshold must be a number between 0 and 1, got 1"),
        ("label_uncertainty_width", -1, UNET_3D, "label_uncertainty_width must be a number >= 0, got -1"),
        ("label_uncertainty_width", "2", UNET_3D, "label_uncertainty_width must be a number >= 0, got '2'"),
        (
            "label_uncertainty_targets",
            "soft",
            UNET_3D,
            "label_uncertainty_targets must be one of sampled, expected, got 'soft'",
        ),
    ],
)
def test_each_bad_setting_is_named_with_its_value(name, value, network, expected):
    from custom_losses.settings import SettingError, check_settings

    with pytest.raises(SettingError) as error:
        check_settings({"epochs": 3, name: value, "device": "cpu"} if name != "device" else {name: value}, *network)
    assert str(error.value).startswith(expected), str(error.value)
    assert find_input_error(RuntimeError("Failed to evaluate ConfigExpression")) is None


def test_good_settings_pass_and_the_first_bad_one_is_reported():
    from custom_losses.settings import SettingError, check_settings

    good = {"epochs": 1, "batch_size": 4, "learning_rate": 3e-4, "image_size": 64, "spatial_size": [64, 96]}
    check_settings({**good, "device": "cpu", "fold": 2, "cache_rate": 0, "seed": 0}, *FLEXIBLE_UNET)
    check_settings({"spatial_size": [48, 64, 48], "folds": [1, 2, 3]}, *UNET_3D)
    with pytest.raises(SettingError, match="^epochs must"):  # in the order of RULES
        check_settings({"image_size": 7, "epochs": 0}, *FLEXIBLE_UNET)


def test_a_device_this_machine_lacks(monkeypatch):
    from custom_losses.settings import SettingError, check_settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SettingError, match=r"^device cuda is not available: this machine has no usable CUDA device"):
        check_settings({"device": "cuda"}, *FLEXIBLE_UNET)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SettingError, match=r"^device cuda:2 does not exist: this machine has 2 CUDA device\(s\)"):
        check_settings({"device": "cuda:2"}, *FLEXIBLE_UNET)
    check_settings({"device": torch.device("cuda", 1)}, *FLEXIBLE_UNET)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(SettingError, match=r"^device mps is not available on this machine"):
        check_settings({"device": "mps"}, *FLEXIBLE_UNET)


def test_an_output_folder_under_a_file_or_read_only(tmp_path, monkeypatch):
    import errno
    import os

    from custom_losses import settings

    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(settings.SettingError) as error:
        settings.check_settings({"output_dir": str(tmp_path / "notes.txt" / "run")}, *FLEXIBLE_UNET)
    assert (
        str(error.value)
        == f"output_dir {tmp_path / 'notes.txt' / 'run'} is not a folder: {tmp_path / 'notes.txt'} is a file"
    )

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root writes there anyway: the probe meets what a read-only file system says

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(settings.tempfile, "TemporaryFile", read_only)
    with pytest.raises(settings.SettingError, match=rf"^prediction_dir {locked / 'a' / 'b'} is not writable: cannot "):
        settings.check_settings({"prediction_dir": str(locked / "a" / "b")}, *FLEXIBLE_UNET)
    assert not (locked / "a").exists()
    locked.chmod(0o700)


def test_every_config_checks_its_settings_first():
    """Second in every initialize, right after the error report (multi-GPU: before the process group)."""
    from custom_losses.settings import RULES
    from lesion_study.bundlegen.configs import ERROR_REPORT
    from tests.test_bundles import GENERATED

    written = {
        "train": "log_dir",
        "evaluate": "eval_dir",
        "evaluate_ensemble": "eval_dir",
        "inference": "prediction_dir",
    }
    for name, files in GENERATED.items():
        configs = {
            Path(p).stem: json.loads(t) for p, t in files.items() if p.startswith("configs/") and p.endswith(".json")
        }
        for stem, config in configs.items():
            if "initialize" not in config:
                continue
            assert config["initialize"][0] == ERROR_REPORT, (name, stem)
            assert config["initialize"][1].startswith("$custom_losses.settings.check_settings(@checked_settings, ")
            if stem in written:
                assert written[stem] in config["checked_settings"] and set(config["checked_settings"]) <= set(RULES)
        assert "finetune" in configs and "initialize" not in configs["finetune"]  # train.json's initialize
        assert {"epochs", "batch_size", "learning_rate", "fold", "spatial_size", "device", "output_dir"} <= set(
            configs["train"]["checked_settings"]
        )
        assert ("image_size" in configs["train"]["checked_settings"]) == (not name.startswith("hippocampus"))
        for stem in ("train", "evaluate"):  # the 3D label law's width, used by training and evaluation
            checked = "label_uncertainty_width" in configs[stem]["checked_settings"]
            assert checked == name.startswith("hippocampus"), (name, stem)
        targets_checked = "label_uncertainty_targets" in configs["train"]["checked_settings"]
        assert targets_checked == name.startswith("hippocampus"), name


TRAIN, EVALUATE = ["train.json"], ["train.json", "evaluate.json"]
ENSEMBLE = [*EVALUATE, "evaluate_ensemble.json"]
FINETUNE, MULTI_GPU = ["train.json", "finetune.json"], ["train.json", "multi_gpu_train.json"]
INFERENCE = ["inference.json"]
NO_CUDA = "device cuda is not available: this machine has no usable CUDA device"
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")


def config_files(configs: list[str]) -> str:
    return "[" + ",".join(f"'configs/{c}'" for c in configs) + "]"


@pytest.mark.parametrize(
    ("bundle_name", "configs", "overrides", "expected"),
    [
        ("polyp_ce", TRAIN, {"epochs": "abc"}, "error: epochs must be a positive integer, got 'abc'"),
        ("polyp_ce", TRAIN, {"batch_size": 0}, "error: batch_size must be a positive integer, got 0"),
        ("polyp_ce", TRAIN, {"learning_rate": -1e-3}, "error: learning_rate must be a positive number, got -0.001"),
        ("polyp_ce", TRAIN, {"fold": 0}, "error: fold must be a positive integer, got 0"),
        pytest.param("polyp_ce", TRAIN, {"device": "cuda"}, f"error: {NO_CUDA}", marks=needs_no_cuda),
        ("polyp_ce", EVALUATE, {"val_batch_size": -4}, "error: val_batch_size must be a positive integer, got -4"),
        pytest.param("polyp_ce", EVALUATE, {"device": "cuda"}, f"error: {NO_CUDA}", marks=needs_no_cuda),
        ("polyp_ce", ENSEMBLE, {"folds": [1, 0]}, "error: folds must be a list of at least two distinct positive"),
        ("polyp_ce", INFERENCE, {"image_size": 100}, "error: image_size must be a positive multiple of 32"),
        ("polyp_ce_finetune_dice", FINETUNE, {"epochs": 0}, "error: epochs must be a positive integer, got 0"),
        ("polyp_ce", MULTI_GPU, {"batch_size": "8"}, "error: batch_size must be a positive integer, got '8'"),
        ("hippocampus_ce", EVALUATE, {"fold": "abc"}, "error: fold must be a positive integer, got 'abc'"),
        ("hippocampus_ce", FINETUNE, {"spatial_size": [48, 64]}, "error: spatial_size must be 3 positive multiples"),
        ("hippocampus_ce", MULTI_GPU, {"learning_rate": "fast"}, "error: learning_rate must be a positive number"),
        ("hippocampus_ce", INFERENCE, {"device": "gpu"}, "error: device must be cpu, cuda or cuda:N, got 'gpu'"),
    ],
)
def test_every_config_stops_a_bad_override_first(prepared, tmp_path, bundle_name, configs, overrides, expected):
    """In-process (each run of the CLI takes seconds): what initialize raises, as the error report words it."""
    inputs = {"input_dir": str(prepared / "test" / "images")} if configs == INFERENCE else {}
    workflow = ConfigWorkflow(
        config_file=[str(BUNDLES_DIR / bundle_name / "configs" / c) for c in configs],
        bundle_root=str(BUNDLES_DIR / bundle_name),
        dataset_dir=str(prepared),
        output_dir=str(tmp_path / "out"),
        **inputs,
        **overrides,
    )
    with pytest.raises(RuntimeError) as error:  # MONAI's "Failed to evaluate ConfigExpression"
        workflow.initialize()
    found = find_input_error(error.value)
    assert found is not None, error.value
    assert error_line(found).startswith(expected), error_line(found)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bundle_name", "configs", "overrides", "expected"),
    [
        ("polyp_ce", TRAIN, ["--epochs", "-1"], "error: epochs must be a positive integer, got -1"),
        (
            "polyp_ce",
            TRAIN,
            ["--image_size", "7"],
            f"error: image_size must be a positive multiple of 32 {DOWNSAMPLES_32}, got 7: use 32",
        ),
        (
            "polyp_ce",
            TRAIN,
            ["--output_dir", "{file}/run"],
            "error: output_dir {file}/run is not a folder: {file} is a file",
        ),
        # multi-GPU: checked before the process group starts, which evaluates device on its own
        pytest.param("polyp_ce", MULTI_GPU, ["--device", "cuda"], f"error: {NO_CUDA}", marks=needs_no_cuda),
        (
            "hippocampus_ce",
            TRAIN,
            ["--spatial_size", "[48,60,48]"],
            "error: spatial_size must be 3 positive multiples of 16 (the UNet downsamples by 2 x 2 x 2 x 2 = 16), "
            "got [48, 60, 48]: e.g. [48, 64, 48]",
        ),
    ],
)
def test_bad_overrides_end_with_one_line_and_write_nothing(
    prepared, tmp_path, bundle_name, configs, overrides, expected
):
    bundle = Path(shutil.copytree(BUNDLES_DIR / bundle_name, tmp_path / "bundle"))
    stray_file = str(tmp_path / "notes.txt")
    Path(stray_file).write_text("a file, not a folder")
    overrides = [o.replace("{file}", stray_file) for o in overrides]
    common = ["--dataset_dir", str(prepared), "--output_dir", str(tmp_path / "out"), "--num_workers", "0"]
    result = bundle_run(bundle, config_files(configs), *common, *overrides, timeout=120)
    assert result.returncode == 1, (result.stdout + result.stderr)[-2000:]
    assert last_line(result).startswith(expected.replace("{file}", stray_file)), last_line(result)
    assert "Traceback" not in result.stderr
    written = [p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written in ([], [Path("logs/error_traceback.txt")])


@pytest.mark.slow
def test_a_datalist_leaving_the_dataset_ends_with_one_line(prepared, tmp_path):
    bundle = Path(shutil.copytree(BUNDLES_DIR / "polyp_ce", tmp_path / "bundle"))
    data = Path(shutil.copytree(prepared, tmp_path / "data"))
    datalist = json.loads((data / "datalist.json").read_text())
    shutil.copy(data / datalist["test"][0]["image"], tmp_path / "stray.png")
    datalist["test"][0]["image"] = "../stray.png"
    (data / "datalist.json").write_text(json.dumps(datalist))
    common = ["--dataset_dir", str(data), "--device", "cpu", "--num_workers", "0", "--image_size", "32"]
    untrained_checkpoint(bundle)
    result = bundle_run(bundle, config_files(EVALUATE), *common)
    assert result.returncode == 1, (result.stdout + result.stderr)[-2000:]
    assert last_line(result) == (
        f"error: datalist {data / 'datalist.json'}: test[0] image ../stray.png is outside dataset_dir {data} "
        "(run with --allow_external_paths True if the datalist may point elsewhere)"
    )
    assert not (bundle / "eval").exists()


def test_allow_external_paths_reaches_every_datalist(prepared, tmp_path):
    """Training, validation (2D and 3D alike: the same generated ids) and the 2D test split."""
    from monai.bundle import ConfigParser

    data = Path(shutil.copytree(prepared, tmp_path / "data"))
    datalist = json.loads((data / "datalist.json").read_text())
    for item in datalist["training"] + datalist["test"]:
        stray = tmp_path / Path(item["label"]).name
        shutil.copy(data / item["label"], stray)
        item["label"] = str(stray)
    (data / "datalist.json").write_text(json.dumps(datalist))
    configs = BUNDLES_DIR / "polyp_ce" / "configs"
    runs = {
        ("train.json",): ["train#datalist", "validate#datalist"],
        ("train.json", "evaluate.json"): ["validate#datalist"],
    }
    for files, datalist_ids in runs.items():
        for allowed in (False, True):
            parser = ConfigParser()
            parser.read_config([str(configs / name) for name in files])
            parser.update({"dataset_dir": str(data), "allow_external_paths": allowed})
            for datalist_id in datalist_ids:
                if allowed:
                    assert parser.get_parsed_content(datalist_id), (files, datalist_id)
                    continue
                with pytest.raises(RuntimeError) as error:
                    parser.get_parsed_content(datalist_id)
                assert "is outside dataset_dir" in str(find_input_error(error.value)), (files, datalist_id)


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
