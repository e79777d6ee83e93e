"""Galdran et al.'s recipe in the bundles (docs/galdran_recipe.md): the settings rules of its ids, the
per-iteration cosine schedule and its resume, the ImageNet normalisation in every config, the torchvision
ImageNet encoder (key mapping checked against torchvision's own ResNets), the augmentation, and a polyp bundle
run end to end with the study's galdran_cpu setting at a tiny size (train, evaluate, ensemble, inference,
export)."""

from __future__ import annotations

import ast
import json
import math
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.utils import set_determinism
from PIL import Image

from custom_losses.augment import PRESETS, BatchAugmentation, colour_jitter, preset_augmentation
from custom_losses.errors import InputError, error_line, find_input_error
from custom_losses.handlers import EVALUATED_MODEL_FILES
from custom_losses.networks import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ScriptableFlexibleUNet,
    load_encoder_weights,
    torchvision_state_dict,
)
from custom_losses.settings import SettingError, check_settings
from lesion_study.bundlegen.cli import BUNDLES_DIR
from lesion_study.bundlegen.configs import EVALUATED_FILE
from lesion_study.export import export_bundle
from lesion_study.study.plan import SETTINGS, check_overrides
from lesion_study.study.run import run_bundle
from lesion_study.synthetic import write_prepared_polyp
from tests.test_bundles import copy_bundle, run_workflow

FLEXIBLE_UNET = ("FlexibleUNet", 2, [2, 2, 2, 2, 2])
DOWNSAMPLES_32 = "(the FlexibleUNet downsamples by 2 x 2 x 2 x 2 x 2 = 32)"
BUNDLE = "polyp_dbce"  # the loss that also reads dbce_radius
TINY_SIZE = [32, 64]  # height x width: not square, as the setting's 96x128, at a size of seconds
# the study's galdran_cpu setting for polyp, made tiny (size, epochs, batch) and run on the CPU
RECIPE = {
    **SETTINGS["galdran_cpu"]["polyp"],
    "image_size": TINY_SIZE,
    "epochs": 2,
    "batch_size": 2,
    "val_batch_size": 4,
    "num_workers": 0,
    "device": "cpu",
    "resume_checkpoint_interval_s": 0,
    "seed": 0,
}


def import_torchvision():
    """torchvision, for reference implementations only (the bundles do not need it). Its CUDA build on a
    CPU-only torch cannot load its C operators, so registering their meta kernels fails at import; its
    models and transforms need none of them, so the import is retried without those registrations."""
    try:
        import torchvision
    except ImportError:
        pytest.skip("torchvision is not installed (requirements.txt lists it for these tests)")
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        register_fake = torch.library.register_fake
        torch.library.register_fake = lambda *args, **kwargs: lambda function: function
        try:
            import torchvision
        finally:
            torch.library.register_fake = register_fake
    return torchvision


# ------------------------------------------------------------------------------------------- settings rules


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("optimizer_name", "sgd", "optimizer_name must be one of adamw, nadam, got 'sgd'"),
        ("lr_schedule", "step", "lr_schedule must be one of cosine_epoch, cosine_iteration, got 'step'"),
        ("lr_min", -1e-8, "lr_min must be a number >= 0, got -1e-08"),
        ("lr_min", "tiny", "lr_min must be a number >= 0, got 'tiny'"),
        ("augmentation", "heavy", "augmentation must be one of monai, galdran, got 'heavy'"),
        ("dbce_radius", 0, "dbce_radius must be a positive integer, got 0"),
        ("dbce_radius", 2.5, "dbce_radius must be a positive integer, got 2.5"),
        ("input_normalization", "zscore", "input_normalization must be one of none, imagenet, got 'zscore'"),
        ("pretrained_encoder", "", "pretrained_encoder must be none, imagenet or the path of a torchvision ResNet"),
        ("pretrained_encoder", True, "pretrained_encoder must be none, imagenet or the path of a torchvision"),
        ("evaluation_model", "last", "evaluation_model must be one of best, final, got 'last'"),
        (
            "image_size",
            [96, 100],
            f"image_size must be a positive multiple of 32 or [height, width] of two {DOWNSAMPLES_32}, "
            "got [96, 100]: e.g. [96, 128]",
        ),
        ("image_size", [120, 160], "image_size must be a positive multiple of 32 or [height, width] of two"),
        ("image_size", [96], "image_size must be a positive multiple of 32 or [height, width] of two"),
        ("image_size", [96, 128, 32], "image_size must be a positive multiple of 32 or [height, width] of two"),
    ],
)
def test_each_recipe_setting_is_checked_and_named(name, value, expected):
    with pytest.raises(SettingError) as error:
        check_settings({"epochs": 3, name: value}, *FLEXIBLE_UNET)
    assert str(error.value).startswith(expected), str(error.value)


