"""Reliability of the bundles: bad input, non-finite loss, interruption and resume, determinism, atomic outputs."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow
from monai.utils import set_determinism
from PIL import Image

from custom_losses import CrossEntropyLoss
from custom_losses.atomic import replace_atomically, write_csv_atomic, write_json_atomic, write_text_atomic
from custom_losses.data import DataError, check_items, fold_split, load_split
from custom_losses.handlers import AtomicCheckpointSaver, EpochCheckpointSaver, LesionMetricsWriter
from lesion_study.bundlegen.cli import BUNDLES_DIR
from lesion_study.synthetic import write_prepared_polyp
from tests.test_bundles import FAST, run_workflow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_prepared_polyp(
        tmp_path_factory.mktemp("reliability"), n_lesion=4, n_lesion_free=2, size=(72, 64), seed=4
    )


@pytest.fixture
def dataset(prepared, tmp_path) -> Path:
    """A private copy the test may break."""
    return Path(shutil.copytree(prepared, tmp_path / "data"))


def first_training_item(dataset: Path) -> tuple[dict, Path, Path]:
    """The datalist and the first item that fold 1's training split uses (it is not in fold 1)."""
    datalist = json.loads((dataset / "datalist.json").read_text())
    item = next(i for i in datalist["training"] if i["fold"] != 1)
    return datalist, dataset / item["image"], dataset / item["label"]


def expect_error(dataset: Path, exception: type, *fragments: str, fold: int = 1) -> None:
    with pytest.raises(exception) as error:
        fold_split(dataset / "datalist.json", dataset, fold, "train")
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_clean_dataset_passes_the_checks(dataset):
    assert len(fold_split(dataset / "datalist.json", dataset, 1, "train")) == 16
    assert len(load_split(dataset / "datalist.json", dataset, "test")) == 6


