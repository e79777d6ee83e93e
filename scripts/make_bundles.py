"""Generate every bundle of the collection from one source: the losses x the datasets below.

    python scripts/make_bundles.py                # (re)write bundles/<dataset>_<loss>/
    python scripts/make_bundles.py --check        # exit 1 if a generated file differs from the repo's

Bundles differ only in their loss (and its schedule handler); everything else comes from the dataset
spec. Adding a loss is one entry in ``LOSSES``; adding a 2D dataset is one ``DatasetSpec``.
The measured results in each bundle's docs come from ``bundles/results/<dataset>.json`` when present.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO / "bundles"
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
SCHEMA_FILE = "meta_schema_20240725.json"  # kept in bundles/: verify_metadata cannot download it offline

# Versions every bundle records (requirements.txt pins the first three; numpy is the tested one).
MONAI_VERSION = "1.6.1"
PYTORCH_VERSION = "2.13.0"
IGNITE_VERSION = "0.5.5"
NUMPY_VERSION = "2.4.6"
CUSTOM_LOSSES_VERSION = "0.1.0"
BUNDLE_VERSION = "0.1.0"

REFERENCES = {
    "galdran": "Galdran A, Carneiro G, Gonzalez Ballester MA. On the Optimal Combination of Cross-Entropy "
    "and Soft Dice Losses for Lesion Segmentation with Out-of-Distribution Robustness. DFU Challenge "
    "2022 (MICCAI), arXiv:2209.06078",
    "bertels": "Bertels J, Robben D, Vandermeulen D, Suetens P. Optimization with soft Dice can lead to a "
    "volumetric bias in image segmentation. Medical Image Analysis 2021",
    "dbce": "Hosseini SM, Soleymani Baghshah M. Dilated Balanced Cross Entropy Loss for Medical Image "
    "Segmentation. arXiv:2412.06045, 2024",
    "kvasir": "Jha D et al. Kvasir-SEG: A Segmented Polyp Dataset. MMM 2020",
    "hyperkvasir": "Borgli H et al. HyperKvasir, a comprehensive multi-class image and video dataset for "
    "gastrointestinal endoscopy. Scientific Data 2020",
    "fuseg": "Wang C et al. Fully automatic wound segmentation with deep convolutional neural networks. "
    "Scientific Reports 2020 (FUSeg: Foot Ulcer Segmentation Challenge, MICCAI 2021)",
    "decathlon": "Antonelli M et al. The Medical Segmentation Decathlon. Nature Communications 2022",
    "flexunet": "He K et al. Deep Residual Learning for Image Recognition. CVPR 2016 (ResNet encoder of "
    "MONAI's FlexibleUNet)",
}


@dataclass(frozen=True)
class LossSpec:
    """One loss: its config, an optional alpha schedule, and how the docs describe it."""

    title: str
    config: dict
    description: str
    schedule: str | None = None
    references: tuple[str, ...] = ("galdran",)


LOSSES: dict[str, LossSpec] = {
    "ce": LossSpec(
        "Cross-entropy",
        {"_target_": "custom_losses.CrossEntropyLoss"},
        "Cross-entropy (binary with logits for one output channel, softmax otherwise), averaged over all pixels.",
        references=("galdran", "bertels"),
    ),
    "dice": LossSpec(
        "Soft Dice",
        {"_target_": "custom_losses.SoftDiceLoss", "batch": False, "smooth_nr": 0.0, "smooth_dr": 0.0, "eps": 1e-7},
        "Soft Dice per image (`1 - dice`, no smoothing, denominator clamped at 1e-7), averaged over the batch.",
        references=("galdran", "bertels"),
    ),
    "batch_dice": LossSpec(
        "Batch soft Dice",
        {"_target_": "custom_losses.SoftDiceLoss", "batch": True, "smooth_nr": 0.0, "smooth_dr": 0.0, "eps": 1e-7},
        "Soft Dice summed over the whole batch before the ratio (nnU-Net's batch Dice), foreground classes only.",
        references=("bertels",),
    ),
    "ce_dice": LossSpec(
        "CE + Dice",
        {"_target_": "custom_losses.CEDiceLoss", "alpha": 0.5},
        "`0.5 * CE + 0.5 * soft Dice` for the whole training.",
        schedule="combo",
    ),
    "ce_linear_dice": LossSpec(
        "Linear CE to Dice",
        {"_target_": "custom_losses.CEDiceLoss", "alpha": 1.0},
        "`alpha * CE + (1 - alpha) * soft Dice` with `alpha = 1 - e / (E - 1)`: pure CE at the first epoch, "
        "pure Dice at the last.",
        schedule="linear",
    ),
    "ce_finetune_dice": LossSpec(
        "CE then Dice fine-tuning",
        {"_target_": "custom_losses.CEDiceLoss", "alpha": 1.0},
        "CE while `e <= 0.9 E`, then soft Dice for the last ~10% of the epochs.",
        schedule="finetune",
    ),
    "balanced_ce": LossSpec(
        "Balanced CE",
        {"_target_": "custom_losses.BalancedCrossEntropyLoss"},
        "Class-balanced CE: per image, class `c` with `n_c` of `N` pixels weighted `N / (K n_c)`.",
        references=("dbce",),
    ),
    "dbce": LossSpec(
        "Dilated balanced CE",
        {"_target_": "custom_losses.DilatedBalancedCrossEntropyLoss", "radius": "@dbce_radius"},
        "Balanced CE over regions made of each lesion and its dilation by a disk of radius `dbce_radius` "
        "(overridable), so the high lesion weight also covers a band of background around each lesion.",
        references=("dbce",),
    ),
}


@dataclass(frozen=True)
class DatasetSpec:
    """A 2D RGB lesion dataset: data, network, sizes, training defaults and the text of the docs."""

    name: str
    title: str
    task: str
    image_size: int
    data_source: str
    train_data: str
    test_data: str
    prepare_command: str
    data_license: str
    references: tuple[str, ...]
    modality: str
    kind: str = "rgb2d"  # "rgb2d": RGB PNG/JPEG, FlexibleUNet, 1 sigmoid channel; "mri3d": NIfTI, 3D UNet, softmax
    losses: tuple[str, ...] = ("ce", "dice", "ce_dice", "ce_linear_dice", "ce_finetune_dice", "balanced_ce", "dbce")
    class_names: tuple[tuple[int, str], ...] = ((1, "lesion"),)
    spatial_size_3d: tuple[int, int, int] = (48, 64, 48)
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 3e-4
    dbce_radius: int = 5
    backbone: str = "resnet18"
    extra_defaults: dict = field(default_factory=dict)


POLYP = DatasetSpec(
    name="polyp",
    title="Polyp segmentation in colonoscopy",
    task="Binary segmentation of polyps in colonoscopy frames",
    image_size=352,
    data_source="Training: Kvasir-SEG (1000 frames with polyps, https://datasets.simula.no/kvasir-seg/). "
    "Test: EndoTect 2021 test set, 200 polyp frames plus 20 lesion-free ulcerative-colitis frames from "
    "HyperKvasir (https://datasets.simula.no/hyper-kvasir/). Prepared with scripts/prepare_data.py.",
    train_data="Kvasir-SEG, 1000 frames that all contain a polyp, split into 5 folds of 200 (fixed seed); "
    "training uses 4 folds, validation the fifth",
    test_data="EndoTect 2021 test: 200 polyp frames (in distribution) + 20 lesion-free ulcerative-colitis "
    "frames (out of distribution: the model never saw an image without a lesion)",
    prepare_command="python scripts/prepare_data.py polyp --kvasir_dir=KVASIR --endotect_dir=ENDOTECT "
    "--output_dir=DATA/polyp --size=352",
    data_license="Kvasir-SEG (Simula Research Laboratory) may be used for research and educational purposes "
    "only; cite Jha et al., Kvasir-SEG: A Segmented Polyp Dataset, MMM 2020. The EndoTect 2021 test frames "
    "and the HyperKvasir ulcerative-colitis frames are distributed by Simula under the HyperKvasir terms; "
    "cite Borgli et al., Scientific Data 2020. The binding terms are those on "
    "https://datasets.simula.no/kvasir-seg/ and https://datasets.simula.no/hyper-kvasir/. No data is "
    "distributed with this bundle.",
    references=("kvasir", "hyperkvasir", "flexunet"),
    modality="endoscopy (RGB)",
)

FOOTULCER = DatasetSpec(
    name="footulcer",
    title="Foot ulcer segmentation in photographs",
    task="Binary segmentation of diabetic foot ulcers (wounds) in photographs",
    image_size=512,
    data_source="FUSeg 2021, Foot Ulcer Segmentation Challenge (https://github.com/uwm-bigdata/wound-segmentation): "
    "810 training and 200 validation photographs, 512x512. Prepared with scripts/prepare_data.py.",
    train_data="the 791 FUSeg training photographs that contain a wound, split into 5 folds (fixed seed); the "
    "19 wound-free training photographs are held out for the test set",
    test_data="the 195 FUSeg validation photographs with a wound (in distribution) + the 24 wound-free "
    "photographs (19 from training, 5 from validation; out of distribution). Wounds cover about 1.3% of the "
    "pixels",
    prepare_command="python scripts/prepare_data.py footulcer --fuseg_dir=FUSEG --output_dir=DATA/footulcer --size=512",
    data_license="FUSeg 2021 (Foot Ulcer Segmentation Challenge, MICCAI 2021, University of Wisconsin-Milwaukee "
    "and AZH Wound Center) is provided for research use; cite Wang et al., Fully automatic wound segmentation "
    "with deep convolutional neural networks, Scientific Reports 2020, and the FUSeg challenge. The binding "
    "terms are those of https://github.com/uwm-bigdata/wound-segmentation. No data is distributed with this "
    "bundle.",
    references=("fuseg", "flexunet"),
    modality="photograph (RGB)",
)

HIPPOCAMPUS = DatasetSpec(
    name="hippocampus",
    title="Hippocampus segmentation in MRI",
    task="3D segmentation of the anterior and posterior hippocampus in T1 MRI, with volumes in ml",
    image_size=48,
    data_source="Medical Segmentation Decathlon Task04 Hippocampus (http://medicaldecathlon.com/): 260 "
    "labelled T1 MRI crops of about 35x51x35 voxels at 1 mm. Prepared with scripts/prepare_data.py.",
    train_data="the 260 labelled volumes, 5 folds of 52 (fixed seed); training uses 4 folds",
    test_data="the held-out fold (cross-validation: the Decathlon test labels are not public)",
    prepare_command="python scripts/prepare_data.py hippocampus --hippocampus_dir=TASK04 --output_dir=DATA/hippocampus",
    data_license="Medical Segmentation Decathlon, Task04 Hippocampus: CC-BY-SA 4.0; cite Antonelli et al., "
    "The Medical Segmentation Decathlon, Nature Communications 2022, and Simpson et al., arXiv:1902.09063. "
    "No data is distributed with this bundle.",
    references=("decathlon",),
    modality="MRI (T1)",
    kind="mri3d",
    losses=("ce", "dice", "batch_dice", "ce_dice", "ce_finetune_dice", "dbce"),
    class_names=((1, "anterior"), (2, "posterior")),
    epochs=100,
    batch_size=16,
    learning_rate=1e-3,
    dbce_radius=2,
)

DATASETS: dict[str, DatasetSpec] = {"polyp": POLYP, "footulcer": FOOTULCER, "hippocampus": HIPPOCAMPUS}

# StatsHandler, TensorBoardStatsHandler, EpochCheckpointSaver, final CheckpointSaver: last in train#handlers
RANK0_TRAIN_HANDLERS = 4


def expr(text: str) -> str:
    """A MONAI config expression."""
    return "$" + text


def from_engine(keys: list[str], first: bool = False) -> str:
    return expr(f"monai.handlers.from_engine({keys!r}{', first=True' if first else ''})")


def decollates(spec: DatasetSpec) -> bool:
    """Whether the training engines split batches into items (3D); 2D post-processes whole batches, which
    saves about 11 ms of Python per batch of 16 (measured on CPU: benchmarks/throughput.py, README)."""
    return spec.kind == "mri3d"


def loss_output(spec: DatasetSpec) -> str:
    """The training loss from ``engine.state.output``: a list of items, or one dict of batch tensors."""
    return from_engine(["loss"], True) if decollates(spec) else expr("lambda output: output['loss']")


# ------------------------------------------------------------------------------------------- configs


def load_transforms_3d() -> list[dict]:
    """Deterministic 3D part: read NIfTI, z-score the image per volume, pad/crop to ``spatial_size``."""
    return [
        {"_target_": "LoadImaged", "keys": ["image", "label"], "reader": "NibabelReader", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": ["image", "label"]},
        {"_target_": "NormalizeIntensityd", "keys": "image"},
        {"_target_": "ResizeWithPadOrCropd", "keys": ["image", "label"], "spatial_size": "@spatial_size"},
        {"_target_": "EnsureTyped", "keys": ["image", "label"], "dtype": expr("torch.float32")},
    ]


def augmentations_3d() -> list[dict]:
    """Small rotations and scaling, intensity jitter; no flips (they would swap anterior and posterior)."""
    keys = ["image", "label"]
    return [
        {
            "_target_": "RandAffined",
            "keys": keys,
            "prob": 0.5,
            "rotate_range": [0.15, 0.15, 0.15],
            "scale_range": [0.1, 0.1, 0.1],
            "mode": ["bilinear", "nearest"],
            "padding_mode": "zeros",
        },
        {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.1, "prob": 0.5},
        {"_target_": "RandShiftIntensityd", "keys": "image", "offsets": 0.1, "prob": 0.5},
        {"_target_": "RandGaussianNoised", "keys": "image", "std": 0.05, "prob": 0.3},
    ]


def load_transforms(spec: DatasetSpec) -> list[dict]:
    """Deterministic part: read, scale to [0, 1], binarize the mask at > 127, resize. Cached by CacheDataset."""
    if spec.kind == "mri3d":
        return load_transforms_3d()
    return [
        {
            "_target_": "LoadImaged",
            "keys": "image",
            "reader": "PILReader",
            "converter": expr("lambda image: image.convert('RGB')"),
            "image_only": True,
        },
        {
            "_target_": "LoadImaged",
            "keys": "label",
            "reader": "PILReader",
            "converter": expr("lambda image: image.convert('L')"),
            "image_only": True,
        },
        {"_target_": "EnsureChannelFirstd", "keys": ["image", "label"]},
        {
            "_target_": "ScaleIntensityRanged",
            "keys": "image",
            "a_min": 0.0,
            "a_max": 255.0,
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        },
        {"_target_": "AsDiscreted", "keys": "label", "threshold": 127.5},
        {
            "_target_": "Resized",
            "keys": ["image", "label"],
            "spatial_size": "@spatial_size",
            "mode": ["area", "nearest"],
        },
        {"_target_": "EnsureTyped", "keys": ["image", "label"], "dtype": expr("torch.float32")},
    ]


def batch_augmentation() -> dict:
    """2D random part, on the whole batch on the device: the distributions of MONAI's RandFlipd (each axis),
    RandAffined (rotation, scale), RandScaleIntensityd (per channel), RandShiftIntensityd, RandAdjustContrastd."""
    return {
        "_target_": "custom_losses.augment.BatchAugmentation",
        "flip_prob": 0.5,
        "affine_prob": 0.5,
        "rotate_range": 0.5,
        "scale_range": 0.2,
        "intensity_prob": 0.5,
        "scale_intensity": 0.15,
        "shift_intensity": 0.1,
        "gamma": [0.7, 1.5],
    }


def to_device(track_meta: bool) -> dict:
    """Last cached transform of a 2D pipeline: the cache lives on the training device."""
    return {"_target_": "EnsureTyped", "keys": ["image", "label"], "device": "@device", "track_meta": track_meta}


def common_config(spec: DatasetSpec) -> dict:
    """Ids shared by train, evaluate and inference: paths, device, network."""
    return {
        "imports": ["$import copy", "$import os", "$import torch", "$import monai", "$import custom_losses"],
        "bundle_root": ".",
        "output_dir": "@bundle_root",
        "fold": 1,
        "ckpt_dir": expr("os.path.join(@output_dir, 'models', 'fold' + str(@fold))"),
        "device": expr("torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"),
        "amp": expr("torch.device(@device).type == 'cuda'"),
        "num_classes": 1 + len(spec.class_names),  # background included
        "class_names": {str(index): name for index, name in spec.class_names},
        **spatial_size_and_network(spec),
        "memory_format": expr("torch.contiguous_format" if spec.kind == "mri3d" else "torch.channels_last"),
        "network": expr("@network_def.to(@device, memory_format=@memory_format)"),
    }


def spatial_size_and_network(spec: DatasetSpec) -> dict:
    if spec.kind == "mri3d":
        return {
            "spatial_size": list(spec.spatial_size_3d),
            "network_def": {
                "_target_": "monai.networks.nets.UNet",
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": "@num_classes",
                "channels": [16, 32, 64, 128, 256],
                "strides": [2, 2, 2, 2],
                "num_res_units": 2,
                "norm": "batch",
            },
        }
    return {
        "image_size": spec.image_size,
        "spatial_size": expr("[@image_size, @image_size]"),
        "network_def": {
            "_target_": "custom_losses.networks.ScriptableFlexibleUNet",
            "in_channels": 3,
            "out_channels": 1,
            "backbone": spec.backbone,
            "pretrained": False,
            "spatial_dims": 2,
        },
    }


def hard_postprocessing(spec: DatasetSpec) -> dict:
    """Prediction (and label) in the form MONAI's Dice metric takes: binary, or one-hot for softmax."""
    if spec.kind == "mri3d":
        transforms = [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {
                "_target_": "AsDiscreted",
                "keys": ["pred", "label"],
                "argmax": [True, False],
                "to_onehot": "$[@num_classes, @num_classes]",
            },
        ]
    else:
        transforms = [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
        ]
    return {"_target_": "Compose", "transforms": transforms}


