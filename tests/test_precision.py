"""Compute precision of the bundles' networks: the ``precision`` id, bf16 on the CPU, layout, determinism."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.nets import UNet
from monai.utils import set_determinism
from torch import nn

from custom_losses import precision
from custom_losses.networks import ScriptableFlexibleUNet
from custom_losses.precision import autocast_enabled, prepare_network, resolve_precision
from lesion_study.bundlegen.cli import BUNDLES_DIR
from lesion_study.synthetic import write_prepared_polyp


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    def set_support(supported: bool) -> None:
        monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: supported)

    return set_support


def test_auto_picks_bf16_only_on_a_cpu_that_computes_it(cpu_with_bf16):
    cpu_with_bf16(True)
    assert resolve_precision("auto", "cpu") == "bf16"
    cpu_with_bf16(False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"  # asked for: emulated, but done
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32, got 'half'"):
        resolve_precision("half", "cpu")


def test_cpu_check_reads_torch_s_own_cpu_capabilities(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert precision.cpu_computes_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not precision.cpu_computes_bf16()


class DtypeProbe(nn.Module):
    """Records the dtype of the first convolution's output."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.seen: list[torch.dtype] = []
        first_conv = next(m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
        first_conv.register_forward_hook(lambda module, inputs, output: self.seen.append(output.dtype))


def small_unet_2d() -> nn.Module:
    return ScriptableFlexibleUNet(
        in_channels=3,
        out_channels=1,
        backbone="resnet10",
        pretrained=False,
        spatial_dims=2,
        decoder_channels=(32, 16, 8, 8, 8),
    )


def test_bf16_network_computes_in_bf16_and_returns_float32():
    torch.manual_seed(0)
    network = prepare_network(small_unet_2d(), "cpu", "bf16", spatial_dims=2)
    probe = DtypeProbe(network)
    output = network(torch.rand(2, 3, 32, 32))
    assert probe.seen == [torch.bfloat16]
    assert output.dtype == torch.float32
    assert autocast_enabled(network)
    assert network.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_fp32_network_is_untouched_and_state_dicts_load_both_ways():
    torch.manual_seed(0)
    reference = small_unet_2d()
    fp32 = prepare_network(small_unet_2d(), "cpu", "fp32", spatial_dims=2)
    bf16 = prepare_network(small_unet_2d(), "cpu", "bf16", spatial_dims=2)
    assert not autocast_enabled(fp32)
    probe = DtypeProbe(fp32)
    assert fp32(torch.rand(2, 3, 32, 32)).dtype == torch.float32
    assert probe.seen == [torch.float32]
    assert list(bf16.state_dict()) == list(reference.state_dict()) == list(fp32.state_dict())
    bf16.load_state_dict(reference.state_dict())
    reference.load_state_dict(bf16.state_dict())
    again = prepare_network(bf16, "cpu", "bf16", spatial_dims=2)  # not wrapped twice
    assert again.forward.forward.__self__ is bf16


def test_3d_layout_follows_the_precision():
    def unet() -> nn.Module:
        return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1)

    bf16 = prepare_network(unet(), "cpu", "bf16", spatial_dims=3)
    fp32 = prepare_network(unet(), "cpu", "fp32", spatial_dims=3)
    weight = next(p for p in bf16.parameters() if p.dim() == 5)
    assert weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert next(p for p in fp32.parameters() if p.dim() == 5).is_contiguous()
    output = bf16(torch.rand(1, 1, 8, 8, 8))
    assert output.dtype == torch.float32 and output.shape == (1, 3, 8, 8, 8)


# every config that builds a network goes through prepare_network, with the bundle's precision
NETWORK_IDS = {
    "train.json": ["network"],
    "evaluate.json": ["network"],  # 2D: the network without pretrained_encoder's weights
    "inference.json": ["network"],
    "finetune.json": ["network"],
    "evaluate_ensemble.json": ["ensemble_networks"],
    "multi_gpu_train.json": ["network#module"],
}


