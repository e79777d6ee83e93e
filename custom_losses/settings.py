"""The bundles' settings (config ids, often overridden on the command line), checked before anything runs.

Every config's ``initialize`` calls :func:`check_settings` right after installing the error report, with
the ids it uses: a bad value ends the run with one line such as ``error: epochs must be a positive integer,
got -1`` instead of MONAI's ``Failed to evaluate ConfigExpression`` deep in the run. :data:`RULES` maps each
id to its rule (a function of the value and the network that returns what is wrong, or None); a new id
needs an entry there and in the generator's lists (``*_SETTINGS`` in scripts/bundlegen/configs.py).
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import InputError

# a rule returns what is wrong with a value (the text after the id), or None when it is fine
Rule = Callable[[Any, "Network"], "str | None"]


class SettingError(InputError):
    """A config id whose value the bundle cannot use; the message names the id and the value."""


class Network:
    """What the size rules need to know of the network: its name, dimensions and downsampling factors."""

    def __init__(self, name: str, spatial_dims: int, strides: Sequence[int]) -> None:
        self.name = name
        self.spatial_dims = spatial_dims
        self.strides = [int(s) for s in strides]
        self.multiple = math.prod(self.strides)


def _got(value: Any) -> str:
    return f"got {value!r}"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(value: Any, network: Network) -> str | None:
    return None if _is_int(value) and value >= 1 else f"must be a positive integer, {_got(value)}"


def non_negative_int(value: Any, network: Network) -> str | None:
    return None if _is_int(value) and value >= 0 else f"must be an integer >= 0, {_got(value)}"


def seed(value: Any, network: Network) -> str | None:
    return None if _is_int(value) and 0 <= value < 2**32 else f"must be an integer in 0..2**32-1, {_got(value)}"


def positive_number(value: Any, network: Network) -> str | None:
    return None if _is_number(value) and value > 0 else f"must be a positive number, {_got(value)}"


def non_negative_number(value: Any, network: Network) -> str | None:
    return None if _is_number(value) and value >= 0 else f"must be a number >= 0, {_got(value)}"


def fraction(value: Any, network: Network) -> str | None:
    return None if _is_number(value) and 0 <= value <= 1 else f"must be a number in [0, 1], {_got(value)}"


def probability_threshold(value: Any, network: Network) -> str | None:
    return None if _is_number(value) and 0 < value < 1 else f"must be a number between 0 and 1, {_got(value)}"


def boolean(value: Any, network: Network) -> str | None:
    return None if isinstance(value, bool) else f"must be True or False, {_got(value)}"


def folds(value: Any, network: Network) -> str | None:
    """The fold models of an ensemble: two or more (one model's figures are evaluate.json's)."""
    ok = isinstance(value, (list, tuple)) and len(value) >= 2 and all(_is_int(f) and f >= 1 for f in value)
    if ok and len(set(value)) == len(value):
        return None
    return (
        "must be a list of at least two distinct positive fold numbers such as [1, 2, 3, 4, 5] "
        f"(a single fold's model is evaluated by evaluate.json), {_got(value)}"
    )


def _multiples_near(size: Any, multiple: int) -> list[int]:
    """The multiples of ``multiple`` just below and above ``size`` (at least ``multiple``)."""
    below = int(size) // multiple * multiple
    return [m for m in (below, below + multiple) if m >= multiple]


def _downsampling(network: Network) -> str:
    return f"the {network.name} downsamples by {' x '.join(map(str, network.strides))} = {network.multiple}"


def _is_size(value: Any, network: Network) -> bool:
    return _is_int(value) and value >= network.multiple and value % network.multiple == 0


def image_size(value: Any, network: Network) -> str | None:
    """A square side, or ``[height, width]`` (2D), each a multiple of the network's downsampling."""
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and all(_is_size(s, network) for s in value):
            return None
        problem = (
            f"must be a positive multiple of {network.multiple} or [height, width] of two ({_downsampling(network)}), "
            + _got(value)
        )
        if len(value) == 2 and all(_is_number(s) and s > 0 for s in value):
            # rounded up: more pixels rather than fewer
            problem += f": e.g. {[max(1, math.ceil(s / network.multiple)) * network.multiple for s in value]}"
        return problem
    if _is_size(value, network):
        return None
    problem = f"must be a positive multiple of {network.multiple} ({_downsampling(network)}), {_got(value)}"
    if _is_number(value) and value > 0:
        problem += ": use " + " or ".join(map(str, _multiples_near(value, network.multiple)))
    return problem


def spatial_size(value: Any, network: Network) -> str | None:
    sizes = list(value) if isinstance(value, (list, tuple)) else []
    if len(sizes) == network.spatial_dims and all(_is_size(s, network) for s in sizes):
        return None
    problem = (
        f"must be {network.spatial_dims} positive multiples of {network.multiple} ({_downsampling(network)}), "
        + _got(value)
    )
    if len(sizes) == network.spatial_dims and all(_is_number(s) and s > 0 for s in sizes):
        # rounded up: more padding rather than more cropping
        problem += f": e.g. {[math.ceil(s / network.multiple) * network.multiple for s in sizes]}"
    return problem