def dice_metric(spec: DatasetSpec) -> dict:
    return {
        "_target_": "MeanDice",
        "include_background": spec.kind != "mri3d",  # one sigmoid channel is the lesion itself
        "output_transform": from_engine(["pred", "label"]),
    }


def train_config(spec: DatasetSpec, loss_name: str) -> dict:
    loss = LOSSES[loss_name]
    config = common_config(spec)
    config.update(
        {
            "dataset_dir": f"/workspace/data/{spec.name}",
            "datalist_file": expr("os.path.join(@dataset_dir, 'datalist.json')"),
            "log_dir": expr("os.path.join(@output_dir, 'logs', 'fold' + str(@fold))"),
            "seed": 0,
            "epochs": spec.epochs,
            "batch_size": spec.batch_size,
            "val_batch_size": spec.batch_size,
            "num_workers": 4,
            "cache_rate": 1.0,
            "cudnn_benchmark": True,
            "learning_rate": spec.learning_rate,
            "weight_decay": 1e-4,
            "val_interval": 1,
            "resume": False,
            "resume_checkpoint_interval_s": 60,
            **({"dbce_radius": spec.dbce_radius} if loss_name == "dbce" else {}),
            **({"alpha_schedule": loss.schedule} if loss.schedule else {}),
            **spec.extra_defaults,
            "loss": copy.deepcopy(loss.config),
            "optimizer": {
                "_target_": "torch.optim.AdamW",
                "params": expr("@network.parameters()"),
                "lr": "@learning_rate",
                "weight_decay": "@weight_decay",
            },
            "lr_scheduler": {
                "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
                "optimizer": "@optimizer",
                "T_max": "@epochs",
            },
        }
    )
    post = hard_postprocessing(spec)
    # Schedulers first; the last RANK0_TRAIN_HANDLERS (logging, checkpoints) run on rank 0 only under DDP.
    training_state = {"model": "@network", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler"}
    handlers = [{"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": True}]
    if loss.schedule:
        handlers.append(
            {
                "_target_": "custom_losses.alpha_scheduler",
                "loss": "@loss",
                "schedule": "@alpha_schedule",
                "epochs": "@epochs",
            }
        )
    handlers += [
        {
            "_target_": "custom_losses.handlers.ResumeFromLatestCheckpoint",
            "enabled": "@resume",
            "ckpt_dir": "@ckpt_dir",
            "load_dict": training_state,
            "map_location": "@device",
        },
        {"_target_": "custom_losses.handlers.StopOnNonFiniteLoss", "ckpt_dir": "@ckpt_dir"},
        {
            "_target_": "ValidationHandler",
            "validator": "@validate#evaluator",
            "epoch_level": True,
            "interval": "@val_interval",
        },
        {"_target_": "StatsHandler", "tag_name": "train_loss", "output_transform": loss_output(spec)},
        {
            "_target_": "TensorBoardStatsHandler",
            "log_dir": "@log_dir",
            "tag_name": "train_loss",
            "output_transform": loss_output(spec),
        },
        {
            "_target_": "custom_losses.handlers.EpochCheckpointSaver",
            "save_dir": "@ckpt_dir",
            "save_dict": training_state,
            "min_interval_s": "@resume_checkpoint_interval_s",
        },
        {
            "_target_": "custom_losses.handlers.AtomicCheckpointSaver",
            "save_dir": "@ckpt_dir",
            "save_dict": {"model": "@network"},
            "save_final": True,
            "final_filename": "model_final.pt",
        },
    ]
    config["train"] = {
        "datalist": expr(
            "custom_losses.data.fold_split(@datalist_file, @dataset_dir, @fold, 'train', num_classes=@num_classes)"
        ),
        **train_data_pipeline(spec),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": post,
        "handlers": handlers,
        "key_metric": {"train_mean_dice": dice_metric(spec)},
        "trainer": {
            "_target_": "SupervisedTrainer",
            "device": "@device",
            "max_epochs": "@epochs",
            "train_data_loader": "@train#dataloader",
            "network": "@network",
            "optimizer": "@optimizer",
            "loss_function": "@loss",
            "inferer": "@train#inferer",
            "postprocessing": "@train#postprocessing",
            "key_train_metric": "@train#key_metric",
            "train_handlers": "@train#handlers",
            "amp": "@amp",
            "amp_kwargs": {"dtype": expr("torch.bfloat16")},
            **({} if spec.kind == "mri3d" else {"prepare_batch": "@train#augmentation"}),
            **({} if decollates(spec) else {"decollate": False}),
        },
    }
    config["validate"] = {
        "datalist": expr(
            "custom_losses.data.fold_split(@datalist_file, @dataset_dir, @fold, 'validate', num_classes=@num_classes)"
        ),
        **validate_data_pipeline(spec),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": "%train#postprocessing",
        "handlers": [
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "TensorBoardStatsHandler", "log_dir": "@log_dir", "iteration_log": False},
            {
                "_target_": "custom_losses.handlers.AtomicCheckpointSaver",
                "save_dir": "@ckpt_dir",
                "save_dict": {"model": "@network"},
                "save_key_metric": True,
                "key_metric_filename": "model.pt",
            },
        ],
        "key_metric": {"val_mean_dice": dice_metric(spec)},
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@validate#dataloader",
            "network": "@network",
            "inferer": "@validate#inferer",
            "postprocessing": "@validate#postprocessing",
            "key_val_metric": "@validate#key_metric",
            "val_handlers": "@validate#handlers",
            "amp": "@amp",
            "amp_kwargs": {"dtype": expr("torch.bfloat16")},
            **({} if decollates(spec) else {"decollate": False}),
        },
    }
    config["initialize"] = training_initialization()
    config["run"] = [expr("@train#trainer.run()")]
    return config