def test_missing_or_empty_dataset_dir_and_datalist(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset_dir .*nowhere does not exist"):
        fold_split(tmp_path / "nowhere" / "datalist.json", tmp_path / "nowhere", 1, "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="dataset_dir .*empty is empty"):
        fold_split(tmp_path / "empty" / "datalist.json", tmp_path / "empty", 1, "train")
    (dataset / "datalist.json").unlink()
    expect_error(dataset, FileNotFoundError, "datalist", "datalist.json does not exist")


def test_entry_pointing_to_a_missing_file(dataset):
    _, image, _ = first_training_item(dataset)
    image.unlink()
    expect_error(dataset, FileNotFoundError, "image", image.name, "does not exist")


def test_image_without_label(dataset):
    datalist, image, _ = first_training_item(dataset)
    next(i for i in datalist["training"] if i["fold"] != 1).pop("label")
    (dataset / "datalist.json").write_text(json.dumps(datalist))
    expect_error(dataset, DataError, image.name, "has no label")


def test_corrupt_image(dataset):
    _, image, _ = first_training_item(dataset)
    image.write_bytes(image.read_bytes()[:60])
    expect_error(dataset, DataError, str(image), "unreadable or corrupt")


def test_grayscale_image(dataset):
    _, image, _ = first_training_item(dataset)
    Image.open(image).convert("L").save(image)
    expect_error(dataset, DataError, str(image), "1 channel", "expected an RGB image")


def test_mask_of_another_size(dataset):
    _, image, label = first_training_item(dataset)
    Image.open(label).resize((32, 64)).save(label)
    expect_error(dataset, DataError, str(label), "32x64", str(image), "64x64")


def test_mask_values_below_the_threshold(dataset):
    _, _, label = first_training_item(dataset)
    mask = np.asarray(Image.open(label)) > 127
    Image.fromarray(mask.astype(np.uint8)).save(label)  # 0/1 class indices instead of 0/255
    expect_error(dataset, DataError, str(label), "values up to 1", "threshold 127")


def test_fold_that_does_not_exist(dataset):
    expect_error(dataset, ValueError, "fold 7 does not exist", "folds are [1, 2, 3, 4, 5]", fold=7)


def test_datalist_paths_that_leave_the_dataset_are_refused_unless_allowed(dataset, tmp_path):
    datalist, image, label = first_training_item(dataset)
    index = next(k for k, i in enumerate(datalist["training"]) if i["fold"] != 1)
    shutil.copy(image, tmp_path / "elsewhere.png")  # a readable image: it would be trained on
    datalist["training"][index]["image"] = "../elsewhere.png"
    (dataset / "datalist.json").write_text(json.dumps(datalist))
    expect_error(
        dataset,
        DataError,
        f"training[{index}] image ../elsewhere.png is outside dataset_dir {dataset}",
        "--allow_external_paths True",
    )
    external = fold_split(dataset / "datalist.json", dataset, 1, "train", allow_external_paths=True)
    assert str(tmp_path / "elsewhere.png") in [item["image"] for item in external]

    datalist["training"][index]["image"] = str(image)  # absolute, but inside: fine
    datalist["test"][1]["label"] = str(label)
    outside = dataset.parent / "outside"
    outside.mkdir()
    shutil.copy(label, outside / label.name)
    datalist["test"][2]["label"] = str(outside / label.name)
    (dataset / "datalist.json").write_text(json.dumps(datalist))
    assert len(fold_split(dataset / "datalist.json", dataset, 1, "train")) == 16
    with pytest.raises(DataError, match=rf"test\[2\] label {outside / label.name} is outside dataset_dir"):
        load_split(dataset / "datalist.json", dataset, "test")
    assert len(load_split(dataset / "datalist.json", dataset, "test", allow_external_paths=True)) == 6
    (tmp_path / "link").symlink_to(dataset)  # the dataset reached through a symlink stays inside
    with pytest.raises(DataError, match="is outside dataset_dir"):
        load_split(tmp_path / "link" / "datalist.json", tmp_path / "link", "test")
    assert len(fold_split(tmp_path / "link" / "datalist.json", tmp_path / "link", 1, "validate")) == 4


def test_nifti_label_with_unknown_class(tmp_path):
    image = np.random.default_rng(0).random((6, 7, 5), dtype=np.float32)
    label = np.zeros((6, 7, 5), dtype=np.uint8)
    label[2:4, 2:4, 2:4] = 2
    nibabel.save(nibabel.Nifti1Image(image, np.eye(4)), tmp_path / "image.nii.gz")
    nibabel.save(nibabel.Nifti1Image(label, np.eye(4)), tmp_path / "good.nii.gz")
    label[0, 0, 0] = 5
    nibabel.save(nibabel.Nifti1Image(label, np.eye(4)), tmp_path / "bad.nii.gz")
    nibabel.save(nibabel.Nifti1Image(label[:5], np.eye(4)), tmp_path / "short.nii.gz")
    check_items([{"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "good.nii.gz")}], num_classes=3)
    with pytest.raises(DataError, match=r"bad.nii.gz holds classes \[5\] that the bundle does not know"):
        check_items([{"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "bad.nii.gz")}], num_classes=3)
    with pytest.raises(DataError, match=r"short.nii.gz has shape \(5, 7, 5\)"):
        check_items([{"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "short.nii.gz")}], num_classes=3)

    good_label = str(tmp_path / "good.nii.gz")
    nibabel.save(nibabel.Nifti1Image(np.stack([image, image], -1), np.eye(4)), tmp_path / "series.nii.gz")
    with pytest.raises(DataError, match=r"series.nii.gz has shape \(6, 7, 5, 2\): expected one 3D volume"):
        check_items([{"image": str(tmp_path / "series.nii.gz"), "label": good_label}], num_classes=3)
    flat = nibabel.Nifti1Image(image, None)
    flat.header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
    flat.header.set_qform(None, code=0)
    nibabel.save(flat, tmp_path / "flat.nii.gz")
    with pytest.raises(DataError, match=r"flat.nii.gz has no usable orientation"):
        check_items([{"image": str(tmp_path / "flat.nii.gz"), "label": good_label}], num_classes=3)


class NaNAfterLoss(CrossEntropyLoss):
    """CE that turns NaN after ``after`` calls: a training run that goes wrong on purpose."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.calls = 0

    def forward(self, input, target):
        self.calls += 1
        loss = super().forward(input, target)
        return loss * math.nan if self.calls > self.after else loss


@pytest.mark.slow
def test_non_finite_loss_stops_with_epoch_and_iteration(prepared, tmp_path):
    bundle = Path(shutil.copytree(BUNDLES_DIR / "polyp_ce", tmp_path / "polyp_ce"))
    nan_loss = {"_target_": "tests.test_reliability.NaNAfterLoss", "after": 5}  # 4 iterations per epoch
    with pytest.raises(RuntimeError) as error:  # MONAI wraps what the run raised
        run_workflow(
            bundle,
            ["train.json"],
            dataset_dir=str(prepared),
            **{**FAST, "epochs": 3, "resume_checkpoint_interval_s": 0},
            loss=nan_loss,
        )
    assert isinstance(error.value.__cause__, FloatingPointError)
    message = str(error.value.__cause__)
    assert "training loss is nan at epoch 2, iteration 2/4" in message
    assert message.endswith("weights and batch were finite: this forward pass or the loss produced it")
    models = bundle / "models" / "fold1"
    assert (models / "model.pt").is_file()  # best model of epoch 1
    assert (models / "resume_checkpoint_epoch=1.pt").is_file()  # last good epoch
    assert not (models / "model_final.pt").exists()
    state = torch.load(models / "resume_checkpoint_epoch=1.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def resume_checkpoint_epochs(tmp_path: Path, min_interval_s: float, epochs: int) -> list[int]:
    """Epochs after which a new resume checkpoint appeared, on a bare ignite engine."""
    engine = Engine(lambda engine, batch: None)
    EpochCheckpointSaver(tmp_path, {"model": torch.nn.Linear(2, 1)}, min_interval_s=min_interval_s).attach(engine)
    saved: list[int] = []

    def record(engine: Engine) -> None:
        if (tmp_path / f"resume_checkpoint_epoch={engine.state.epoch}.pt").is_file():
            saved.append(engine.state.epoch)

    engine.add_event_handler(Events.EPOCH_COMPLETED, record)
    engine.run([0, 1], max_epochs=epochs)
    return saved


def test_resume_checkpoints_every_epoch_or_after_the_interval(tmp_path, monkeypatch):
    assert resume_checkpoint_epochs(tmp_path / "every", 0.0, 4) == [1, 2, 3, 4]
    assert resume_checkpoint_epochs(tmp_path / "hour", 3600.0, 4) == [4]  # the last epoch always
    clock = itertools.count(0.0, 10.0)  # each reading 10 s later: epochs end at 20, 30, 40, ... s
    monkeypatch.setattr("custom_losses.handlers.checkpoints.time.monotonic", lambda: next(clock))
    assert resume_checkpoint_epochs(tmp_path / "25s", 25.0, 7) == [3, 6, 7]
    with pytest.raises(ValueError, match="min_interval_s"):
        EpochCheckpointSaver(tmp_path, {}, min_interval_s=-1)


def test_a_resume_checkpoint_is_removed_only_once_the_next_is_written(tmp_path, monkeypatch):
    """A kill while a resume checkpoint is written leaves the previous one, and a resumed run (which starts
    with an earlier run's checkpoint on disk) ends with only its newest."""
    from ignite.handlers import DiskSaver

    (tmp_path / "resume_checkpoint_epoch=1.pt").write_bytes(b"before the resume")
    on_disk_while_saving = []
    write = DiskSaver.__call__

    def recording_write(self, checkpoint, filename, metadata=None):
        on_disk_while_saving.append(sorted(p.name for p in tmp_path.glob("resume_*.pt")))
        write(self, checkpoint, filename, metadata)

    monkeypatch.setattr(DiskSaver, "__call__", recording_write)
    engine = Engine(lambda engine, batch: None)
    EpochCheckpointSaver(tmp_path, {"model": torch.nn.Linear(2, 1)}).attach(engine)
    engine.run([0, 1], max_epochs=3)
    assert on_disk_while_saving == [[f"resume_checkpoint_epoch={epoch}.pt"] for epoch in (1, 1, 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resume_checkpoint_epoch=3.pt"]


def train_command(bundle: Path, dataset: Path, epochs: int, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json"]
    command += ["--dataset_dir", str(dataset), "--epochs", str(epochs), "--device", "cpu", "--batch_size", "4"]
    return command + ["--num_workers", "0", "--image_size", "64", *extra]


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_epoch_count(prepared, tmp_path):
    bundle = Path(shutil.copytree(BUNDLES_DIR / "polyp_ce_linear_dice", tmp_path / "bundle"))
    models = bundle / "models" / "fold1"
    with open(tmp_path / "first.log", "w") as log:
        child = subprocess.Popen(
            train_command(bundle, prepared, 4, "--resume_checkpoint_interval_s", "0"),
            cwd=bundle,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 240
        while not list(models.glob("resume_checkpoint_epoch=*.pt")) and time.time() < deadline:
            if child.poll() is not None:
                break
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
    saved = list(models.glob("resume_checkpoint_epoch=*.pt"))
    assert saved, (tmp_path / "first.log").read_text()[-2000:]
    assert not (models / "model_final.pt").exists(), "killed run must not look finished"
    resumed_from = int(saved[0].stem.rsplit("=", 1)[1])
    assert resumed_from < 4

    result = subprocess.run(
        train_command(bundle, prepared, 4, "--resume", "True"), cwd=bundle, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "until 4 epochs" in output and f"epoch {resumed_from} until" in output  # ignite's resume line
    assert f"Epoch: {resumed_from}/4" not in output and "Epoch: 4/4" in output
    assert (models / "model_final.pt").is_file()
    assert "loss alpha (CE weight) set to 0.0000" in output  # linear schedule reached its last epoch

    missing = subprocess.run(
        train_command(bundle, prepared, 4, "--resume", "True", "--output_dir", str(tmp_path / "fresh")),
        cwd=bundle,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode != 0 and "no epoch checkpoint to resume from" in missing.stdout + missing.stderr


def losses_of_a_run(bundle: Path, dataset: Path, seed: int) -> list[float]:
    losses: list[float] = []

    class Recorder:
        def attach(self, engine):
            engine.add_event_handler(
                Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"].detach()))
            )

    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"),
        bundle_root=str(bundle),
        dataset_dir=str(dataset),
        seed=seed,
        output_dir=str(bundle / f"run{len(list(bundle.glob('run*')))}"),
        **{**FAST, "epochs": 2},
    )
    workflow.initialize()
    Recorder().attach(workflow.parser.get_parsed_content("train#trainer"))
    workflow.run()
    workflow.finalize()
    set_determinism(seed=None)
    return [float(v) for v in losses]


@pytest.mark.slow
def test_same_seed_same_losses_on_cpu(prepared, tmp_path):
    bundle = Path(shutil.copytree(BUNDLES_DIR / "polyp_ce_dice", tmp_path / "bundle"))
    first = losses_of_a_run(bundle, prepared, seed=0)
    second = losses_of_a_run(bundle, prepared, seed=0)
    other_seed = losses_of_a_run(bundle, prepared, seed=1)
    assert len(first) == 8
    assert first == second
    assert first != other_seed


def test_outputs_are_written_atomically(tmp_path):
    target = tmp_path / "summary.json"
    with pytest.raises(ValueError):
        write_json_atomic(target, {"dice": math.nan})  # NaN is not valid JSON: nothing may be left behind
    assert not target.exists() and not list(tmp_path.iterdir())
    write_json_atomic(target, {"dice": 0.5})
    with pytest.raises(ValueError):
        write_json_atomic(target, {"dice": math.inf})
    assert json.loads(target.read_text()) == {"dice": 0.5}  # the old complete file stays
    writer = LesionMetricsWriter(tmp_path / "eval")
    with pytest.raises(ValueError, match="no evaluated images"):
        writer.write()
    assert not (tmp_path / "eval" / "summary.json").exists()


def write_with_every_writer(folder: Path) -> list[Path]:
    """Each atomic writer, and the study's files written through them (manifest, exported zip)."""
    from custom_losses.inference import inference_items
    from lesion_study.export import export_bundle

    write_text_atomic(folder / "results.md", "# results\n")
    write_json_atomic(folder / "summary.json", {"dice": 0.5})
    write_csv_atomic(folder / "per_image.csv", [{"image": "a.png"}], ["image"])
    with replace_atomically(folder / "blob.bin", "wb") as handle:
        handle.write(b"\x00")
    frames = folder / "frames"
    frames.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(frames / "a.png")
    inference_items(frames, folder / "predictions")
    zip_path = export_bundle("polyp_ce", output_dir=str(folder / "dist"), weights=False)
    return [folder / n for n in ("results.md", "summary.json", "per_image.csv", "blob.bin")] + [
        folder / "predictions" / "manifest.csv",
        zip_path,
    ]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    """Results, manifests and zips are shared files: not 0600 as tempfile.mkstemp would make them."""
    previous = os.umask(umask)
    try:
        written = write_with_every_writer(tmp_path)
    finally:
        os.umask(previous)
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in written}
    assert modes == {path.name: oct(mode) for path in written}
    assert not list(tmp_path.rglob("*.tmp"))


def test_every_checkpoint_is_saved_atomically(tmp_path):
    """MONAI's CheckpointSaver writes in place (a kill leaves a truncated .pt); ours renames a finished file."""
    saver = AtomicCheckpointSaver(
        str(tmp_path), {"model": torch.nn.Linear(1, 1)}, save_final=True, save_key_metric=True, save_interval=1
    )
    checkpoints = (saver._final_checkpoint, saver._key_metric_checkpoint, saver._interval_checkpoint)
    assert all(c.save_handler._atomic for c in checkpoints)


def test_key_metric_checkpoint_competes_only_from_its_first_epoch(tmp_path):
    """CE then Dice keeps the best model of its Dice phase, even when a CE epoch validated better."""
    from ignite.engine import Engine

    model = torch.nn.Linear(1, 1)
    saver = AtomicCheckpointSaver(
        str(tmp_path), {"model": model}, save_key_metric=True, key_metric_filename="model.pt", key_metric_from_epoch=4
    )
    evaluator = Engine(lambda engine, batch: None)
    saver.attach(evaluator)
    evaluator.state.key_metric_name = "val_mean_dice"
    kept = {}
    for epoch, dice in enumerate([0.5, 0.9, 0.6, 0.7, 0.8, 0.75], start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        evaluator.state.epoch, evaluator.state.metrics = epoch, {"val_mean_dice": dice}
        evaluator.fire_event(Events.EPOCH_COMPLETED)
        kept[epoch] = torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item()
    assert kept[1] == kept[2] == kept[3] == 1.0  # before epoch 4: a placeholder until a model that counts
    assert kept[4] == 4.0 and kept[5] == 5.0 and kept[6] == 5.0  # then the best from epoch 4 on, not 0.9


def test_best_model_record_resumes_and_model_pt_is_replaced_in_place(tmp_path):
    """The key-metric saver's record (held by resume checkpoints) comes back: a worse epoch after the resume
    keeps model.pt, a better one replaces it, by an atomic rename, even when model.pt has gone missing."""
    from ignite.engine import Engine

    model = torch.nn.Linear(1, 1)

    def saver_on_evaluator():
        saver = AtomicCheckpointSaver(
            str(tmp_path), {"model": model}, save_key_metric=True, key_metric_filename="model.pt"
        )
        evaluator = Engine(lambda engine, batch: None)
        saver.attach(evaluator)
        evaluator.state.key_metric_name = "val_mean_dice"
        return saver, evaluator

    def validate(evaluator, epoch: int, dice: float) -> float:
        with torch.no_grad():
            model.weight.fill_(epoch)
        evaluator.state.epoch, evaluator.state.metrics = epoch, {"val_mean_dice": dice}
        evaluator.fire_event(Events.EPOCH_COMPLETED)
        return torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item()

    saver, evaluator = saver_on_evaluator()
    assert validate(evaluator, 1, 0.7) == 1.0
    torch.save({"saver": saver.state_dict()}, tmp_path / "resume.pt")
    resumed, evaluator = saver_on_evaluator()
    resumed.load_state_dict(torch.load(tmp_path / "resume.pt", weights_only=True)["saver"])
    assert validate(evaluator, 2, 0.5) == 1.0  # worse than the best before the resume
    (tmp_path / "model.pt").unlink()
    assert validate(evaluator, 3, 0.8) == 3.0


def test_guard_names_a_bad_batch_and_stops_on_non_finite_weights_behind_a_finite_loss():
    from types import SimpleNamespace

    from custom_losses.handlers.guards import StopOnNonFiniteLoss, diagnose_non_finite_loss

    network = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Conv2d(2, 2, 1))
    batch = {"image": torch.zeros(1, 1, 4, 4), "label": torch.zeros(1, 1, 4, 4)}
    state = SimpleNamespace(batch=batch, output={"loss": torch.tensor(0.5)}, epoch=3, iteration=7, epoch_length=4)
    engine = SimpleNamespace(network=network, state=state)
    assert diagnose_non_finite_loss(engine).endswith("this forward pass or the loss produced it")
    batch["image"][0, 0, 1, 1] = math.inf
    assert diagnose_non_finite_loss(engine) == "non-finite values in the batch's image"

    guard = StopOnNonFiniteLoss()
    guard(engine)  # finite loss, finite weights
    network[1].bias.grad = torch.tensor([math.nan, 0.0])
    with torch.no_grad():
        network[1].bias[0] = math.nan
    with pytest.raises(FloatingPointError) as error:
        guard(engine)
    assert str(error.value) == (
        "weights are not finite after the update at epoch 3, iteration 3/4, though the loss was 0.5: "
        "training stopped; non-finite weights: 1.bias; non-finite gradients: 1.bias"
    )
