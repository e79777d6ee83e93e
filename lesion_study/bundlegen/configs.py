"""The bundle configs: train, evaluate, evaluate_ensemble, inference, finetune, multi-GPU train, logging."""

from __future__ import annotations

import copy

from custom_losses.conventions import BUNDLE_MASK_THRESHOLD

from .specs import LOSSES, DatasetSpec


def expr(text: str) -> str:
    """A MONAI config expression."""
    return "$" + text


def from_engine(keys: list[str], first: bool = False) -> str:
    return expr(f"monai.handlers.from_engine({keys!r}{', first=True' if first else ''})")


def decollates(spec: DatasetSpec) -> bool:
    """Whether the training engines split batches into items (``Kind.decollates``)."""
    return kind_of(spec).decollates


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


# 3D ids: ``label_uncertainty_width`` (voxels; 0, the default, trains on the labels as they are) and
# ``label_uncertainty_targets``: ``sampled`` (a new annotation per use) or ``expected`` (the law's per-voxel
# class probabilities as soft labels, with the Dice terms in their semimetric form)
VOLUME_DEFAULTS = {"label_uncertainty_width": 0, "label_uncertainty_targets": "sampled"}
SOFT_LABELS = "$@label_uncertainty_targets == 'expected'"


def label_uncertainty_3d() -> dict:
    """A new annotation per use of a training volume, drawn from custom_losses.label_uncertainty's law."""
    return {
        "_target_": "custom_losses.label_uncertainty.RandLabelUncertaintyd",
        "keys": "label",
        "width": "@label_uncertainty_width",
    }


def expected_labels_3d() -> dict:
    """The law's per-voxel class probabilities in place of the label: soft training targets. (Where the
    augmentation's warp brings in voxels from outside the grid they are all zero: no CE target there.)"""
    return {
        "_target_": "custom_losses.label_uncertainty.ExpectedLabeld",
        "keys": "label",
        "output_keys": "label",
        "width": "@label_uncertainty_width",
    }


def with_soft_labels(loss_config: dict) -> dict:
    """A 3D loss config whose Dice terms take the semimetric form when training on expected labels."""
    target = loss_config["_target_"]
    if target == "custom_losses.SoftDiceLoss":
        return loss_config | {"soft_label": SOFT_LABELS}
    if target == "custom_losses.CEDiceLoss":
        return loss_config | {"dice": {"_target_": "custom_losses.SoftDiceLoss", "soft_label": SOFT_LABELS}}
    return loss_config


# In the 3D training pipeline only when the width is above 0 (sampled) or the targets are expected: otherwise
# the pipeline (and the seeds MONAI gives its random transforms, in their order) is exactly that of the
# bundles without label uncertainty.
UNCERTAIN_LABELS = (
    "([@train#expected_labels] if @label_uncertainty_targets == 'expected' "
    "else [@train#label_uncertainty] if @label_uncertainty_width > 0 else [])"
)


# 8-bit RGB image intensities to [0, 1] (training, evaluation and inference alike)
SCALE_TO_UNIT = {
    "_target_": "ScaleIntensityRanged",
    "keys": "image",
    "a_min": 0.0,
    "a_max": 255.0,
    "b_min": 0.0,
    "b_max": 1.0,
    "clip": True,
}


def load_transforms(spec: DatasetSpec) -> list[dict]:
    """The deterministic part of the pipeline, cached by CacheDataset (``Kind.load_transforms``)."""
    return kind_of(spec).load_transforms()


def load_transforms_2d() -> list[dict]:
    """Deterministic 2D part: read, scale to [0, 1], binarize the mask at > 127, resize."""
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
        SCALE_TO_UNIT,
        {"_target_": "AsDiscreted", "keys": "label", "threshold": BUNDLE_MASK_THRESHOLD},
        {
            "_target_": "Resized",
            "keys": ["image", "label"],
            "spatial_size": "@spatial_size",
            "mode": ["area", "nearest"],
        },
        {"_target_": "EnsureTyped", "keys": ["image", "label"], "dtype": expr("torch.float32")},
    ]


def batch_augmentation() -> dict:
    """2D random part, on the whole batch on the device, the parameter set ``augmentation`` names
    (custom_losses.augment.PRESETS): ``monai`` (default), the distributions of MONAI's RandFlipd (each axis),
    RandAffined (rotation, scale), RandScaleIntensityd (per channel), RandShiftIntensityd, RandAdjustContrastd;
    ``galdran``, Galdran et al.'s torchvision transforms. ``train#augmentation#<parameter>`` replaces one."""
    return {"_target_": "custom_losses.augment.preset_augmentation", "name": "@augmentation"}