# first in every ``initialize``: an input error ends the run with its one line last (custom_losses.errors)
ERROR_REPORT = expr("custom_losses.errors.install_error_report(@output_dir)")


def training_initialization() -> list[str]:
    """Report input errors in one line; seed everything; cuDNN autotuning (among deterministic algorithms)
    unless ``cudnn_benchmark`` is false."""
    return [
        ERROR_REPORT,
        expr("monai.utils.set_determinism(seed=@seed)"),
        expr("setattr(torch.backends.cudnn, 'benchmark', @cudnn_benchmark)"),
    ]


def train_data_pipeline(spec: DatasetSpec) -> dict:
    """Cached deterministic transforms, then the random part.

    3D: MONAI's per-volume random transforms in data-loader processes (small volumes). 2D: the cache holds
    the resized images on the training device, a thread assembles batches, and ``BatchAugmentation``
    augments each whole batch there (MONAI's per-image transforms on the CPU cannot keep up with a GPU).
    """
    if spec.kind == "mri3d":
        return {
            "deterministic_transforms": load_transforms(spec),
            "random_transforms": augmentations_3d(),
            "preprocessing": {
                "_target_": "Compose",
                "transforms": expr("@train#deterministic_transforms + @train#random_transforms"),
            },
            "dataset": cache_dataset("train"),
            "dataloader": data_loader("train", shuffle=True),
        }
    return {
        "deterministic_transforms": load_transforms(spec),
        "preprocessing": {
            "_target_": "Compose",
            "transforms": expr("@train#deterministic_transforms + [@train#to_device]"),
        },
        "to_device": to_device(track_meta=False),
        "augmentation": batch_augmentation(),
        "dataset": {**cache_dataset("train"), "copy_cache": False},  # augmentation never writes into the cache
        "dataloader": data_loader("train", shuffle=True, on_device=True),
    }


