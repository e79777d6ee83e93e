"""Losses, loss schedules and lesion metrics for the lesion-loss MONAI bundles."""

from . import augment, data, errors, handlers, inference, metrics, networks, precision, settings, training
from .augment import BatchAugmentation
from .compound import CEDiceLoss
from .cross_entropy import (
    BalancedCrossEntropyLoss,
    CrossEntropyLoss,
    DilatedBalancedCrossEntropyLoss,
    dilate,
    dilated_regions,
    region_balanced_weights,
)
from .dice import SoftDiceLoss
from .schedules import ALPHA_SCHEDULES, alpha_scheduler, combo_alpha, finetune_alpha, linear_alpha

__version__ = "0.1.0"

__all__ = [
    "ALPHA_SCHEDULES",
    "BalancedCrossEntropyLoss",
    "BatchAugmentation",
    "CEDiceLoss",
    "CrossEntropyLoss",
    "DilatedBalancedCrossEntropyLoss",
    "SoftDiceLoss",
    "alpha_scheduler",
    "augment",
    "combo_alpha",
    "data",
    "dilate",
    "dilated_regions",
    "errors",
    "finetune_alpha",
    "handlers",
    "inference",
    "linear_alpha",
    "metrics",
    "networks",
    "precision",
    "region_balanced_weights",
    "settings",
    "training",
]