def test_recipe_settings_that_must_agree():
    good = {"image_size": [96, 128], "spatial_size": [96, 128], "optimizer_name": "nadam", "weight_decay": 0.0}
    good |= {"lr_schedule": "cosine_iteration", "lr_min": 1e-8, "learning_rate": 3e-4, "augmentation": "galdran"}
    good |= {"input_normalization": "imagenet", "pretrained_encoder": "/weights/resnet18.pth"}
    check_settings({**good, "evaluation_model": "final", "dbce_radius": 2}, *FLEXIBLE_UNET)
    with pytest.raises(SettingError) as error:
        check_settings({**good, "input_normalization": "none"}, *FLEXIBLE_UNET)
    assert str(error.value) == (
        "pretrained_encoder /weights/resnet18.pth needs input_normalization imagenet (torchvision's ImageNet weights "
        "expect ImageNet-normalised inputs), got input_normalization 'none'"
    )
    with pytest.raises(SettingError, match=r"^lr_min must be below learning_rate .* got lr_min 0.001 and learning"):
        check_settings({**good, "lr_min": 1e-3}, *FLEXIBLE_UNET)


def test_the_galdran_cpu_setting_is_his_recipe_and_passes_the_rules():
    for dataset in ("polyp", "footulcer"):
        setting = SETTINGS["galdran_cpu"][dataset]
        assert (setting["optimizer_name"], setting["learning_rate"], setting["weight_decay"]) == ("nadam", 3e-4, 0.0)
        assert (setting["lr_schedule"], setting["lr_min"], setting["batch_size"]) == ("cosine_iteration", 1e-8, 8)
        assert (setting["augmentation"], setting["input_normalization"]) == ("galdran", "imagenet")
        assert setting["evaluation_model"] == "final" and "pretrained_encoder" not in setting  # from scratch
        check_settings({k: v for k, v in setting.items() if k != "val_batch_size"}, *FLEXIBLE_UNET)
        names = [f"{dataset}_{loss}" for loss in ("ce", "dbce")]
        check_overrides(setting, names, BUNDLES_DIR)  # every key is an id of the bundles' configs
    assert SETTINGS["galdran_cpu"]["polyp"]["image_size"] == [96, 128]  # 3:4, his 480x640 / 5


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return write_prepared_polyp(
        tmp_path_factory.mktemp("galdran"), n_train=10, n_lesion=2, n_lesion_free=1, size=(40, 36), image_size=32
    )


def first_error_line(configs: list[str], **overrides) -> str:
    workflow = ConfigWorkflow(
        config_file=[str(BUNDLES_DIR / BUNDLE / "configs" / c) for c in configs],
        bundle_root=str(BUNDLES_DIR / BUNDLE),
        **overrides,
    )
    with pytest.raises(RuntimeError) as error:  # MONAI's "Failed to evaluate ConfigExpression"
        workflow.initialize()
    found = find_input_error(error.value)
    assert found is not None, error.value
    return error_line(found)


def test_every_config_stops_a_bad_recipe_setting_first(dataset_dir, tmp_path):
    common = {"dataset_dir": str(dataset_dir), "output_dir": str(tmp_path / "out"), "device": "cpu"}
    train, evaluate = ["train.json"], ["train.json", "evaluate.json"]
    cases = [
        (train, {"optimizer_name": "sgd"}, "error: optimizer_name must be one of adamw, nadam"),
        (train, {"pretrained_encoder": "/w.pth"}, "error: pretrained_encoder /w.pth needs input_normalization"),
        (["train.json", "multi_gpu_train.json"], {"lr_schedule": "linear"}, "error: lr_schedule must be one of"),
        (evaluate, {"evaluation_model": "last"}, "error: evaluation_model must be one of best, final"),
        ([*evaluate, "evaluate_ensemble.json"], {"image_size": [96, 100]}, "error: image_size must be a positive"),
        (["inference.json"], {"input_normalization": "yes", "input_dir": str(dataset_dir)}, "error: input_normal"),
    ]
    for configs, overrides, expected in cases:
        assert first_error_line(configs, **common, **overrides).startswith(expected), (configs, overrides)
    assert not (tmp_path / "out").exists()