def validate_data_pipeline(spec: DatasetSpec) -> dict:
    """The training pipeline's deterministic transforms; cached on the device for 2D (with metadata)."""
    if spec.kind == "mri3d":
        return {
            "preprocessing": {"_target_": "Compose", "transforms": "%train#deterministic_transforms"},
            "dataset": cache_dataset("validate"),
            "dataloader": data_loader("validate", shuffle=False),
        }
    return {
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Compose", "transforms": "%train#deterministic_transforms"},
                to_device(track_meta=True),
            ],
        },
        "dataset": cache_dataset("validate"),
        "dataloader": data_loader("validate", shuffle=False, on_device=True),
    }


def cache_dataset(section: str) -> dict:
    return {
        "_target_": "CacheDataset",
        "data": f"@{section}#datalist",
        "transform": f"@{section}#preprocessing",
        "cache_rate": "@cache_rate",
        "num_workers": "@num_workers",
    }


def data_loader(section: str, shuffle: bool, on_device: bool = False) -> dict:
    """``on_device``: batches of device-resident tensors assembled in a background thread (ThreadDataLoader,
    no worker processes); otherwise a DataLoader with ``num_workers`` processes."""
    return {
        "_target_": "ThreadDataLoader" if on_device else "DataLoader",
        "dataset": f"@{section}#dataset",
        "batch_size": "@batch_size" if section == "train" else "@val_batch_size",
        "shuffle": shuffle,
        "num_workers": 0 if on_device else "@num_workers",
    }


def probability_postprocessing(pred_keys: str | list[str] = "pred") -> dict:
    """Sigmoid, keep the probability as ``prob`` (for the metrics), threshold ``pred`` at 0.5."""
    transforms = [{"_target_": "Activationsd", "keys": pred_keys, "sigmoid": True}]
    if pred_keys != "pred":
        transforms.append({"_target_": "MeanEnsembled", "keys": pred_keys, "output_key": "pred"})
    transforms += [
        {"_target_": "CopyItemsd", "keys": "pred", "names": "prob"},
        {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
    ]
    return {"_target_": "Compose", "transforms": transforms}


def test_key_metric() -> dict:
    # MONAI's MeanDice handler skips empty labels; DiceMetric(ignore_empty=False) counts lesion-free
    # frames with Galdran's convention (both empty = 1, one empty = 0).
    return {
        "test_dice_all": {
            "_target_": "IgniteMetricHandler",
            "metric_fn": {"_target_": "DiceMetric", "include_background": True, "ignore_empty": False},
            "output_transform": from_engine(["pred", "label"]),
        }
    }


def evaluate_config_3d() -> dict:
    """Merged over train.json: the held-out fold, probabilities and labels back in each volume's own space,
    per-class volumes (ml, from the header spacing) and Dice to ``eval_dir``, predictions as NIfTI."""
    return {
        "checkpoint": expr("os.path.join(@ckpt_dir, 'model.pt')"),
        "eval_dir": expr("os.path.join(@output_dir, 'eval', 'fold' + str(@fold))"),
        "validate#postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": ["pred", "label"],
                    "transform": "@validate#preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": [False, True],
                },
                {"_target_": "CopyItemsd", "keys": "pred", "names": "prob"},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": expr("os.path.join(@eval_dir, 'predictions')"),
                    "output_postfix": "seg",
                    "output_dtype": expr("numpy.uint8"),
                    "separate_folder": False,
                    "resample": False,
                },
            ],
        },
        "validate#key_metric": None,
        **fold_evaluation("VolumeMetricsWriter", {"class_names": "@class_names"}),
    }


