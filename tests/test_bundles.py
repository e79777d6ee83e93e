"""Every generated bundle, copied out of the repo, on synthetic Kvasir/EndoTect data made by the tests:
metadata, network shapes, train, evaluate, infer, TorchScript export; plus the CLI, torchrun and the ensemble."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from monai.data import load_net_with_metadata
from monai.utils import set_determinism
from PIL import Image

from lesion_study.bundlegen.cli import BUNDLES_DIR, SCHEMA_FILE, all_bundles, index_readme
from lesion_study.bundlegen.configs import SELECTION_START, rank0_train_handlers
from lesion_study.bundlegen.specs import DATASETS
from lesion_study.synthetic import write_prepared_polyp

GENERATED = all_bundles()
BUNDLE_NAMES = sorted(GENERATED)
# every polyp bundle end to end; the other 2D datasets share the pipeline, so one of each is enough there
PIPELINE_BUNDLES = [n for n in BUNDLE_NAMES if n.startswith("polyp_")] + ["footulcer_dbce"]
IMAGE_SIZE = 64
FAST = {"epochs": 1, "batch_size": 4, "val_batch_size": 4, "num_workers": 0, "image_size": IMAGE_SIZE, "device": "cpu"}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return write_prepared_polyp(tmp_path_factory.mktemp("polyp_data"), image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def raw_images(dataset_dir) -> Path:
    return dataset_dir.parent / "endotect" / "images"


def copy_bundle(name: str, destination: Path) -> Path:
    """The bundle alone, outside the repo (it must work next to an installed custom_losses)."""
    target = destination / name
    shutil.copytree(BUNDLES_DIR / name, target)
    return target


def run_workflow(bundle: Path, configs: list[str], **overrides) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=[str(bundle / "configs" / c) for c in configs],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        bundle_root=str(bundle),
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    set_determinism(seed=None)
    return workflow


def test_bundles_match_the_generator():
    """Regenerating changes nothing: the bundles are not hand-edited copies."""
    for name, files in GENERATED.items():
        for relative, text in files.items():
            path = BUNDLES_DIR / name / relative
            assert path.is_file(), f"{path} missing: run python scripts/make_bundles.py"
            assert path.read_text() == text, f"{path} differs from the generator: run python scripts/make_bundles.py"
    assert (BUNDLES_DIR / "README.md").read_text() == index_readme()
    on_disk = {p.name for p in BUNDLES_DIR.iterdir() if p.is_dir() and (p / "configs").is_dir()}
    assert on_disk == set(GENERATED), "a bundle folder exists that the generator does not make"


@pytest.mark.parametrize("dataset", ["polyp", "footulcer", "hippocampus"])
def test_the_bundles_of_a_dataset_differ_only_in_the_loss(dataset):
    trains = {
        name: json.loads(files["configs/train.json"])
        for name, files in GENERATED.items()
        if name.startswith(dataset + "_")
    }
    expected = {
        "polyp": ("ce", "dice", "ce_dice", "ce_linear_dice", "ce_finetune_dice", "balanced_ce", "dbce"),
        "hippocampus": ("ce", "dice", "batch_dice", "ce_dice", "ce_finetune_dice", "dbce"),
    }
    losses = expected.get(dataset, expected["polyp"])
    assert sorted(trains) == sorted(f"{dataset}_{loss}" for loss in losses)
    reference = trains[f"{dataset}_ce"]
    for name, config in trains.items():
        assert "@validate#best_model_saver" in config["validate"]["handlers"]
        saver = config["validate"]["best_model_saver"]
        assert saver["save_key_metric"] and saver["key_metric_filename"] == "model.pt"
        from_epoch = saver.pop("key_metric_from_epoch", None)  # schedule bundles only
        assert from_epoch == (("$" + SELECTION_START) if "alpha_schedule" in config else None), name
        differing = {key for key in set(config) | set(reference) if config.get(key) != reference.get(key)}
        assert differing - {"checked_settings"} <= {"loss", "train", "dbce_radius", "alpha_schedule"}, (name, differing)
        extra_checks = set(config["checked_settings"]) ^ set(reference["checked_settings"])
        assert extra_checks == ({"dbce_radius"} if "dbce_radius" in config else set()), (name, extra_checks)
        handler_targets = [h["_target_"] for h in config["train"]["handlers"]]
        assert handler_targets[-len(rank0_train_handlers(DATASETS[name.split("_")[0]], {})) :] == [
            "StatsHandler",
            "TensorBoardStatsHandler",
            "custom_losses.handlers.EpochCheckpointSaver",
            "custom_losses.handlers.AtomicCheckpointSaver",
        ]
        assert handler_targets[0] == "LrScheduleHandler"


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_metadata_and_network_shapes(name):
    bundle = BUNDLES_DIR / name
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(BUNDLES_DIR / SCHEMA_FILE))
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        n=2,
        any=IMAGE_SIZE,
        device="cpu",
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", PIPELINE_BUNDLES)
def test_train_evaluate_infer_export(name, dataset_dir, raw_images, tmp_path):
    bundle = copy_bundle(name, tmp_path)
    train = run_workflow(bundle, ["train.json"], dataset_dir=str(dataset_dir), **{**FAST, "epochs": 2})
    fold_dir = bundle / "models" / "fold1"
    assert (fold_dir / "model.pt").is_file() and (fold_dir / "model_final.pt").is_file()
    trainer = train.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2 and math.isfinite(float(trainer.state.output["loss"]))
    schedule = train.parser.get("alpha_schedule")
    if schedule is not None:  # alpha of the last (second) epoch of E = 2
        expected_alpha = {"combo": 0.5, "linear": 0.0, "finetune": 0.0}[schedule]  # E = 2 ends in Dice
        assert train.parser.get_parsed_content("loss").alpha == expected_alpha

    evaluate = run_workflow(bundle, ["train.json", "evaluate.json"], dataset_dir=str(dataset_dir), **FAST)
    summary = json.loads((bundle / "eval" / "fold1" / "summary.json").read_text())
    with open(bundle / "eval" / "fold1" / "per_image.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert summary["num_images"] == len(rows) == 10
    assert summary["num_lesion"] == 6 and summary["num_lesion_free"] == 4
    assert summary["ideal_empty_share"] == pytest.approx(0.4)
    for key in ("dice_lesion", "iou_lesion", "dice_all", "predicted_empty_share", "lesion_free_fp_rate", "ece"):
        assert summary[key] is not None and 0.0 <= summary[key] <= 1.0, key
    assert len(summary["reliability"]["count"]) == 20
    # MONAI's own DiceMetric(ignore_empty=False) agrees with the handler's Dice over all images
    evaluator = evaluate.parser.get_parsed_content("validate#evaluator")
    assert evaluator.state.metrics["test_dice_all"] == pytest.approx(summary["dice_all"], abs=1e-5)

    run_workflow(bundle, ["inference.json"], input_dir=str(raw_images), image_size=IMAGE_SIZE, device="cpu")
    predictions = sorted((bundle / "predictions").glob("*_seg.png"))
    assert len(predictions) == len(list(raw_images.glob("*.jpg")))
    mask = np.asarray(Image.open(predictions[0]))
    source = Image.open(raw_images / predictions[0].name.replace("_seg.png", ".jpg"))
    assert mask.shape == (source.height, source.width) and set(np.unique(mask)) <= {0, 255}

    ckpt_export(
        net_id="network_def",
        filepath=str(bundle / "models" / "model.ts"),
        ckpt_file=str(fold_dir / "model.pt"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
    )
    scripted, meta, _ = load_net_with_metadata(str(bundle / "models" / "model.ts"))
    # a fresh network_def: the parsed one runs in the bundle's precision (bf16 on a CPU with AVX512-BF16),
    # the export in float32
    network = train.parser.get_parsed_content("network_def", instantiate=True, lazy=False)
    state = torch.load(fold_dir / "model.pt", weights_only=True)
    network.load_state_dict(state.get("model", state))
    network.eval()
    image = torch.rand(1, 3, 96, 128)
    torch.testing.assert_close(scripted(image), network(image), rtol=1e-4, atol=1e-5)
    assert meta["version"] == json.loads((bundle / "configs" / "metadata.json").read_text())["version"]


@pytest.mark.slow
def test_command_line_overrides_from_the_bundle_folder(dataset_dir, tmp_path):
    bundle = copy_bundle("polyp_dbce", tmp_path)
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json"]
    command += ["--dataset_dir", str(dataset_dir), "--fold", "3", "--epochs", "1", "--device", "cpu"]
    command += ["--batch_size", "4", "--num_workers", "0", "--image_size", str(IMAGE_SIZE), "--dbce_radius", "2"]
    result = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (bundle / "models" / "fold3" / "model.pt").is_file()
    assert "Epoch: 1/1" in result.stdout + result.stderr


@pytest.mark.slow
def test_missing_fold_and_dataset_fail_before_training(dataset_dir, tmp_path):
    bundle = copy_bundle("polyp_ce", tmp_path)
    with pytest.raises(RuntimeError) as error:
        run_workflow(bundle, ["train.json"], dataset_dir=str(dataset_dir), **{**FAST, "fold": 9})
    assert "fold 9 does not exist" in repr(error.value.__cause__) + str(error.value)
    with pytest.raises(RuntimeError) as error:
        run_workflow(bundle, ["train.json"], dataset_dir=str(tmp_path / "nowhere"), **FAST)
    assert "does not exist" in repr(error.value.__cause__) + str(error.value)
    assert not (bundle / "models").exists()


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(dataset_dir, tmp_path):
    bundle = copy_bundle("polyp_ce_dice", tmp_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    command += ["-m", "monai.bundle", "run", "--config_file", "['configs/train.json','configs/multi_gpu_train.json']"]
    command += ["--dataset_dir", str(dataset_dir), "--epochs", "1", "--batch_size", "4", "--num_workers", "0"]
    command += ["--image_size", str(IMAGE_SIZE)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (bundle / "models" / "fold1" / "model.pt").is_file()
    assert (bundle / "models" / "fold1" / "model_final.pt").is_file()
    # 16 training images, 2 ranks x batch 4: 2 iterations per rank and epoch
    assert "Epoch: 1/1, Iter: 2/2" in result.stdout + result.stderr


@pytest.mark.slow
def test_fold_ensemble_averages_fold_models(dataset_dir, tmp_path):
    bundle = copy_bundle("polyp_ce", tmp_path)
    for fold in (1, 2):
        run_workflow(bundle, ["train.json"], dataset_dir=str(dataset_dir), fold=fold, **FAST)
    configs = ["train.json", "evaluate.json", "evaluate_ensemble.json"]
    run_workflow(bundle, configs, dataset_dir=str(dataset_dir), folds=[1, 2], **FAST)
    summary = json.loads((bundle / "eval" / "ensemble" / "summary.json").read_text())
    assert summary["folds"] == [1, 2] and summary["num_images"] == 10
    with pytest.raises(RuntimeError):  # fold 3 was never trained: a clear error, no summary
        run_workflow(
            bundle, configs, dataset_dir=str(dataset_dir), folds=[1, 3], output_dir=str(tmp_path / "x"), **FAST
        )
    assert not (tmp_path / "x" / "eval").exists()


def _logged_losses(output: str) -> list[str]:
    return [line.split("train_loss: ")[1].split()[0] for line in output.splitlines() if "train_loss: " in line]


@pytest.mark.slow
def test_multi_gpu_config_on_one_process_matches_single_process(dataset_dir, tmp_path):
    """DDP wiring changes nothing: same seed and sample order give the same loss curve and weights."""
    bundle = copy_bundle("polyp_dbce", tmp_path)
    common = ["--dataset_dir", str(dataset_dir), "--epochs", "2", "--batch_size", "4", "--num_workers", "0"]
    common += ["--image_size", str(IMAGE_SIZE), "--train#dataloader#shuffle", "False"]  # sequential order in both
    single = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json"]
    single += [*common, "--device", "cpu", "--output_dir", str(tmp_path / "single")]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=1"]
    ddp += ["-m", "monai.bundle", "run", "--config_file", "['configs/train.json','configs/multi_gpu_train.json']"]
    ddp += [*common, "--train#sampler#shuffle", "False", "--output_dir", str(tmp_path / "ddp")]
    outputs = []
    for command in (single, ddp):
        result = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout + result.stderr)
    single_losses, ddp_losses = (_logged_losses(o) for o in outputs)
    assert len(single_losses) == 8 and single_losses == ddp_losses
    weights = [torch.load(tmp_path / run / "models" / "fold1" / "model_final.pt") for run in ("single", "ddp")]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