def test_defaults_keep_the_bundles_recipe():
    """What a bundle run without the new ids trains: AdamW, per-epoch cosine to 0, MONAI's augmentation."""
    train = json.loads((BUNDLES_DIR / BUNDLE / "configs" / "train.json").read_text())
    assert (train["optimizer_name"], train["weight_decay"], train["lr_schedule"], train["lr_min"]) == (
        "adamw",
        1e-4,
        "cosine_epoch",
        0.0,
    )
    assert (train["augmentation"], train["input_normalization"], train["pretrained_encoder"]) == (
        "monai",
        "none",
        "none",
    )
    for name in ("evaluate.json", "inference.json"):
        assert json.loads((BUNDLES_DIR / BUNDLE / "configs" / name).read_text())["evaluation_model"] == "best"
    # the configs' file names are the export's (custom_losses.handlers.EVALUATED_MODEL_FILES)
    assert ast.literal_eval(EVALUATED_FILE.split("[@")[0]) == EVALUATED_MODEL_FILES
    parser = ConfigParser(train)
    parser["train#datalist"] = [{"image": "unused", "label": "unused"}] * 4
    parser["train#dataset"] = [0, 1, 2, 3]
    optimizer = parser.get_parsed_content("optimizer")
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["weight_decay"] == 1e-4
    scheduler = parser.get_parsed_content("lr_scheduler")
    assert type(scheduler) is torch.optim.lr_scheduler.CosineAnnealingLR and (scheduler.T_max, scheduler.eta_min) == (
        40,
        0.0,
    )
    assert parser.get_parsed_content("train#handlers#0").epoch_level  # stepped per epoch
    torch.manual_seed(0)
    today = BatchAugmentation().sample_parameters(16, 3, torch.device("cpu"))
    torch.manual_seed(0)
    preset = parser.get_parsed_content("train#augmentation").sample_parameters(16, 3, torch.device("cpu"))
    assert today.keys() == preset.keys() and all(torch.equal(today[k], preset[k]) for k in today)
    assert parser.get_parsed_content("spatial_size") == [352, 352]
    parser["image_size"] = [96, 128]
    parser.parse()
    assert parser.get_parsed_content("spatial_size") == [96, 128]


# ------------------------------------------------------------------------------------- ImageNet encoder