def to_device(track_meta: bool) -> dict:
    """Last cached transform of a 2D pipeline: the cache lives on the training device."""
    return {"_target_": "EnsureTyped", "keys": ["image", "label"], "device": "@device", "track_meta": track_meta}


def common_config(spec: DatasetSpec) -> dict:
    """Ids shared by train, evaluate and inference: paths, device, network (2D: its input normalisation and
    encoder layout, which evaluation and inference must build as training did)."""
    return {
        "imports": ["$import copy", "$import os", "$import torch", "$import monai", "$import custom_losses"],
        "bundle_root": ".",
        "output_dir": "@bundle_root",
        "fold": 1,
        "ckpt_dir": expr("os.path.join(@output_dir, 'models', 'fold' + str(@fold))"),
        "device": expr("torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"),
        # auto: bf16 where the device computes it natively (custom_losses.precision), else fp32
        "precision": "auto",
        "num_classes": 1 + len(spec.class_names),  # background included
        "class_names": {str(index): name for index, name in spec.class_names},
        **spatial_size_and_network(spec),
        "network": expr(prepared_network("@network_def", spec)),
    }


def network_with_encoder_weights(spec: DatasetSpec) -> str:
    """The network of a training run (an expression, ``Kind.training_network``); evaluation, ensembles and
    inference load trained checkpoints instead."""
    return kind_of(spec).training_network


def prepared_network(network: str, spec: DatasetSpec) -> str:
    """``network`` on ``@device`` in its fastest layout, its forward pass in ``@precision`` (an expression)."""
    return f"custom_losses.precision.prepare_network({network}, @device, @precision, {spatial_dims(spec)})"


def spatial_dims(spec: DatasetSpec) -> int:
    return kind_of(spec).spatial_dims


def spatial_size_and_network(spec: DatasetSpec) -> dict:
    return kind_of(spec).spatial_size_and_network(spec)


def spatial_size_and_network_3d(spec: DatasetSpec) -> dict:
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


def spatial_size_and_network_2d(spec: DatasetSpec) -> dict:
    return {
        # a square side, or [height, width] (e.g. [96, 128]); spatial_size is [height, width] either way
        "image_size": spec.image_size,
        "spatial_size": expr("list(@image_size) if isinstance(@image_size, (list, tuple)) else [@image_size] * 2"),
        # none: images in [0, 1] as they come; imagenet: the network normalises them (every config alike)
        "input_normalization": "none",
        # none, imagenet (torchvision's download) or a torchvision state dict file: the encoder's ImageNet
        # weights when training starts; any other value than none also builds the encoder in torchvision's
        # layout, which evaluation and inference need to read the checkpoints
        "pretrained_encoder": "none",
        "network_def": {
            "_target_": "custom_losses.networks.ScriptableFlexibleUNet",
            "in_channels": 3,
            "out_channels": 1,
            "backbone": spec.backbone,
            "pretrained": False,
            "spatial_dims": 2,
            "input_normalization": "@input_normalization",
            "torchvision_encoder": expr("str(@pretrained_encoder) != 'none'"),
        },
    }


def hard_postprocessing(spec: DatasetSpec) -> dict:
    """Prediction (and label) in the form MONAI's Dice metric takes (``Kind.hard_postprocessing``)."""
    return {"_target_": "Compose", "transforms": kind_of(spec).hard_postprocessing}


