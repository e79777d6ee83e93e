"""The 3D hippocampus bundles on synthetic NIfTI volumes: train, evaluate (volumes in ml), infer, export."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch
from monai.bundle import ckpt_export
from monai.data import MetaTensor, load_net_with_metadata

from lesion_study.bundlegen.cli import BUNDLES_DIR
from lesion_study.prepare.datasets import prepare_hippocampus
from lesion_study.synthetic import write_hippocampus_layout
from tests.test_bundles import run_workflow

# fp32: on bf16 CPUs (AVX512-BF16) these 16^3 runs, whose UNet bottleneck is 1 voxel normalised over a
# batch of 2, turned NaN in some full-suite runs under xdist and never when run alone (55 seeds tried); the
# pipeline is what is tested here, bf16 training is tested in test_precision
FAST_3D = {"epochs": 2, "batch_size": 2, "val_batch_size": 2, "num_workers": 0, "device": "cpu", "precision": "fp32"}
SPATIAL = [16, 16, 16]  # the synthetic volumes are 12x16x12; the real ones are padded to 48x64x48


@pytest.fixture(scope="module")
def hippocampus_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hippocampus")
    write_hippocampus_layout(root / "raw", n_volumes=10, shape=(12, 16, 12), seed=3)
    prepare_hippocampus(root / "raw", root / "prepared")
    return root / "prepared"


@pytest.mark.slow
# the 3D bundles differ only in the loss (test_bundles checks it); CE, batch Dice (batch statistics) and DBCE
# (3D ball dilation) cover the loss code paths end to end
@pytest.mark.parametrize("loss", ["ce", "batch_dice", "dbce"])
def test_hippocampus_bundle_end_to_end(loss, hippocampus_data, tmp_path):
    bundle = Path(shutil.copytree(BUNDLES_DIR / f"hippocampus_{loss}", tmp_path / f"hippocampus_{loss}"))
    overrides = {**FAST_3D, "spatial_size": SPATIAL, "dataset_dir": str(hippocampus_data)}
    run_workflow(bundle, ["train.json"], **overrides)
    assert (bundle / "models" / "fold1" / "model_final.pt").is_file()

    run_workflow(bundle, ["train.json", "evaluate.json"], **overrides)
    eval_dir = bundle / "eval" / "fold1"
    summary = json.loads((eval_dir / "summary.json").read_text())
    with open(eval_dir / "per_volume.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert summary["num_volumes"] == len(rows) == 2  # fold 1 of 10 volumes
    for name in ("anterior", "posterior", "whole"):
        assert 0.0 <= summary[f"{name}_dice"] <= 1.0
        limits = summary[f"{name}_bland_altman_soft"]
        assert limits["lower_limit"] <= limits["bias"] <= limits["upper_limit"]
    # true volumes in ml from the header spacing (1 mm: 1 voxel = 0.001 ml), in each volume's own grid
    datalist = json.loads((hippocampus_data / "datalist.json").read_text())
    validation = {Path(i["label"]).name: i for i in datalist["training"] if i["fold"] == 1}
    for row in rows:
        label = np.asarray(nibabel.load(hippocampus_data / validation[row["image"]]["label"]).dataobj)
        assert float(row["whole_true_ml"]) == pytest.approx((label > 0).sum() / 1000)
        assert float(row["anterior_true_ml"]) == pytest.approx((label == 1).sum() / 1000)
        for name in ("anterior", "posterior", "whole"):  # no label uncertainty: the expected volume is the label's
            assert float(row[f"{name}_expected_ml"]) == pytest.approx(float(row[f"{name}_true_ml"]))
            assert float(row[f"{name}_error_soft_expected_ml"]) == pytest.approx(float(row[f"{name}_error_soft_ml"]))
    predictions = sorted((eval_dir / "predictions").glob("*_seg.nii.gz"))
    assert len(predictions) == 2
    source = nibabel.load(hippocampus_data / validation[rows[0]["image"]]["image"])
    saved = nibabel.load(next(p for p in predictions if p.name.startswith(rows[0]["image"].split(".")[0])))
    assert saved.shape[:3] == source.shape and np.allclose(saved.affine, source.affine)
    assert set(np.unique(np.asarray(saved.dataobj))) <= {0, 1, 2}

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(hippocampus_data / validation[rows[0]["image"]]["image"], inputs / "case.nii.gz")
    run_workflow(bundle, ["inference.json"], input_dir=str(inputs), spatial_size=SPATIAL, device="cpu")
    assert nibabel.load(bundle / "predictions" / "case_seg.nii.gz").shape[:3] == source.shape

    if loss == "ce":  # TorchScript export once: the network is the same in every 3D bundle
        ckpt_export(
            net_id="network_def",
            filepath=str(bundle / "models" / "model.ts"),
            ckpt_file=str(bundle / "models" / "fold1" / "model.pt"),
            meta_file=str(bundle / "configs" / "metadata.json"),
            config_file=str(bundle / "configs" / "inference.json"),
        )
        scripted, _, _ = load_net_with_metadata(str(bundle / "models" / "model.ts"))
        volume = torch.rand(1, 1, *SPATIAL)
        assert scripted(volume).shape == (1, 3, *SPATIAL)
        assert math.isfinite(float(scripted(volume).sum()))


def training_transforms(width: float, targets: str = "sampled") -> list:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / "hippocampus_ce" / "configs" / "train.json"))
    parser["label_uncertainty_width"] = width
    parser["label_uncertainty_targets"] = targets
    return parser.get_parsed_content("train#preprocessing").transforms


def test_label_uncertainty_is_in_the_training_pipeline_only_above_width_zero():
    """At width 0 the pipeline is that of the bundles before label uncertainty existed (same transforms, so
    MONAI seeds the same random transforms alike); above, the annotation is drawn first of the random part."""
    from monai.transforms import RandAffined, Randomizable

    from custom_losses.label_uncertainty import RandLabelUncertaintyd

    plain, uncertain = training_transforms(0), training_transforms(1.5)
    assert not any(isinstance(t, RandLabelUncertaintyd) for t in plain)
    names = [type(t).__name__ for t in uncertain]
    assert names == [type(t).__name__ for t in plain[:5]] + ["RandLabelUncertaintyd"] + names[6:]
    assert [type(t) for t in uncertain[6:]] == [type(t) for t in plain[5:]]
    first_random = next(t for t in uncertain if isinstance(t, Randomizable))
    assert isinstance(first_random, RandLabelUncertaintyd) and first_random.width == 1.5
    assert isinstance(uncertain[6], RandAffined)  # before the warp: the law is the cached grid's


@pytest.mark.parametrize("bundle", ["hippocampus_dice", "hippocampus_ce_dice"])
def test_expected_targets_put_the_law_probabilities_in_place_of_the_label_and_the_dice_semimetric(bundle):
    """``label_uncertainty_targets`` ``expected``: the label becomes the law's class probabilities where
    a sampled annotation would be drawn, and the Dice terms take their soft-label (semimetric) form."""
    from monai.bundle import ConfigParser

    from custom_losses import CEDiceLoss
    from custom_losses.label_uncertainty import ExpectedLabeld, RandLabelUncertaintyd

    plain, expected = training_transforms(1.5), training_transforms(1.5, "expected")
    assert isinstance(plain[5], RandLabelUncertaintyd) and isinstance(expected[5], ExpectedLabeld)
    assert expected[5].width == 1.5 and expected[5].output_keys == ["label"]
    assert [type(t) for t in expected[6:]] == [type(t) for t in plain[6:]]
    for targets in ("sampled", "expected"):
        parser = ConfigParser()
        parser.read_config(str(BUNDLES_DIR / bundle / "configs" / "train.json"))
        parser["label_uncertainty_targets"] = targets
        loss = parser.get_parsed_content("loss")
        dice = loss.dice if isinstance(loss, CEDiceLoss) else loss
        assert dice.soft_label == (targets == "expected"), (bundle, targets)


@pytest.mark.slow
def test_hippocampus_bundle_trains_on_expected_labels(hippocampus_data, tmp_path):
    """Soft training targets go through the loss, the augmentation and the training Dice (its argmax)."""
    bundle = Path(shutil.copytree(BUNDLES_DIR / "hippocampus_dice", tmp_path / "hippocampus_dice"))
    overrides = {**FAST_3D, "epochs": 1, "spatial_size": SPATIAL, "dataset_dir": str(hippocampus_data)}
    overrides |= {"label_uncertainty_width": 1.5, "label_uncertainty_targets": "expected"}
    run_workflow(bundle, ["train.json"], **overrides)
    assert (bundle / "models" / "fold1" / "model.pt").is_file()


@pytest.mark.slow
def test_hippocampus_bundle_trains_on_uncertain_labels_and_writes_their_expected_volumes(hippocampus_data, tmp_path):
    """Width 1.5: training draws annotations; evaluation writes per volume the expected class volumes of the
    law in the training grid (padded to spatial_size), mapped back to the volume's own grid."""
    from monai.transforms import ResizeWithPadOrCrop

    from custom_losses.label_uncertainty import class_probabilities

    width = 1.5
    bundle = Path(shutil.copytree(BUNDLES_DIR / "hippocampus_ce", tmp_path / "hippocampus_ce"))
    overrides = {**FAST_3D, "epochs": 1, "spatial_size": SPATIAL, "dataset_dir": str(hippocampus_data)}
    overrides["label_uncertainty_width"] = width
    run_workflow(bundle, ["train.json"], **overrides)
    run_workflow(bundle, ["train.json", "evaluate.json"], **overrides)
    eval_dir = bundle / "eval" / "fold1"
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["label_uncertainty_width"] == width
    with open(eval_dir / "per_volume.csv") as handle:
        rows = list(csv.DictReader(handle))
    datalist = json.loads((hippocampus_data / "datalist.json").read_text())
    validation = {Path(i["label"]).name: i for i in datalist["training"] if i["fold"] == 1}
    pad = ResizeWithPadOrCrop(SPATIAL)
    for row in rows:
        label = np.asarray(nibabel.load(hippocampus_data / validation[row["image"]]["label"]).dataobj)
        padded = pad(torch.from_numpy(label[None].astype(np.float32)))
        probabilities = torch.from_numpy(class_probabilities(padded, width))
        back = pad.inverse(MetaTensor(probabilities, applied_operations=padded.applied_operations))
        assert back.shape[1:] == label.shape
        expected = {"anterior": back[1].sum(), "posterior": back[2].sum(), "whole": back[1:].sum()}
        for name, voxels in expected.items():
            assert float(row[f"{name}_expected_ml"]) == pytest.approx(float(voxels) / 1000, rel=1e-5)
            error = float(row[f"{name}_soft_ml"]) - float(voxels) / 1000
            assert float(row[f"{name}_error_soft_expected_ml"]) == pytest.approx(error, abs=1e-6)
        assert float(row["whole_expected_ml"]) > float(row["whole_true_ml"])  # dilation adds more than erosion
    assert summary["whole_error_soft_expected_ml"] == pytest.approx(
        sum(float(r["whole_error_soft_expected_ml"]) for r in rows) / len(rows)
    )