def evaluate_config(spec: DatasetSpec) -> dict:
    """Merged over train.json: the test split through the validation pipeline, metrics to ``eval_dir``."""
    if spec.kind == "mri3d":
        return evaluate_config_3d()
    return {
        "checkpoint": expr("os.path.join(@ckpt_dir, 'model.pt')"),
        "eval_dir": expr("os.path.join(@output_dir, 'eval', 'fold' + str(@fold))"),
        "validate#datalist": expr("custom_losses.data.load_split(@datalist_file, @dataset_dir, 'test')"),
        "validate#postprocessing": probability_postprocessing(),
        "validate#key_metric": test_key_metric(),
        "validate#evaluator#decollate": True,  # the metrics writer reads one item at a time
        **fold_evaluation("LesionMetricsWriter", {"threshold": 0.5}),
    }


# loads the model of `checkpoint` before an evaluation or inference run
CHECKPOINT_LOADER = {
    "_target_": "CheckpointLoader",
    "load_path": expr("custom_losses.handlers.existing_checkpoint(@checkpoint)"),
    "load_dict": {"model": "@network"},
    "map_location": "@device",
}


def fold_evaluation(writer: str, writer_args: dict) -> dict:
    """Load the fold's best checkpoint, log, write the metrics with ``custom_losses.handlers.<writer>``."""
    return {
        "validate#handlers": [
            CHECKPOINT_LOADER,
            {"_target_": "StatsHandler", "iteration_log": False},
            {
                "_target_": f"custom_losses.handlers.{writer}",
                "output_dir": "@eval_dir",
                **writer_args,
                "num_bins": 20,
                "extra": {"fold": "@fold", "checkpoint": "@checkpoint"},
            },
        ],
        "initialize": [ERROR_REPORT, "$import numpy", expr("monai.utils.set_determinism(seed=@seed)")],
        "run": [expr("@validate#evaluator.run()")],
    }


def evaluate_ensemble_config(spec: DatasetSpec) -> dict:
    """Merged over train.json and evaluate.json: mean probability of the fold models (as Galdran et al.)."""
    return {
        "folds": [1, 2, 3, 4, 5],
        "ensemble_pred_keys": expr("['pred_fold' + str(k) for k in @folds]"),
        "ensemble_networks": expr(
            "[custom_losses.handlers.load_network_weights(copy.deepcopy(@network_def), "
            "os.path.join(@output_dir, 'models', 'fold' + str(k), 'model.pt'), @device) for k in @folds]"
        ),
        "eval_dir": expr("os.path.join(@output_dir, 'eval', 'ensemble')"),
        "validate#postprocessing": probability_postprocessing("@ensemble_pred_keys"),
        "validate#handlers": [
            {"_target_": "StatsHandler", "iteration_log": False},
            {
                "_target_": "custom_losses.handlers.LesionMetricsWriter",
                "output_dir": "@eval_dir",
                "threshold": 0.5,
                "num_bins": 20,
                "extra": {"folds": "@folds"},
            },
        ],
        "validate#evaluator": {
            "_target_": "EnsembleEvaluator",
            "device": "@device",
            "val_data_loader": "@validate#dataloader",
            "networks": "@ensemble_networks",
            "pred_keys": "@ensemble_pred_keys",
            "inferer": "@validate#inferer",
            "postprocessing": "@validate#postprocessing",
            "key_val_metric": "@validate#key_metric",
            "val_handlers": "@validate#handlers",
            "amp": "@amp",
            "amp_kwargs": {"dtype": expr("torch.bfloat16")},
        },
    }


def _inference_engine() -> dict:
    return {
        "handlers": [
            CHECKPOINT_LOADER,
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "custom_losses.inference.ManifestUpdater", "prediction_dir": "@prediction_dir"},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": "@amp",
            "amp_kwargs": {"dtype": expr("torch.bfloat16")},
        },
        "initialize": [ERROR_REPORT, expr("monai.utils.set_determinism(seed=0)")],
        "run": [expr("@evaluator.run()")],
    }


def inference_config(spec: DatasetSpec) -> dict:
    """Standalone: every image in ``input_dir`` -> its prediction in ``prediction_dir``, at the input's own size:
    a 0/255 PNG mask (2D) or a label volume with the input's affine (3D NIfTI). Every file is checked first;
    bad ones are skipped (``strict``: the run stops before predicting), all listed in ``manifest.csv``."""
    config = common_config(spec)
    if spec.kind == "mri3d":
        kind, extra = "3d", {}
        preprocessing = [
            {"_target_": "LoadImaged", "keys": "image", "reader": "NibabelReader", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "NormalizeIntensityd", "keys": "image"},
            {"_target_": "ResizeWithPadOrCropd", "keys": "image", "spatial_size": "@spatial_size"},
            {"_target_": "EnsureTyped", "keys": "image", "dtype": expr("torch.float32")},
        ]
        postprocessing = [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image"},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {
                "_target_": "SaveImaged",
                "keys": "pred",
                "output_dir": "@prediction_dir",
                "output_postfix": "seg",
                "output_dtype": expr("numpy.uint8"),
                "separate_folder": False,
                "resample": False,
                "writer": expr("custom_losses.inference.AtomicNibabelWriter"),
            },
        ]
    else:
        kind, extra = "2d", {"threshold": 0.5}
        image_loading = load_transforms(spec)[0]
        preprocessing = [
            image_loading,
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": 0.0,
                "a_max": 255.0,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            },
            {"_target_": "Resized", "keys": "image", "spatial_size": "@spatial_size", "mode": "area"},
            {"_target_": "EnsureTyped", "keys": "image", "dtype": expr("torch.float32")},
        ]
        postprocessing = [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
                "nearest_interp": False,
            },
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": "@threshold"},
            {
                "_target_": "SaveImaged",
                "keys": "pred",
                "output_dir": "@prediction_dir",
                "output_postfix": "seg",
                "output_ext": ".png",
                "output_dtype": expr("numpy.uint8"),
                "scale": 255,
                "separate_folder": False,
                "resample": False,
                "writer": expr("custom_losses.inference.AtomicPILWriter"),
            },
        ]
    config.update(
        {
            "imports": config["imports"] + ["$import numpy"],
            "input_dir": "@bundle_root",
            "prediction_dir": expr("os.path.join(@output_dir, 'predictions')"),
            "checkpoint": expr("os.path.join(@ckpt_dir, 'model.pt')"),
            **extra,
            "strict": False,
            "datalist": expr(
                f"custom_losses.inference.inference_items(@input_dir, @prediction_dir, strict=@strict, kind='{kind}')"
            ),
            "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
            "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "num_workers": 0},
            "inferer": {"_target_": "SimpleInferer"},
            "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
            **_inference_engine(),
        }
    )
    return config