# softmax, argmax and one-hot of prediction and label (a soft training label: its argmax)
HARD_POSTPROCESSING_3D = [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    {"_target_": "custom_losses.label_uncertainty.ClassIndicesd", "keys": "label"},
    {
        "_target_": "AsDiscreted",
        "keys": ["pred", "label"],
        "argmax": [True, False],
        "to_onehot": "$[@num_classes, @num_classes]",
    },
]
# sigmoid, threshold 0.5
HARD_POSTPROCESSING_2D = [
    {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
    {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
]


def dice_metric(spec: DatasetSpec) -> dict:
    return {
        "_target_": "MeanDice",
        "include_background": kind_of(spec).include_background,
        "output_transform": from_engine(["pred", "label"]),
    }


# the learning-rate schedule steps per epoch (cosine_epoch) or per iteration (cosine_iteration)
LR_EPOCH_LEVEL = "custom_losses.training.epoch_level(@lr_schedule)"

# CE then Dice keeps the best model of its Dice epochs (other schedules: from epoch 1)
SELECTION_START = "custom_losses.schedules.selection_start_epoch(@alpha_schedule, @epochs)"


def rank0_train_handlers(spec: DatasetSpec, resume_state: dict) -> list[dict]:
    """The last train handlers: logging and checkpoints, which only rank 0 runs under DDP (multi_gpu_train.json
    drops them on the other ranks)."""
    return [
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
            "save_dict": resume_state,
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


def train_config(spec: DatasetSpec, loss_name: str) -> dict:
    loss = LOSSES[loss_name]
    config = common_config(spec)
    config.update(
        {
            "dataset_dir": f"/workspace/data/{spec.name}",
            "datalist_file": expr("os.path.join(@dataset_dir, 'datalist.json')"),
            "allow_external_paths": False,  # datalist paths outside dataset_dir (../x.png, /elsewhere) are refused
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
            "optimizer_name": "adamw",  # or nadam (custom_losses.training)
            # cosine from learning_rate to lr_min, stepped per epoch (cosine_epoch) or per iteration
            "lr_schedule": "cosine_epoch",
            "lr_min": 0.0,
            **kind_of(spec).augmentation_defaults,
            "val_interval": 1,
            "resume": False,
            "resume_checkpoint_interval_s": 60,
            **({"dbce_radius": spec.dbce_radius} if loss_name == "dbce" else {}),
            **kind_of(spec).volume_defaults,
            **({"alpha_schedule": loss.schedule} if loss.schedule else {}),
            **spec.extra_defaults,
            "loss": kind_of(spec).loss_config(copy.deepcopy(loss.config)),
            "network": expr(prepared_network(network_with_encoder_weights(spec), spec)),
            "optimizer": {
                "_target_": "custom_losses.training.make_optimizer",
                "name": "@optimizer_name",
                "params": expr("@network.parameters()"),
                "lr": "@learning_rate",
                "weight_decay": "@weight_decay",
            },
            "lr_scheduler": {
                "_target_": "custom_losses.training.make_lr_scheduler",
                "schedule": "@lr_schedule",
                "optimizer": "@optimizer",
                "epochs": "@epochs",
                "iterations_per_epoch": expr("len(@train#dataloader)"),
                "lr_min": "@lr_min",
            },
        }
    )
    post = hard_postprocessing(spec)
    # Schedulers first; the rank-0 handlers (logging, checkpoints) last: only rank 0 runs them under DDP.
    training_state = {"model": "@network", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler"}
    # a resume also restores the best validation value and which model model.pt is
    resume_state = {**training_state, "evaluator": "@validate#evaluator"}
    resume_state["best_model_saver"] = "@validate#best_model_saver"
    handlers = [
        {
            "_target_": "LrScheduleHandler",
            "lr_scheduler": "@lr_scheduler",
            "epoch_level": expr(LR_EPOCH_LEVEL),
            "print_lr": expr(LR_EPOCH_LEVEL),  # per iteration it would double the log
        }
    ]
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
            "load_dict": resume_state,
            "map_location": "@device",
        },
        {"_target_": "custom_losses.handlers.StopOnNonFiniteLoss", "ckpt_dir": "@ckpt_dir"},
    ]
    if not decollates(spec):  # --tracking mlflow reads decollated outputs
        handlers.append({"_target_": "custom_losses.handlers.TrackingReadsBatchOutput"})
    handlers += [
        {
            "_target_": "ValidationHandler",
            "validator": "@validate#evaluator",
            "epoch_level": True,
            "interval": "@val_interval",
        },
    ]
    handlers += rank0_train_handlers(spec, resume_state)
    config["train"] = {
        "datalist": expr(
            "custom_losses.data.fold_split(@datalist_file, @dataset_dir, @fold, 'train', num_classes=@num_classes, "
            "allow_external_paths=@allow_external_paths)"
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
            **kind_of(spec).trainer_extras,
        },
    }
    config["validate"] = {
        "datalist": expr(
            "custom_losses.data.fold_split(@datalist_file, @dataset_dir, @fold, 'validate', num_classes=@num_classes, "
            "allow_external_paths=@allow_external_paths)"
        ),
        **validate_data_pipeline(spec),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": "%train#postprocessing",
        "best_model_saver": {
            "_target_": "custom_losses.handlers.AtomicCheckpointSaver",
            "save_dir": "@ckpt_dir",
            "save_dict": {"model": "@network"},
            "save_key_metric": True,
            "key_metric_filename": "model.pt",
            **({"key_metric_from_epoch": expr(SELECTION_START)} if loss.schedule else {}),
        },
        "handlers": [
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "TensorBoardStatsHandler", "log_dir": "@log_dir", "iteration_log": False},
            "@validate#best_model_saver",
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
            **kind_of(spec).evaluator_extras,
        },
    }
    config["checked_settings"] = checked_settings(TRAINING_SETTINGS, config)
    config["initialize"] = training_initialization(spec)
    config["run"] = [expr("@train#trainer.run()")]
    return config


# first in every ``initialize``: an input error ends the run with its one line last (custom_losses.errors)
ERROR_REPORT = expr("custom_losses.errors.install_error_report(@output_dir)")

# The ids each kind of run checks before anything else (their rules, and the order they are checked in:
# custom_losses.settings.RULES); those its config lacks (image_size in 3D, threshold in 3D inference) are
# left out. An id every config has (such as precision) goes into COMMON_SETTINGS.
COMMON_SETTINGS = ["image_size", "spatial_size", "device", "precision", "input_normalization", "pretrained_encoder"]
TRAINING_SETTINGS = [
    "epochs",
    "batch_size",
    "val_batch_size",
    "learning_rate",
    "weight_decay",
    "optimizer_name",
    "lr_schedule",
    "lr_min",
    "augmentation",
    "dbce_radius",
    "val_interval",
    "num_workers",
    "cache_rate",
    "seed",
    "resume",
    "resume_checkpoint_interval_s",
    "cudnn_benchmark",
    "label_uncertainty_width",
    "label_uncertainty_targets",
    "fold",
    *COMMON_SETTINGS,
    "output_dir",
    "ckpt_dir",
    "log_dir",
]
# evaluation reads the checkpoints and writes only eval_dir: a read-only model folder is fine
EVALUATION_SETTINGS = [
    "val_batch_size",
    "num_workers",
    "cache_rate",
    "seed",
    "label_uncertainty_width",
    "fold",
    *COMMON_SETTINGS,
    "evaluation_model",
    "eval_dir",
]
ENSEMBLE_SETTINGS = ["folds" if name == "fold" else name for name in EVALUATION_SETTINGS]
INFERENCE_SETTINGS = ["strict", "threshold", *COMMON_SETTINGS, "evaluation_model", "prediction_dir"]
# which checkpoint evaluation, the fold ensemble and inference read: best (model.pt, the best validation
# epoch) or final (model_final.pt, the last epoch: Galdran et al.'s)
# (custom_losses.conventions.EVALUATED_MODEL_FILES; plain Python: an export keeps the expression as it is)
EVALUATED_FILE = "{'best': 'model.pt', 'final': 'model_final.pt'}[@evaluation_model]"
EVALUATED_CHECKPOINT = expr(f"os.path.join(@ckpt_dir, {EVALUATED_FILE})")


def checked_settings(names: list[str], config_ids) -> dict:
    """``checked_settings``: id -> its value (a reference), for the ids of ``names`` the run's config has."""
    return {name: f"@{name}" for name in names if name in config_ids}


def settings_check(spec: DatasetSpec) -> str:
    """Second in every ``initialize``: ``checked_settings`` against their rules, the sizes against the network."""
    return expr(f"custom_losses.settings.check_settings(@checked_settings, {kind_of(spec).settings_network})")


def training_initialization(spec: DatasetSpec) -> list[str]:
    """Report input errors in one line; check the settings; seed everything; cuDNN autotuning (among
    deterministic algorithms) unless ``cudnn_benchmark`` is false."""
    return [
        ERROR_REPORT,
        settings_check(spec),
        expr("monai.utils.set_determinism(seed=@seed)"),
        expr("setattr(torch.backends.cudnn, 'benchmark', @cudnn_benchmark)"),
    ]


def train_data_pipeline(spec: DatasetSpec) -> dict:
    """Cached deterministic transforms, then the random part.

    3D: MONAI's per-volume random transforms in data-loader processes (small volumes). 2D: the cache holds
    the resized images on the training device, a thread assembles batches, and ``BatchAugmentation``
    augments each whole batch there (MONAI's per-image transforms on the CPU cannot keep up with a GPU).
    """
    return kind_of(spec).train_data_pipeline()


def train_data_pipeline_3d() -> dict:
    return {
        "deterministic_transforms": load_transforms_3d(),
        # first of the random part: the law is defined in the cached (padded) grid, before any warp
        "label_uncertainty": label_uncertainty_3d(),
        "expected_labels": expected_labels_3d(),
        "random_transforms": augmentations_3d(),
        "preprocessing": {
            "_target_": "Compose",
            "transforms": expr(f"@train#deterministic_transforms + {UNCERTAIN_LABELS} + @train#random_transforms"),
        },
        "dataset": cache_dataset("train"),
        "dataloader": data_loader("train", shuffle=True),
    }


def train_data_pipeline_2d() -> dict:
    return {
        "deterministic_transforms": load_transforms_2d(),
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
    return kind_of(spec).validate_data_pipeline()


def validate_data_pipeline_3d() -> dict:
    return {
        "preprocessing": {"_target_": "Compose", "transforms": "%train#deterministic_transforms"},
        "dataset": cache_dataset("validate"),
        "dataloader": data_loader("validate", shuffle=False),
    }


def validate_data_pipeline_2d() -> dict:
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


def evaluate_config_3d(spec: DatasetSpec) -> dict:
    """Merged over train.json: the held-out fold, probabilities and labels back in each volume's own space,
    per-class volumes (ml, from the header spacing) and Dice to ``eval_dir``, predictions as NIfTI."""
    return {
        "evaluation_model": "best",
        "checkpoint": EVALUATED_CHECKPOINT,
        "eval_dir": expr("os.path.join(@output_dir, 'eval', 'fold' + str(@fold))"),
        "validate#postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                # the label law's class probabilities in the training grid, then back with the label
                {
                    "_target_": "custom_losses.label_uncertainty.ExpectedLabeld",
                    "keys": "label",
                    "output_keys": "expected_label",
                    "width": "@label_uncertainty_width",
                },
                {
                    "_target_": "Invertd",
                    "keys": ["pred", "label", "expected_label"],
                    "transform": "@validate#preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": [False, True, False],
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
        **fold_evaluation(
            spec,
            "VolumeMetricsWriter",
            {
                "class_names": "@class_names",
                "expected_key": "expected_label",
                "label_uncertainty_width": "@label_uncertainty_width",
            },
        ),
    }


def evaluate_config(spec: DatasetSpec) -> dict:
    """Merged over train.json: the test split through the validation pipeline, metrics to ``eval_dir``."""
    return kind_of(spec).evaluate_config(spec)


def evaluate_config_2d(spec: DatasetSpec) -> dict:
    return {
        "evaluation_model": "best",
        "checkpoint": EVALUATED_CHECKPOINT,
        # the network as built, without pretrained_encoder's weights: the checkpoint replaces them
        "network": expr(prepared_network("@network_def", spec)),
        "eval_dir": expr("os.path.join(@output_dir, 'eval', 'fold' + str(@fold))"),
        "validate#datalist": expr(
            "custom_losses.data.load_split(@datalist_file, @dataset_dir, 'test', "
            "allow_external_paths=@allow_external_paths)"
        ),
        "validate#postprocessing": probability_postprocessing(),
        "validate#key_metric": test_key_metric(),
        "validate#evaluator#decollate": True,  # the metrics writer reads one item at a time
        **fold_evaluation(spec, "LesionMetricsWriter", {"threshold": 0.5}),
    }


# what ``precision`` means on this run's device (bf16 or fp32), recorded in every evaluation summary
RESOLVED_PRECISION = expr("custom_losses.precision.resolve_precision(@precision, @device)")

# loads the model of `checkpoint` before an evaluation or inference run (checked first: a one-line error)
CHECKPOINT_LOADER = {
    "_target_": "CheckpointLoader",
    "load_path": expr("custom_losses.handlers.loadable_checkpoint(@checkpoint, @network)"),
    "load_dict": {"model": "@network"},
    "map_location": "@device",
}


def training_ids(spec: DatasetSpec) -> set[str]:
    """The ids of train.json, which evaluate.json and evaluate_ensemble.json are merged over."""
    return set(train_config(spec, spec.losses[0]))


def fold_evaluation(spec: DatasetSpec, writer: str, writer_args: dict) -> dict:
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
                "extra": {"fold": "@fold", "checkpoint": "@checkpoint", "precision": RESOLVED_PRECISION},
            },
        ],
        "checked_settings": checked_settings(
            EVALUATION_SETTINGS, training_ids(spec) | {"eval_dir", "evaluation_model"}
        ),
        "initialize": [
            ERROR_REPORT,
            settings_check(spec),
            "$import numpy",
            expr("monai.utils.set_determinism(seed=@seed)"),
        ],
        "run": [expr("@validate#evaluator.run()")],
    }