@pytest.mark.parametrize("bundle", ["polyp_ce", "hippocampus_ce"])
def test_every_config_prepares_its_networks_with_the_precision(bundle):
    configs = BUNDLES_DIR / bundle / "configs"
    for name, ids in NETWORK_IDS.items():
        if not (configs / name).is_file():
            continue  # 3D bundles have no ensemble config
        config = json.loads((configs / name).read_text())
        for id_ in ids:
            if name == "evaluate.json" and id_ not in config:
                continue  # 3D evaluation uses train.json's network
            value = config
            for key in id_.split("#"):
                value = value[key]
            assert "custom_losses.precision.prepare_network(" in value, (bundle, name, id_)
            assert "@precision" in value, (bundle, name, id_)
    train = json.loads((configs / "train.json").read_text())
    assert train["precision"] == "auto"
    assert "amp" not in train  # MONAI's amp autocasts on CUDA only; the network does it on every device


@pytest.mark.parametrize("setting", ["bf16", "fp32"])
def test_bundle_network_follows_the_precision_override(setting):
    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / "polyp_ce" / "configs" / "train.json"))
    parser["device"] = "cpu"
    parser["precision"] = setting
    network = parser.get_parsed_content("network")
    assert autocast_enabled(network) == (setting == "bf16")
    assert network(torch.rand(1, 3, 64, 64)).dtype == torch.float32


def per_image_metrics_of_a_bf16_run(bundle: Path, dataset: Path, run: str) -> list[dict]:
    settings = {
        "bundle_root": str(bundle),
        "dataset_dir": str(dataset),
        "output_dir": str(bundle / run),
        "precision": "bf16",
        "device": "cpu",
        "epochs": 2,
        "batch_size": 4,
        "val_batch_size": 4,
        "num_workers": 0,
        "image_size": 32,
    }
    for configs in (["train.json"], ["train.json", "evaluate.json"]):
        workflow = ConfigWorkflow(config_file=[str(bundle / "configs" / c) for c in configs], **settings)
        workflow.initialize()
        assert autocast_enabled(workflow.parser.get_parsed_content("network"))
        workflow.run()
        workflow.finalize()
    set_determinism(seed=None)
    with open(bundle / run / "eval" / "fold1" / "per_image.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_bf16_training_is_deterministic_on_the_cpu(tmp_path):
    """Two bf16 runs with the same seed give identical per-image test metrics (and the runs are really bf16)."""
    dataset = write_prepared_polyp(
        tmp_path / "data", n_train=10, n_lesion=3, n_lesion_free=1, size=(40, 36), image_size=32
    )
    bundle = Path(shutil.copytree(BUNDLES_DIR / "polyp_ce", tmp_path / "bundle"))
    first = per_image_metrics_of_a_bf16_run(bundle, dataset, "first")
    second = per_image_metrics_of_a_bf16_run(bundle, dataset, "second")
    assert len(first) == 4
    assert first == second


def test_study_refuses_an_unknown_precision(tmp_path):
    from lesion_study.study import cli as run_study

    with pytest.raises(run_study.StudyError, match="--precision must be one of auto, bf16, fp32, got 'fp16'"):
        run_study.study("demo", output_dir=str(tmp_path), precision="fp16")


@pytest.mark.slow
def test_study_records_the_precision(tiny_demo_data, tmp_path):
    """study.json, the report's settings line and each evaluation summary say what the networks computed in."""
    from lesion_study.study import cli as run_study
    from tests.conftest import TINY

    out = tmp_path / "study"
    settings = {**TINY, "image_size": 32}
    code = run_study.study(
        "demo",
        data_dir=str(tiny_demo_data),
        bundles=["ce"],
        output_dir=str(out),
        precision="fp32",
        examples=False,
        **settings,
    )
    assert code == 0
    assert json.loads((out / "study.json").read_text())["settings"]["precision"] == "fp32"
    assert "`precision=fp32`" in (out / "results.md").read_text()
    summary = json.loads((out / "runs" / "polyp_ce" / "seed0" / "eval" / "fold1" / "summary.json").read_text())
    assert summary["precision"] == "fp32"
    assert "computes in fp32 (precision fp32)" in (out / "runs" / "polyp_ce" / "seed0" / "fold1.log").read_text()
