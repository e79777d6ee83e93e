"""Losses, loss schedules and lesion metrics for the lesion-loss MONAI bundles."""

from custom_losses import data, handlers, metrics, networks
from custom_losses.compound import CEDiceLoss
from custom_losses.cross_entropy import (
    BalancedCrossEntropyLoss,
    CrossEntropyLoss,
    DilatedBalancedCrossEntropyLoss,
    dilate,
    dilated_regions,
    region_balanced_weights,
)
from custom_losses.dice import SoftDiceLoss
from custom_losses.schedules import ALPHA_SCHEDULES, alpha_scheduler, combo_alpha, finetune_alpha, linear_alpha

__version__ = "0.1.0"

__all__ = [
    "ALPHA_SCHEDULES",
    "BalancedCrossEntropyLoss",
    "CEDiceLoss",
    "CrossEntropyLoss",
    "DilatedBalancedCrossEntropyLoss",
    "SoftDiceLoss",
    "alpha_scheduler",
    "combo_alpha",
    "data",
    "dilate",
    "dilated_regions",
    "finetune_alpha",
    "handlers",
    "linear_alpha",
    "metrics",
    "networks",
    "region_balanced_weights",
]