def evaluate_ensemble_config(spec: DatasetSpec) -> dict:
    """Merged over train.json and evaluate.json: mean probability of the fold models (as Galdran et al.)."""
    return {
        "folds": [1, 2, 3, 4, 5],
        "ensemble_pred_keys": expr("['pred_fold' + str(k) for k in @folds]"),
        "ensemble_networks": expr(
            "["
            + prepared_network(
                "custom_losses.handlers.load_network_weights(copy.deepcopy(@network_def), "
                f"os.path.join(@output_dir, 'models', 'fold' + str(k), {EVALUATED_FILE}), @device)",
                spec,
            )
            + " for k in @folds]"
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
                "extra": {"folds": "@folds", "evaluation_model": "@evaluation_model", "precision": RESOLVED_PRECISION},
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
        },
        "checked_settings": checked_settings(
            ENSEMBLE_SETTINGS, training_ids(spec) | {"folds", "eval_dir", "evaluation_model"}
        ),
        "initialize": [
            ERROR_REPORT,
            settings_check(spec),
            "$import numpy",
            expr("monai.utils.set_determinism(seed=@seed)"),
        ],
    }


def _inference_engine() -> dict:
    return {
        "handlers": [
            CHECKPOINT_LOADER,
            # before StatsHandler: the first EXCEPTION_RAISED handler (it marks the rows not run)
            {"_target_": "custom_losses.inference.ManifestUpdater", "prediction_dir": "@prediction_dir"},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
        },
        "run": [expr("@evaluator.run()")],
    }


