"""Losses, loss schedules and lesion metrics for the lesion-loss MONAI bundles."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names below, imported on first use (a light ``import custom_losses.conventions``)
    from . import (
        augment,
        conventions,
        data,
        errors,
        handlers,
        inference,
        label_uncertainty,
        metrics,
        networks,
        precision,
        settings,
        training,
    )
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
    "conventions",
    "combo_alpha",
    "data",
    "dilate",
    "dilated_regions",
    "errors",
    "finetune_alpha",
    "handlers",
    "inference",
    "label_uncertainty",
    "linear_alpha",
    "metrics",
    "networks",
    "precision",
    "region_balanced_weights",
    "settings",
    "training",
]

SUBMODULES = (
    "augment",
    "conventions",
    "data",
    "errors",
    "handlers",
    "inference",
    "label_uncertainty",
    "metrics",
    "networks",
    "precision",
    "settings",
    "training",
)
NAME_MODULES = {
    "BatchAugmentation": "augment",
    "CEDiceLoss": "compound",
    "BalancedCrossEntropyLoss": "cross_entropy",
    "CrossEntropyLoss": "cross_entropy",
    "DilatedBalancedCrossEntropyLoss": "cross_entropy",
    "dilate": "cross_entropy",
    "dilated_regions": "cross_entropy",
    "region_balanced_weights": "cross_entropy",
    "SoftDiceLoss": "dice",
    "ALPHA_SCHEDULES": "schedules",
    "alpha_scheduler": "schedules",
    "combo_alpha": "schedules",
    "finetune_alpha": "schedules",
    "linear_alpha": "schedules",
}


def __getattr__(name: str):
    """Import a submodule or a re-exported name on first use (PEP 562)."""
    if name in SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in NAME_MODULES:
        value = getattr(importlib.import_module(f".{NAME_MODULES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