def finetune_config() -> dict:
    """Merged over train.json: start from a trained checkpoint (matching tensors only), smaller learning rate."""
    return {
        "finetune_checkpoint": expr("os.path.join(@bundle_root, 'models', 'model.pt')"),
        "network": expr(
            "custom_losses.handlers.load_pretrained_weights(@network_def, @finetune_checkpoint, @device)"
            ".to(memory_format=@memory_format)"
        ),
        "learning_rate": 1e-4,
        "epochs": 20,
    }


def multi_gpu_config(num_rank0_handlers: int) -> dict:
    """Merged over train.json for ``torchrun``: DDP, DistributedSampler, NCCL on GPU and gloo on CPU."""
    return {
        "device": expr(
            "torch.device('cuda:' + os.environ['LOCAL_RANK']) if torch.cuda.is_available() else torch.device('cpu')"
        ),
        "network": {
            "_target_": "torch.nn.parallel.DistributedDataParallel",
            "module": expr("@network_def.to(@device, memory_format=@memory_format)"),
            "device_ids": expr("[@device] if torch.cuda.is_available() else None"),
        },
        "train#sampler": {
            "_target_": "DistributedSampler",
            "dataset": "@train#dataset",
            "even_divisible": True,
            "shuffle": True,
        },
        "train#dataloader#sampler": "@train#sampler",
        "train#dataloader#shuffle": False,
        "train#trainer#train_handlers": expr(
            f"@train#handlers[: -{num_rank0_handlers} if torch.distributed.get_rank() > 0 else None]"
        ),
        "validate#sampler": {
            "_target_": "DistributedSampler",
            "dataset": "@validate#dataset",
            "even_divisible": False,
            "shuffle": False,
        },
        "validate#dataloader#sampler": "@validate#sampler",
        "validate#evaluator#val_handlers": expr("None if torch.distributed.get_rank() > 0 else @validate#handlers"),
        "initialize": [
            expr(
                "torch.distributed.is_initialized() or torch.distributed.init_process_group("
                "backend='nccl' if torch.cuda.is_available() else 'gloo')"
            ),
            expr("torch.cuda.set_device(@device) if torch.cuda.is_available() else None"),
            *training_initialization(),
        ],
        "run": [expr("@train#trainer.run()")],
        "finalize": [expr("torch.distributed.is_initialized() and torch.distributed.destroy_process_group()")],
    }


LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


# ------------------------------------------------------------------------------------------- metadata and docs


def network_text(spec: DatasetSpec) -> str:
    if spec.kind == "mri3d":
        return "3D UNet (MONAI UNet, 5 levels, residual units, trained from scratch)"
    return f"FlexibleUNet ({spec.backbone} encoder, trained from scratch)"


def network_data_format(spec: DatasetSpec) -> dict:
    if spec.kind == "mri3d":
        shape = list(spec.spatial_size_3d)
        classes = {"0": "background", **{str(i): n for i, n in spec.class_names}}
        image = {"num_channels": 1, "spatial_shape": shape, "value_range": [], "channel_def": {"0": "T1 MRI"}}
        image["format"] = "magnitude"
        pred = {
            "num_channels": len(classes),
            "spatial_shape": shape,
            "channel_def": {k: f"{v} logit" for k, v in classes.items()},
        }
    else:
        shape = [spec.image_size, spec.image_size]
        image = {
            "num_channels": 3,
            "spatial_shape": shape,
            "value_range": [0, 1],
            "channel_def": {"0": "R", "1": "G", "2": "B"},
        }
        image["format"] = "magnitude"
        pred = {"num_channels": 1, "spatial_shape": shape, "channel_def": {"0": "lesion logit"}}
    return {
        "inputs": {
            "image": {"type": "image", "modality": spec.modality, "dtype": "float32", "is_patch_data": False, **image}
        },
        "outputs": {
            "pred": {
                "type": "image",
                "format": "segmentation",
                "dtype": "float32",
                "value_range": [],
                "is_patch_data": False,
                **pred,
            }
        },
    }


def metadata(spec: DatasetSpec, loss_name: str, results: dict | None) -> dict:
    loss = LOSSES[loss_name]
    is_3d = spec.kind == "mri3d"
    meta = {
        "schema": SCHEMA_URL,
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: "first version: generated by scripts/make_bundles.py"},
        "monai_version": MONAI_VERSION,
        "pytorch_version": PYTORCH_VERSION,
        "numpy_version": NUMPY_VERSION,
        "required_packages_version": {
            "pytorch-ignite": IGNITE_VERSION,
            "custom_losses": CUSTOM_LOSSES_VERSION,
            **({"nibabel": "5.4.2"} if is_3d else {"pillow": "13.0.0"}),
            "tensorboard": "2.21.0",
        },
        "name": f"{spec.title}: {loss.title}",
        "task": f"{spec.task}, trained with the {loss.title} loss",
        "description": f"{network_text(spec)} for {spec.task.lower()}, trained with {loss.title}: "
        f"{loss.description} Part of the lesion-loss collection, which trains the same network with "
        f"{len(spec.losses)} losses and compares them.",
        "authors": "lesion-loss bundles authors",
        "copyright": "Copyright (c) 2026 lesion-loss bundles authors",
        "data_source": spec.data_source,
        "data_type": "nibabel" if is_3d else "png",
        "image_classes": f"{spec.modality} volume, z-scored per volume"
        if is_3d
        else f"{spec.modality} image, intensities scaled to [0, 1]",
        "label_classes": ", ".join(f"{i}: {n}" for i, n in ((0, "background"), *spec.class_names))
        if is_3d
        else "single channel binary mask: 1 lesion, 0 background",
        "pred_classes": "one logit per class (softmax, argmax = label)"
        if is_3d
        else "single channel logit of the lesion class (sigmoid > 0.5 = lesion)",
        "intended_use": "Research on segmentation losses only. Not a medical device; not for clinical use.",
        "references": [REFERENCES[key] for key in (*loss.references, *spec.references)],
        "network_data_format": network_data_format(spec),
    }
    if results:
        meta["eval_metrics"] = results
    return meta


