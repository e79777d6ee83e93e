"""finetune.json: trained weights really arrive, also when the output layer changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from custom_losses.handlers import load_pretrained_weights
from custom_losses.networks import ScriptableFlexibleUNet
from lesion_study.bundlegen.cli import BUNDLES_DIR
from tests.test_bundles import FAST, dataset_dir, run_workflow  # noqa: F401  (dataset_dir is a fixture)


def finetune_workflow(bundle: Path, data: Path, checkpoint: Path, **overrides) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=[str(bundle / "configs" / "train.json"), str(bundle / "configs" / "finetune.json")],
        bundle_root=str(bundle),
        dataset_dir=str(data),
        finetune_checkpoint=str(checkpoint),
        output_dir=str(bundle / "finetuned"),
        **{**FAST, **overrides},
    )
    workflow.initialize()
    return workflow


@pytest.mark.slow
def test_finetune_starts_from_the_checkpoint(dataset_dir, tmp_path):  # noqa: F811
    bundle = Path(shutil.copytree(BUNDLES_DIR / "polyp_ce", tmp_path / "polyp_ce"))
    run_workflow(bundle, ["train.json"], dataset_dir=str(dataset_dir), **FAST)
    checkpoint = bundle / "models" / "fold1" / "model.pt"
    trained = torch.load(checkpoint, weights_only=True)

    same_head = finetune_workflow(bundle, dataset_dir, checkpoint)
    network = same_head.parser.get_parsed_content("network")
    for name, tensor in network.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], msg=name)
    assert same_head.parser.get_parsed_content("optimizer").param_groups[0]["lr"] == pytest.approx(1e-4)
    same_head.run()
    assert (bundle / "finetuned" / "models" / "fold1" / "model_final.pt").is_file()

    # two output classes (softmax) instead of one: everything but the new head comes from the checkpoint
    new_head = finetune_workflow(bundle, dataset_dir, checkpoint, **{"network_def#out_channels": 2})
    network = new_head.parser.get_parsed_content("network")
    fresh = ScriptableFlexibleUNet(3, 2, "resnet18", pretrained=False).state_dict()
    copied = [n for n, t in network.state_dict().items() if n in trained and t.shape == trained[n].shape]
    assert len(copied) == len(trained) - 2  # segmentation head weight and bias differ in shape
    for name in copied:
        torch.testing.assert_close(network.state_dict()[name], trained[name], msg=name)
    head = [n for n in fresh if n not in copied]
    assert head and all(network.state_dict()[n].shape[0] == 2 for n in head if n.endswith("weight"))


def test_finetune_rejects_a_checkpoint_that_fits_nothing(tmp_path):
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="has no tensor that fits the network"):
        load_pretrained_weights(ScriptableFlexibleUNet(3, 1, "resnet18"), tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        load_pretrained_weights(ScriptableFlexibleUNet(3, 1, "resnet18"), tmp_path / "missing.pt")