def inference_parts_3d() -> tuple[str, dict, list[dict], list[dict]]:
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
    return "3d", {}, preprocessing, postprocessing


def inference_parts_2d() -> tuple[str, dict, list[dict], list[dict]]:
    image_loading = load_transforms_2d()[0]
    preprocessing = [
        image_loading,
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        SCALE_TO_UNIT,
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
    return "2d", {"threshold": 0.5}, preprocessing, postprocessing


def inference_config(spec: DatasetSpec) -> dict:
    """Standalone: every image in ``input_dir`` -> its prediction in ``prediction_dir``, at the input's own size:
    a 0/255 PNG mask (2D) or a label volume with the input's affine (3D NIfTI). Every file is checked first;
    bad ones are skipped (``strict``: the run stops before predicting), all listed in ``manifest.csv``."""
    config = common_config(spec)
    kind, extra, preprocessing, postprocessing = kind_of(spec).inference_parts()
    config.update(
        {
            "imports": config["imports"] + ["$import numpy"],
            "input_dir": "@bundle_root",
            "prediction_dir": expr("os.path.join(@output_dir, 'predictions')"),
            "evaluation_model": "best",
            "checkpoint": EVALUATED_CHECKPOINT,
            **extra,
            "strict": False,
            "datalist": expr(
                "custom_losses.inference.inference_items(@input_dir, @prediction_dir, strict=@strict, "
                f"kind='{kind}', checkpoint=@checkpoint, network=@network)"
            ),
            "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
            "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "num_workers": 0},
            "inferer": {"_target_": "SimpleInferer"},
            "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
            **_inference_engine(),
        }
    )
    run = config.pop("run")
    config["checked_settings"] = checked_settings(INFERENCE_SETTINGS, config)
    config["initialize"] = [
        ERROR_REPORT,
        settings_check(spec),
        expr("monai.utils.set_determinism(seed=0)"),
    ]
    config["run"] = run
    return config


def finetune_config(spec: DatasetSpec) -> dict:
    """Merged over train.json: start from a trained checkpoint (matching tensors only), smaller learning rate."""
    return {
        "finetune_checkpoint": expr("os.path.join(@bundle_root, 'models', 'model.pt')"),
        "network": expr(
            prepared_network(
                "custom_losses.handlers.load_pretrained_weights(@network_def, @finetune_checkpoint, @device)", spec
            )
        ),
        "learning_rate": 1e-4,
        "epochs": 20,
    }


def multi_gpu_config(spec: DatasetSpec) -> dict:
    """Merged over train.json for ``torchrun``: DDP, DistributedSampler, NCCL on GPU and gloo on CPU. The
    settings are checked before the process group starts: every rank stops with the line, none waits."""
    num_rank0_handlers = len(rank0_train_handlers(spec, {}))
    error_report, check, *seeding = training_initialization(spec)
    return {
        "device": expr(
            "torch.device('cuda:' + os.environ['LOCAL_RANK']) if torch.cuda.is_available() else torch.device('cpu')"
        ),
        "network": {
            "_target_": "torch.nn.parallel.DistributedDataParallel",
            "module": expr(prepared_network(network_with_encoder_weights(spec), spec)),
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
            error_report,
            check,
            expr(
                "torch.distributed.is_initialized() or torch.distributed.init_process_group("
                "backend='nccl' if torch.cuda.is_available() else 'gloo')"
            ),
            expr("torch.cuda.set_device(@device) if torch.cuda.is_available() else None"),
            *seeding,
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


# ------------------------------------------------------------------------------------- 2D and 3D


class Kind:
    """What differs between the 2D (RGB images) and 3D (MRI volumes) bundles, each difference in one place:
    the generator's functions above ask ``kind_of(spec)`` and never test the dataset's kind themselves."""

    spatial_dims: int
    # whether the engines split batches into items (3D); 2D post-processes whole batches, which saves about
    # 11 ms of Python per batch of 16 (measured on CPU: benchmarks/throughput.py)
    decollates: bool
    include_background: bool  # of the Dice metric: 2D's one sigmoid channel is the lesion itself
    settings_network: str  # the network's name, dimensions and strides for custom_losses.settings
    training_network: str  # the network a training run starts from (an expression)
    volume_defaults: dict  # ids only this kind has, among the training settings
    augmentation_defaults: dict
    trainer_extras: dict  # SupervisedTrainer arguments of this kind
    evaluator_extras: dict
    hard_postprocessing: list[dict]


class Images2D(Kind):
    spatial_dims = 2
    decollates = False
    include_background = True
    # every FlexibleUNet encoder (ResNet, EfficientNet) halves the image 5 times
    settings_network = "'FlexibleUNet', 2, [2, 2, 2, 2, 2]"
    # with pretrained_encoder's torchvision weights in its encoder (none: as built)
    training_network = "custom_losses.networks.load_encoder_weights(@network_def, @pretrained_encoder)"
    volume_defaults: dict = {}
    augmentation_defaults = {"augmentation": "monai"}  # or galdran (custom_losses.augment)
    trainer_extras = {"prepare_batch": "@train#augmentation", "decollate": False}
    evaluator_extras = {"decollate": False}
    hard_postprocessing = HARD_POSTPROCESSING_2D
    loss_config = staticmethod(lambda config: config)
    load_transforms = staticmethod(load_transforms_2d)
    spatial_size_and_network = staticmethod(spatial_size_and_network_2d)
    train_data_pipeline = staticmethod(train_data_pipeline_2d)
    validate_data_pipeline = staticmethod(validate_data_pipeline_2d)
    evaluate_config = staticmethod(evaluate_config_2d)
    inference_parts = staticmethod(inference_parts_2d)


class Volumes3D(Kind):
    spatial_dims = 3
    decollates = True
    include_background = False
    settings_network = "'UNet', 3, @network_def#strides"
    training_network = "@network_def"
    volume_defaults = VOLUME_DEFAULTS
    augmentation_defaults: dict = {}
    trainer_extras: dict = {}
    evaluator_extras: dict = {}
    hard_postprocessing = HARD_POSTPROCESSING_3D
    loss_config = staticmethod(with_soft_labels)
    load_transforms = staticmethod(load_transforms_3d)
    spatial_size_and_network = staticmethod(spatial_size_and_network_3d)
    train_data_pipeline = staticmethod(train_data_pipeline_3d)
    validate_data_pipeline = staticmethod(validate_data_pipeline_3d)
    evaluate_config = staticmethod(evaluate_config_3d)
    inference_parts = staticmethod(inference_parts_3d)


KINDS: dict[str, Kind] = {"rgb2d": Images2D(), "mri3d": Volumes3D()}


def kind_of(spec: DatasetSpec) -> Kind:
    return KINDS[spec.kind]