DOCS_2D = {
    "model": "FlexibleUNet with a {spec.backbone} encoder trained from scratch (no pretrained weights), input "
    "{spec.image_size}x{spec.image_size} RGB scaled to [0, 1], one output channel (lesion logit); random flips, "
    "rotation, scale and colour jitter.",
    "pipeline": "Data pipeline, built to keep a GPU busy: the decoded, resized images are cached once on the "
    "training device (`CacheDataset`, filled by `num_workers` threads; about 2 MB per 352x352 image, 4 MB at "
    "512x512; lower `cache_rate` to cache less); a `ThreadDataLoader` assembles batches there; "
    "`custom_losses.augment.BatchAugmentation`, the trainer's `prepare_batch` (`train#augmentation`), augments "
    "each batch on the device with parameters drawn per image from the distributions of MONAI's `RandFlipd`, "
    "`RandAffined`, `RandScaleIntensityd`, `RandShiftIntensityd` and `RandAdjustContrastd` (MONAI's per-image "
    "transforms cost about 12 ms per 352x352 image on one CPU core). The network runs channels_last and cuDNN "
    "autotunes its convolutions (`cudnn_benchmark`, default true). Training and validation post-process whole "
    "batches (`decollate` false): `engine.state.output` is one dict of batch tensors, so a handler added to "
    "`train#handlers` reads `output['loss']`.",
    "evaluate_outputs": "eval/fold1/per_image.csv and eval/fold1/summary.json (the test set)",
    "ensemble": "# ensemble of the five fold models -> eval/ensemble/\n"
    "python -m monai.bundle run \\\n"
    "    --config_file \"['configs/train.json','configs/evaluate.json','configs/evaluate_ensemble.json']\" \\\n"
    "    --dataset_dir DATA/{spec.name}\n\n",
    "inference": "segment every .jpg/.png of a folder -> predictions/<name>_seg.png at the input size",
    "size_id": "image_size",
    "unit": "pixels (a disk)",
    "checks": "an unreadable or corrupt image, a grayscale image, a mask of another size than its image, a mask "
    "whose values would all fall under the > 127 threshold",
    "evaluation": "`evaluate.json` writes, at threshold 0.5 and the prepared resolution, one CSV row per test image "
    "and a summary: Dice and IoU on lesion images; Dice over all images with Galdran's convention (both masks "
    "empty = 1, exactly one empty = 0); the share of images predicted empty (ideal: the share of lesion-free "
    "images); on lesion-free images the share with any predicted lesion (image-level false-positive rate) and "
    "the mean false-positive area; on lesion images the signed relative area error from the thresholded mask "
    "and from the sum of probabilities; the expected calibration error of the lesion probability (20 bins).",
}

DOCS_3D = {
    "model": "3D UNet (MONAI `UNet`, channels 16-256, 4 down-samplings, residual units) trained from scratch, "
    "input padded/cropped to {spec.spatial_size_3d}, intensities z-scored per volume, one output per class "
    "(softmax); random rotation, scaling and intensity jitter (no flips: they would swap anterior and "
    "posterior).",
    "pipeline": "Data pipeline: the deterministic transforms are cached (`CacheDataset`), MONAI's per-volume random "
    "transforms run in `num_workers` data-loader processes (the volumes are small).",
    "evaluate_outputs": "eval/fold1/per_volume.csv, eval/fold1/summary.json and eval/fold1/predictions/*.nii.gz "
    "(the held-out fold)",
    "ensemble": "",
    "inference": "segment every .nii/.nii.gz of a folder -> predictions/<name>_seg.nii.gz with the input's affine",
    "size_id": "spatial_size",
    "unit": "voxels (a ball)",
    "checks": "an unreadable or corrupt volume, a label of another shape than its image, a label with classes the "
    "bundle does not know",
    "evaluation": "`evaluate.json` runs the held-out fold, maps probabilities and labels back to each volume's own "
    "grid, saves the argmax labels as NIfTI with the input's affine, and writes one CSV row per volume and a "
    "summary, per class (anterior, posterior) and for the whole hippocampus: Dice of the argmax; volume in ml "
    "(voxel size from the header) of the label, of the argmax mask (hard) and of the sum of probabilities "
    "(soft); signed, absolute and relative volume errors; Bland-Altman bias and 95% limits of agreement (hard "
    "and soft); the expected calibration error of the whole-hippocampus probability (20 bins). The controlled "
    "study behind the volume-bias question (known expected volumes, CE vs per-image and batch soft Dice) is "
    "`scripts/volume_bias_study.py` in the repository, with its result in `docs/volume_bias.png`.",
}


def docs_readme(spec: DatasetSpec, loss_name: str, results_table: str) -> str:
    loss = LOSSES[loss_name]
    bundle = f"{spec.name}_{loss_name}"
    texts = DOCS_3D if spec.kind == "mri3d" else DOCS_2D
    overrides = []
    if loss_name == "dbce":
        overrides.append(
            f"- `dbce_radius` (default {spec.dbce_radius}): dilation radius in {texts['unit']}. Pick it by a "
            "sweep on fold 1 validation, one study folder per radius: `python scripts/run_study.py "
            f"{spec.name} --bundles=[dbce] --data_dir=DATA/{spec.name} --dbce_radius=R "
            f"--output_dir=study/{spec.name}_dbce_rR` for R in 1, 3, 5, 9 (sweep results: pending a GPU run)."
        )
    if loss.schedule:
        overrides.append(
            f"- `alpha_schedule` (default `{loss.schedule}`): `combo`, `linear` or `finetune`, applied by "
            "MONAI's `ParamSchedulerHandler` at the start of every epoch (stateless: right after a resume)."
        )
    loss_overrides = "\n".join(overrides)
    model = texts["model"].format(spec=spec)
    ensemble = texts["ensemble"].format(spec=spec)
    return f"""# {bundle}: {spec.title}, {loss.title}

Generated by `scripts/make_bundles.py`; edit the generator, not this file.

## Loss

**{loss.title}** (`{loss.config["_target_"]}`): {loss.description}

References: {"; ".join(REFERENCES[key] for key in loss.references)}.

## Data

- Training: {spec.train_data}.
- Test: {spec.test_data}.
- Prepare once (writes the prepared copies and `datalist.json`; checks every file first):

```bash
{spec.prepare_command}
```

Licence of the data: see `docs/data_license.txt`.

## Model and training

{model} AdamW, learning rate {spec.learning_rate} with cosine decay, batch {spec.batch_size},
{spec.epochs} epochs, bf16 autocast on GPU. The best validation checkpoint is `models/fold<k>/model.pt`,
the last one `models/fold<k>/model_final.pt`.

{texts["pipeline"]}

## Commands (from this folder, with `custom_losses` installed)

```bash
# train fold 1 (any of 1..5); every id of the config can be overridden the same way
python -m monai.bundle run --config_file configs/train.json --dataset_dir DATA/{spec.name} \\
    --fold 1 --epochs {spec.epochs}

# evaluate -> {texts["evaluate_outputs"]}
python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" \\
    --dataset_dir DATA/{spec.name} --fold 1

{ensemble}# {texts["inference"]}
python -m monai.bundle run --config_file configs/inference.json --input_dir IMAGES --fold 1

# two GPUs (DistributedDataParallel; gloo on CPU)
torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run \\
    --config_file "['configs/train.json','configs/multi_gpu_train.json']" --dataset_dir DATA/{spec.name}

# fine-tune from a trained model on your own data (matching tensors are loaded, e.g. not a new output layer)
python -m monai.bundle run --config_file "['configs/train.json','configs/finetune.json']" \\
    --dataset_dir MY_DATA --finetune_checkpoint models/fold1/model.pt --output_dir finetuned

# TorchScript export
python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/fold1/model.pt \\
    --meta_file configs/metadata.json --config_file configs/inference.json
```

Common overrides: `fold`, `epochs`, `dataset_dir`, `device` (e.g. `--device cpu`), `output_dir` (where
`models/`, `eval/` and `logs/` go), `batch_size`, `num_workers`, `{texts["size_id"]}`, `learning_rate`,
`cache_rate`, `cudnn_benchmark`.

{loss_overrides}

## Reliability

- **Input checks before training**: a missing or empty `dataset_dir`, a missing datalist, an entry whose
  file does not exist, an image without a label, {texts["checks"]}, and a fold that
  does not exist each stop the run with one line naming the file and the problem.
- **Non-finite loss**: a NaN or infinite training loss stops the run, naming epoch and iteration; the best
  model (`model.pt`) and the last resume checkpoint stay as they were and no `model_final.pt` is written.
- **Interruption**: the end of an epoch saves `models/fold<k>/resume_checkpoint_epoch=<e>.pt` (model,
  optimizer, LR scheduler, trainer state; only the last is kept) once `resume_checkpoint_interval_s`
  (default 60) seconds have passed since the last one, and after the last epoch; 0 saves every epoch (a
  155 MiB file for the 2D network, about 0.2 s to save: a fifth of a fast GPU epoch). Rerun the same
  command with `--resume True` to go on from it to the same `epochs`; loss-weight schedules depend only on
  the epoch, so they resume with it.
  The best-model tracking restarts after a resume: the first validation after it rewrites `model.pt`.
- **Determinism**: `seed` (default 0) seeds Python, NumPy, PyTorch (the 2D batch augmentation draws from it)
  and MONAI's random transforms; two CPU runs with the same seed give identical losses (tested with
  `num_workers=0`). On GPU, cuDNN autotuning and atomic additions in some backward kernels are not
  bit-reproducible; `--cudnn_benchmark False` removes the first. GPU repeatability was not measured for this
  version.
- **Outputs** (`summary.json`, `per_image.csv`, datalists) are written to a temporary file and renamed, so a
  killed run never leaves a file that looks complete.

## Evaluation

{texts["evaluation"]}

## Results

{results_table}
"""