def available_device(value: Any, network: Network) -> str | None:
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        return f"must be cpu, cuda or cuda:N, {_got(value)}"
    if device.type == "cpu":
        return None
    if device.type == "mps":
        return None if torch.backends.mps.is_available() else "mps is not available on this machine (use --device cpu)"
    if device.type != "cuda":
        return f"must be cpu, cuda or cuda:N, {_got(value)}"
    if not torch.cuda.is_available():
        build = "" if torch.version.cuda else f", torch {torch.__version__} is built without CUDA"
        return f"{device} is not available: this machine has no usable CUDA device{build} (use --device cpu)"
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        return f"{device} does not exist: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
    return None


def writable_folder(value: Any, network: Network) -> str | None:
    """The folder, or the deepest of its parents that exists, is a writable folder (tried with a temporary
    file: permission bits say nothing for root or a read-only file system)."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        return f"must be a folder path, {_got(value)}"
    existing = Path(os.path.abspath(value))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{value} is not a folder: {existing} is a file"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return f"{value} is not writable: cannot write into {existing} ({error.strerror or error})"
    return None


def precision_name(value: Any, network: Network) -> str | None:
    from .precision import PRECISIONS

    return None if value in PRECISIONS else f"must be one of {', '.join(PRECISIONS)}, {_got(value)}"


def one_of(*choices: str) -> Rule:
    """A rule: the value is one of ``choices``."""

    def rule(value: Any, network: Network) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}, {_got(value)}"

    return rule


def encoder_weights(value: Any, network: Network) -> str | None:
    """``none``, ``imagenet`` (torchvision's download) or the path of a torchvision state-dict file (read,
    and its existence checked, when training builds the network: inference only needs the encoder's layout)."""
    if isinstance(value, (str, os.PathLike)) and str(value).strip():
        return None
    return f"must be none, imagenet or the path of a torchvision ResNet state dict (.pth), {_got(value)}"


def _pretrained_needs_imagenet_inputs(settings: dict[str, Any]) -> str | None:
    if str(settings["pretrained_encoder"]) != "none" and settings["input_normalization"] != "imagenet":
        return (
            f"pretrained_encoder {settings['pretrained_encoder']} needs input_normalization imagenet (torchvision's "
            f"ImageNet weights expect ImageNet-normalised inputs), got input_normalization "
            f"{settings['input_normalization']!r}"
        )
    return None


def _lr_min_below_learning_rate(settings: dict[str, Any]) -> str | None:
    if settings["lr_min"] >= settings["learning_rate"]:
        return (
            f"lr_min must be below learning_rate (the cosine schedule decays from learning_rate to lr_min), "
            f"got lr_min {settings['lr_min']!r} and learning_rate {settings['learning_rate']!r}"
        )
    return None


# id -> rule, in the order they are checked (the first problem is reported)
RULES: dict[str, Rule] = {
    "epochs": positive_int,
    "batch_size": positive_int,
    "val_batch_size": positive_int,
    "learning_rate": positive_number,
    "weight_decay": non_negative_number,
    "optimizer_name": one_of("adamw", "nadam"),
    "lr_schedule": one_of("cosine_epoch", "cosine_iteration"),
    "lr_min": non_negative_number,
    "augmentation": one_of("monai", "galdran"),
    "dbce_radius": positive_int,
    "val_interval": positive_int,
    "num_workers": non_negative_int,
    "cache_rate": fraction,
    "seed": seed,
    "resume": boolean,
    "resume_checkpoint_interval_s": non_negative_number,
    "cudnn_benchmark": boolean,
    "label_uncertainty_width": non_negative_number,  # voxels (custom_losses.label_uncertainty)
    "label_uncertainty_targets": one_of("sampled", "expected"),  # drawn annotations or their probabilities
    "strict": boolean,
    "threshold": probability_threshold,
    "fold": positive_int,
    "folds": folds,
    "image_size": image_size,  # before spatial_size: in 2D configs, spatial_size is made of it
    "spatial_size": spatial_size,
    "device": available_device,
    "precision": precision_name,
    "input_normalization": one_of("none", "imagenet"),
    "pretrained_encoder": encoder_weights,
    "evaluation_model": one_of("best", "final"),
    "output_dir": writable_folder,
    "ckpt_dir": writable_folder,
    "log_dir": writable_folder,
    "eval_dir": writable_folder,
    "prediction_dir": writable_folder,
}


# rules on several ids together, checked once each id has passed its own rule (when the config has them all)
JOINT_RULES: list[tuple[tuple[str, ...], Callable[[dict[str, Any]], str | None]]] = [
    (("pretrained_encoder", "input_normalization"), _pretrained_needs_imagenet_inputs),
    (("lr_min", "learning_rate"), _lr_min_below_learning_rate),
]


def check_settings(settings: dict[str, Any], network: str, spatial_dims: int, strides: Sequence[int]) -> None:
    """Raise :class:`SettingError` for the first id of ``settings`` (id -> value) that breaks its rule in
    :data:`RULES`, then for the first broken rule of :data:`JOINT_RULES`. ``network``, ``spatial_dims``,
    ``strides`` (its downsampling factors): for the sizes."""
    described = Network(network, spatial_dims, strides)
    for name in sorted(settings, key=list(RULES).index):
        problem = RULES[name](settings[name], described)
        if problem:
            raise SettingError(f"{name} {problem}")
    for names, rule in JOINT_RULES:
        if all(name in settings for name in names):
            problem = rule(settings)
            if problem:
                raise SettingError(problem)