def torchvision_features(model, image: torch.Tensor) -> list[torch.Tensor]:
    """torchvision's ResNet up to each stage: the stem (before max pooling), then layer1 to layer4."""
    x = model.relu(model.bn1(model.conv1(image)))
    features = [x]
    x = model.maxpool(x)
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        features.append(x)
    return features


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` with random weights and batch-norm statistics (in eval mode, the statistics count)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                low = 0.5 if name.endswith(("running_var", "bn1.weight", "bn2.weight")) else -0.5
                tensor.copy_(torch.empty_like(tensor).uniform_(low, low + 1.0, generator=generator))
    return model.eval()


def unet(backbone: str, **kwargs) -> ScriptableFlexibleUNet:
    common = {"in_channels": 3, "out_channels": 1, "backbone": backbone, "pretrained": False, "spatial_dims": 2}
    return ScriptableFlexibleUNet(**common, **kwargs)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34"])
def test_encoder_feature_maps_equal_torchvisions_resnet_with_the_same_weights(backbone, tmp_path):
    torchvision = import_torchvision()
    reference = randomised(getattr(torchvision.models, backbone)(weights=None), seed=1)
    weights = tmp_path / f"{backbone}.pth"
    torch.save(reference.state_dict(), weights)

    network = load_encoder_weights(unet(backbone, torchvision_encoder=True), weights).eval()
    image = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = network.encoder(image), torchvision_features(reference, image)
    assert len(ours) == len(theirs) == 5
    for index, (mine, expected) in enumerate(zip(ours, theirs, strict=True)):
        assert mine.shape == expected.shape, index
        torch.testing.assert_close(mine, expected, rtol=1e-4, atol=1e-5, msg=f"feature map {index}")
    # the mapping is the identity without the classifier: every encoder tensor came from the file
    loaded = network.encoder.state_dict()
    assert set(loaded) == set(reference.state_dict()) - {"fc.weight", "fc.bias"}
    # and it matters: MONAI's own layout (zero-padding shortcuts) has no place for the shortcut weights
    assert len(unet(backbone).encoder.state_dict()) < len(loaded)


def test_bad_encoder_weights_are_named_in_one_line(tmp_path, monkeypatch):
    torchvision = import_torchvision()
    resnet34 = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), resnet34)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(resnet34.read_bytes()[: resnet34.stat().st_size // 2])
    network = unet("resnet18", torchvision_encoder=True)
    cases = {
        tmp_path / "missing.pth": f"pretrained_encoder {tmp_path / 'missing.pth'} does not exist",
        truncated: f"pretrained_encoder {truncated} is unreadable (truncated or not a PyTorch file): ",
        resnet34: f"pretrained_encoder {resnet34} is not a torchvision resnet18 state dict (",
    }
    for path, expected in cases.items():
        with pytest.raises(InputError) as error:
            load_encoder_weights(network, path)
        assert error_line(error.value).startswith("error: " + expected), error_line(error.value)
        assert "\n" not in error_line(error.value)
    with pytest.raises(InputError, match="network_def#backbone resnet18 or resnet34"):
        unet("resnet10", torchvision_encoder=True)
    with pytest.raises(InputError, match="not in torchvision's layout"):
        load_encoder_weights(unet("resnet18"), resnet34)

    def offline(url, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(InputError, match=r"^pretrained_encoder imagenet: cannot download https://.*resnet18-.*\.pth"):
        load_encoder_weights(network, "imagenet")
    # online: torchvision's file, as torchvision itself downloads it (same url, same cache)
    reference = randomised(torchvision.models.resnet18(weights=None), seed=3)
    urls = []
    monkeypatch.setattr(
        torch.hub, "load_state_dict_from_url", lambda url, **kw: urls.append(url) or reference.state_dict()
    )
    assert torchvision_state_dict("imagenet", "resnet18") is not None
    assert urls == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]


def test_training_starts_from_the_encoder_weights_and_refuses_them_without_normalisation(dataset_dir, tmp_path):
    torchvision = import_torchvision()
    reference = randomised(torchvision.models.resnet18(weights=None), seed=4)
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)
    configs = [str(BUNDLES_DIR / BUNDLE / "configs" / c) for c in ("train.json", "multi_gpu_train.json")]
    for config_files in (configs[:1], configs):
        parser = ConfigParser()
        parser.read_config(config_files)
        parser.update({"pretrained_encoder": str(weights), "input_normalization": "imagenet", "device": "cpu"})
        parser.parse()
        if len(config_files) == 1:
            network = parser.get_parsed_content("network")
        else:  # torchrun's DDP wrapper needs a process group: its module's expression alone
            network = parser.get_parsed_content("network#module")
        torch.testing.assert_close(
            network.encoder.layer2[0].downsample[0].weight, reference.layer2[0].downsample[0].weight
        )
    # evaluation builds the same layout without reading the file (the checkpoint replaces the weights)
    parser = ConfigParser()
    parser.read_config([str(BUNDLES_DIR / BUNDLE / "configs" / c) for c in ("train.json", "evaluate.json")])
    parser.update(
        {"pretrained_encoder": str(tmp_path / "gone.pth"), "input_normalization": "imagenet", "device": "cpu"}
    )
    parser.parse()
    assert parser.get_parsed_content("network").encoder.layer2[0].downsample is not None
    line = first_error_line(
        ["train.json"], dataset_dir=str(dataset_dir), output_dir=str(tmp_path / "out"), pretrained_encoder=str(weights)
    )
    assert line.startswith(f"error: pretrained_encoder {weights} needs input_normalization imagenet"), line


# ------------------------------------------------------------------------------------------- augmentation


def test_shift_moves_the_content_by_whole_pixels():
    augmentation = BatchAugmentation(translate_range=(0.25, 0.25))
    image, label = torch.rand(1, 3, 8, 16), (torch.rand(1, 1, 8, 16) > 0.5).float()
    parameters = {
        "flips": torch.zeros(1, 2, dtype=torch.bool),
        "angles": torch.zeros(1),
        "scales": torch.ones(1, 2),
        "shifts": torch.tensor([[1 / 8, -2 / 16]]),  # one row down, two columns left
        "intensity_factors": torch.ones(1, 3),
        "offsets": torch.zeros(1),
        "gammas": torch.ones(1),
    }
    shifted, shifted_label = augmentation.augment(image, label, parameters)
    torch.testing.assert_close(shifted[:, :, 1:, :-2], image[:, :, :-1, 2:], rtol=0, atol=1e-5)
    assert torch.equal(shifted_label[:, :, 1:, :-2], label[:, :, :-1, 2:])
    assert shifted[:, :, :1].abs().max() < 1e-6 and shifted[:, :, :, -2:].abs().max() < 1e-6  # zero padding


def test_galdran_preset_draws_one_affine_change_per_image():
    torch.manual_seed(0)
    augmentation = preset_augmentation("galdran")
    parameters = augmentation.sample_parameters(6000, 3, torch.device("cpu"))
    rotated = parameters["angles"] != 0
    scaled = (parameters["scales"] != 1).any(1)
    shifted = (parameters["shifts"] != 0).any(1)
    assert torch.equal(rotated.int() + scaled.int() + shifted.int(), torch.ones(6000, dtype=torch.int))
    for chosen in (rotated, scaled, shifted):
        assert abs(chosen.float().mean().item() - 1 / 3) < 0.03
    assert parameters["angles"].abs().max() <= math.radians(15) + 1e-6
    zoom = 1.0 / parameters["scales"][scaled]
    assert torch.equal(zoom[:, 0], zoom[:, 1]) and 0.95 - 1e-6 <= zoom.min() and zoom.max() <= 1.2 + 1e-6
    assert abs(zoom.mean().item() - 1.075) < 0.01  # U(0.95, 1.2)
    assert (parameters["shifts"][:, 0] == 0).all() and parameters["shifts"][:, 1].abs().max() <= 0.05
    assert abs(parameters["flips"].float().mean().item() - 0.5) < 0.03
    assert (parameters["gammas"] == 1).all() and (parameters["intensity_factors"] == 1).all()
    jitter = parameters["jitter_factors"]
    assert ((jitter[:, :3] >= 0.9) & (jitter[:, :3] <= 1.1)).all() and jitter[:, 3].abs().max() <= 0.01
    assert torch.equal(parameters["jitter_order"].sort(1).values, torch.arange(4).expand(6000, 4))
    assert PRESETS["galdran"]["colour_jitter"] == (0.1, 0.1, 0.1, 0.01)


def test_colour_jitter_is_torchvisions_in_each_images_order():
    functional = import_torchvision().transforms.functional
    generator = torch.Generator().manual_seed(5)
    image = torch.rand(4, 3, 12, 10, generator=generator)
    factors = torch.tensor(
        [[1.08, 0.93, 1.1, 0.01], [0.9, 1.07, 0.92, -0.01], [1.0, 1.0, 1.0, 0.0], [1.1, 1.1, 0.9, 0.3]]
    )
    order = torch.stack([torch.randperm(4, generator=generator) for _ in range(4)])
    ours = colour_jitter(image, factors, order)
    steps = [
        functional.adjust_brightness,
        functional.adjust_contrast,
        functional.adjust_saturation,
        functional.adjust_hue,
    ]
    for index in range(4):
        expected = image[index]
        for step in order[index].tolist():
            expected = steps[step](expected, float(factors[index, step]))
        torch.testing.assert_close(ours[index], expected, rtol=1e-5, atol=1e-5, msg=f"image {index}")
    assert not torch.allclose(ours[3], image[3])


# ------------------------------------------------------------------- a polyp bundle with the galdran_cpu setting


@pytest.fixture(scope="module")
def recipe_run(dataset_dir, tmp_path_factory) -> Path:
    """The study's own path for one run (scripts/run_study.py run_bundle): train, evaluate, predict examples."""
    run = tmp_path_factory.mktemp("recipe") / "runs" / BUNDLE / "seed0"
    examples = dataset_dir.parent / "endotect" / "images"
    run_bundle(str(BUNDLES_DIR / BUNDLE), str(run), str(dataset_dir), 1, json.dumps(RECIPE), examples_dir=str(examples))
    set_determinism(seed=None)
    return run


def resume_state(models: Path) -> dict:
    (checkpoint,) = models.glob("resume_checkpoint_epoch=*.pt")
    return torch.load(checkpoint, weights_only=True)


def iterations_per_epoch(dataset_dir: Path, batch_size: int) -> int:
    datalist = json.loads((dataset_dir / "datalist.json").read_text())
    train = [item for item in datalist["training"] if item["fold"] != 1]
    return math.ceil(len(train) / batch_size)


@pytest.mark.slow
def test_recipe_run_steps_the_schedule_per_iteration_down_to_lr_min(recipe_run, dataset_dir):
    models = recipe_run / "models" / "fold1"
    assert (models / "model.pt").is_file() and (models / "model_final.pt").is_file()
    state = resume_state(models)  # written after the last epoch
    steps = RECIPE["epochs"] * iterations_per_epoch(dataset_dir, RECIPE["batch_size"])
    scheduler = state["lr_scheduler"]
    assert scheduler["T_max"] == scheduler["last_epoch"] == steps > RECIPE["epochs"]  # one step per iteration
    assert scheduler["eta_min"] == RECIPE["lr_min"] and scheduler["base_lrs"] == [RECIPE["learning_rate"]]
    assert scheduler["_last_lr"][0] == pytest.approx(RECIPE["lr_min"], rel=1e-6)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(RECIPE["lr_min"], rel=1e-6)
    group = state["optimizer"]["param_groups"][0]
    assert group["weight_decay"] == 0.0 and "momentum_decay" in group  # NAdam's own parameter


@pytest.mark.slow
def test_recipe_run_resumed_after_an_epoch_ends_with_the_same_weights(recipe_run, dataset_dir, tmp_path):
    """Interrupted after epoch 1 and resumed: the per-iteration schedule continues where it was, so the run ends
    with the weights and learning rate of the uninterrupted one (CPU, same seed)."""
    bundle = copy_bundle(BUNDLE, tmp_path)
    overrides = {k: v for k, v in RECIPE.items() if k != "evaluation_model"}  # an evaluation id
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"),
        bundle_root=str(bundle),
        dataset_dir=str(dataset_dir),
        **overrides,
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: engine.terminate())
    workflow.run()
    workflow.finalize()
    set_determinism(seed=None)
    models = bundle / "models" / "fold1"
    interrupted = resume_state(models)
    iterations = iterations_per_epoch(dataset_dir, RECIPE["batch_size"])
    assert interrupted["trainer"]["iteration"] == interrupted["lr_scheduler"]["last_epoch"] == iterations
    assert interrupted["optimizer"]["param_groups"][0]["lr"] > 1e-4  # mid-cycle: (3e-4 + 1e-8) / 2

    run_workflow(bundle, ["train.json"], dataset_dir=str(dataset_dir), resume=True, **overrides)
    resumed, uninterrupted = resume_state(models), resume_state(recipe_run / "models" / "fold1")
    assert resumed["trainer"]["iteration"] == 2 * iterations
    assert resumed["lr_scheduler"] == uninterrupted["lr_scheduler"]
    final = torch.load(models / "model_final.pt", weights_only=True)
    reference = torch.load(recipe_run / "models" / "fold1" / "model_final.pt", weights_only=True)
    assert final.keys() == reference.keys()
    assert not [name for name in final if not torch.equal(final[name], reference[name])]


@pytest.mark.slow
def test_recipe_run_evaluates_infers_ensembles_and_exports_its_last_model(recipe_run, dataset_dir, tmp_path):
    models = recipe_run / "models" / "fold1"
    summary = json.loads((recipe_run / "eval" / "fold1" / "summary.json").read_text())
    assert summary["checkpoint"] == str(models / "model_final.pt") and summary["num_images"] == 3
    # the study's example predictions, at each input's own size
    examples = dataset_dir.parent / "endotect" / "images"
    for source in sorted(examples.glob("*.jpg")):
        mask = np.asarray(Image.open(recipe_run / "examples" / "fold1" / f"{source.stem}_seg.png"))
        assert mask.shape == Image.open(source).size[::-1] and set(np.unique(mask)) <= {0, 255}
    # the fold ensemble reads the last models too: a second "fold" that has only fold 1's model_final.pt (no
    # model.pt to read by mistake), so the ensemble of the two is fold 1's model
    (recipe_run / "models" / "fold2").mkdir()
    shutil.copy(models / "model_final.pt", recipe_run / "models" / "fold2" / "model_final.pt")
    run_bundle(
        str(BUNDLES_DIR / BUNDLE), str(recipe_run), str(dataset_dir), 0, json.dumps(RECIPE), ensemble_folds="[1, 2]"
    )
    set_determinism(seed=None)
    ensemble = json.loads((recipe_run / "eval" / "ensemble" / "summary.json").read_text())
    assert ensemble["evaluation_model"] == "final" and ensemble["folds"] == [1, 2]
    assert ensemble["dice_all"] == pytest.approx(summary["dice_all"]) and ensemble["ece"] == pytest.approx(
        summary["ece"]
    )

    # export: the last model, the 32x64 input shape, normalisation inside the TorchScript model
    zip_path = export_bundle(BUNDLE, fold=1, output_dir=str(tmp_path / "dist"), run_dir=str(recipe_run))
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp_path / "unzipped")
    exported = tmp_path / "unzipped" / BUNDLE
    meta = json.loads((exported / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == TINY_SIZE
    assert meta["network_data_format"]["inputs"]["image"]["value_range"] == [0, 1]
    shipped = torch.load(exported / "models" / "model.pt", weights_only=True)
    final = torch.load(models / "model_final.pt", weights_only=True)
    assert all(torch.equal(shipped[name], final[name]) for name in final)
    inference = json.loads((exported / "configs" / "inference.json").read_text())
    assert (inference["image_size"], inference["input_normalization"]) == (TINY_SIZE, "imagenet")
    assert "last epoch's model of fold 1" in (exported / "docs" / "README.md").read_text()
    scripted = torch.jit.load(str(exported / "models" / "model.ts"), map_location="cpu")
    network = unet("resnet18", input_normalization="imagenet")
    network.load_state_dict(final)
    image = torch.rand(1, 3, *TINY_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(scripted(image), network.eval()(image), rtol=1e-4, atol=1e-5)


def parsed(configs: list[str], run: Path, dataset_dir: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLES_DIR / BUNDLE / "configs" / c) for c in configs])
    ids = {"bundle_root": str(BUNDLES_DIR / BUNDLE), "output_dir": str(run), "dataset_dir": str(dataset_dir)}
    parser.update({**ids, **{k: v for k, v in RECIPE.items() if k in parser.config}, **overrides})
    parser.parse()
    return parser


@pytest.mark.slow
def test_imagenet_normalisation_is_the_same_in_every_config(recipe_run, dataset_dir):
    """Train, evaluate, the fold ensemble and inference build the network that normalises its [0, 1] input
    with ImageNet's statistics: with the trained weights they give one output, the output of the same weights
    on inputs normalised by hand, and not the output on unnormalised inputs."""
    final = torch.load(recipe_run / "models" / "fold1" / "model_final.pt", weights_only=True)
    networks = {}
    fp32 = {"precision": "fp32"}  # the normalisation, not bf16 rounding (auto is bf16 on an AVX512-BF16 CPU)
    for name, configs in {"train": ["train.json"], "evaluate": ["train.json", "evaluate.json"]}.items():
        networks[name] = parsed(configs, recipe_run, dataset_dir, **fp32).get_parsed_content("network")
    networks["inference"] = parsed(["inference.json"], recipe_run, dataset_dir, **fp32).get_parsed_content("network")
    for network in networks.values():
        network.load_state_dict(final)
    ensemble_configs = ["train.json", "evaluate.json", "evaluate_ensemble.json"]
    ensemble = parsed(ensemble_configs, recipe_run, dataset_dir, folds=[1], **fp32)
    networks["ensemble"] = ensemble.get_parsed_content("ensemble_networks")[0]
    image = torch.rand(2, 3, *TINY_SIZE)
    with torch.no_grad():
        outputs = {name: network.eval()(image) for name, network in networks.items()}
        plain = unet("resnet18")
        plain.load_state_dict(final)
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        by_hand, unnormalised = plain.eval()((image - mean) / std), plain(image)
    for name, output in outputs.items():
        torch.testing.assert_close(output, by_hand, rtol=1e-4, atol=1e-5, msg=name)
        assert not torch.allclose(output, unnormalised, atol=1e-3), name