def results_table(spec: DatasetSpec, loss_name: str, results: dict | None) -> str:
    if not results:
        return (
            "Pending: no run of this bundle on the real data has been recorded yet "
            f"(`bundles/results/{spec.name}.json` holds measured results once they exist, written by "
            "`scripts/publish_results.py`)."
        )
    rows = "\n".join(f"| {key} | {value} |" for key, value in results.items() if key != "measured_with")
    return f"Measured with: {results.get('measured_with', 'unknown')}\n\n| metric | value |\n|---|---|\n{rows}"


def dump_json(data: dict) -> str:
    return json.dumps(data, indent=4, ensure_ascii=False) + "\n"


def bundle_files(spec: DatasetSpec, loss_name: str) -> dict[str, str]:
    """Every generated file of one bundle, relative path -> text."""
    results_file = BUNDLES_DIR / "results" / f"{spec.name}.json"
    all_results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results = all_results.get(loss_name)
    return {
        "configs/metadata.json": dump_json(metadata(spec, loss_name, results)),
        "configs/train.json": dump_json(train_config(spec, loss_name)),
        "configs/evaluate.json": dump_json(evaluate_config(spec)),
        **(
            {}
            if spec.kind == "mri3d"
            else {"configs/evaluate_ensemble.json": dump_json(evaluate_ensemble_config(spec))}
        ),
        "configs/inference.json": dump_json(inference_config(spec)),
        "configs/multi_gpu_train.json": dump_json(multi_gpu_config(RANK0_TRAIN_HANDLERS)),
        "configs/finetune.json": dump_json(finetune_config()),
        "configs/logging.conf": LOGGING_CONF,
        "docs/README.md": docs_readme(spec, loss_name, results_table(spec, loss_name, results)),
        "docs/data_license.txt": spec.data_license + "\n",
        "LICENSE": (REPO / "LICENSE").read_text(),
    }


def index_readme() -> str:
    """``bundles/README.md``: every bundle with its loss, dataset, headline numbers and commands."""
    lines = [
        "# Bundles",
        "",
        "Generated by `scripts/make_bundles.py` (edit the generator, then run it). Each folder is a standard MONAI",
        "bundle; run the commands from inside it, with `custom_losses` installed (`pip install -e .` at the repo",
        "root) or from an exported zip (`scripts/export_bundle.py`), which carries its own copy.",
        "",
        "| bundle | dataset | loss | test Dice (lesion) | lesion-free FP rate | measured with |",
        "|---|---|---|---|---|---|",
    ]
    for spec in DATASETS.values():
        results_file = BUNDLES_DIR / "results" / f"{spec.name}.json"
        results = json.loads(results_file.read_text()) if results_file.is_file() else {}
        for loss_name in spec.losses:
            loss = LOSSES[loss_name]
            measured = results.get(loss_name) or {}
            dice = measured.get("dice_lesion", "pending")
            fp_rate = measured.get("lesion_free_fp_rate", "pending")
            source = measured.get("measured_with", "no real-data run yet")
            lines.append(
                f"| [{spec.name}_{loss_name}]({spec.name}_{loss_name}/docs/README.md) | {spec.title} | "
                f"{loss.title} | {dice} | {fp_rate} | {source} |"
            )
    lines += [
        "",
        "## One-line commands (from a bundle folder)",
        "",
        "```bash",
        "python -m monai.bundle run --config_file configs/train.json --dataset_dir DATA --fold 1",
        "python -m monai.bundle run --config_file \"['configs/train.json','configs/evaluate.json']\" "
        "--dataset_dir DATA",
        "python -m monai.bundle run --config_file configs/inference.json --input_dir IMAGES",
        "python -m monai.bundle run --config_file \"['configs/train.json','configs/finetune.json']\" "
        "--dataset_dir MY_DATA --finetune_checkpoint models/fold1/model.pt",
        "```",
        "",
        "All losses of a dataset at once, with a report: `python scripts/run_study.py <dataset> --data_dir DATA`.",
        "`meta_schema_20240725.json` is the Model Zoo metadata schema, kept here because `verify_metadata`",
        "cannot download it offline.",
    ]
    return "\n".join(lines) + "\n"


def all_bundles() -> dict[str, dict[str, str]]:
    return {
        f"{spec.name}_{loss_name}": bundle_files(spec, loss_name)
        for spec in DATASETS.values()
        for loss_name in spec.losses
    }


def main(check: bool = False, output_dir: str | None = None) -> None:
    """Write (or with ``--check`` compare) every bundle under ``bundles/`` (or ``output_dir``)."""
    root = Path(output_dir) if output_dir else BUNDLES_DIR
    stale = []
    for bundle, files in all_bundles().items():
        for relative, text in files.items():
            path = root / bundle / relative
            if check:
                if not path.is_file() or path.read_text() != text:
                    stale.append(str(path))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    index = root / "README.md"
    if check:
        if not index.is_file() or index.read_text() != index_readme():
            stale.append(str(index))
    else:
        index.write_text(index_readme())
    if check and stale:
        print("out of date (run python scripts/make_bundles.py):\n  " + "\n  ".join(stale), file=sys.stderr)
        sys.exit(1)
    if not check:
        print(f"wrote {len(all_bundles())} bundles to {root}")


if __name__ == "__main__":
    fire.Fire(main)
