"""What is generated: the losses, the datasets (read from bundles/specs/*.yaml), versions and references."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import custom_losses
from lesion_study.paths import BUNDLES_DIR

RESULTS_DIR = BUNDLES_DIR / "results"  # published results per dataset (scripts/publish_results.py)
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
SCHEMA_FILE = "meta_schema_20240725.json"  # kept in bundles/: verify_metadata cannot download it offline

# Versions every bundle records (requirements.txt pins the first three; numpy is the tested one).
MONAI_VERSION = "1.6.1"
PYTORCH_VERSION = "2.13.0"
IGNITE_VERSION = "0.5.5"
NUMPY_VERSION = "2.4.6"
CUSTOM_LOSSES_VERSION = custom_losses.__version__
BUNDLE_VERSION = custom_losses.__version__  # the bundles are released with the package that generates them

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


SPECS_DIR = BUNDLES_DIR / "specs"
BUILTIN_DATASETS = ("polyp", "footulcer", "hippocampus")  # bundles/specs/<name>.yaml, in the index's order
KINDS = ("rgb2d", "mri3d")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*$")


class SpecError(ValueError):
    """A dataset spec file that cannot be used: the message names the file and the field."""


def reference_text(key_or_citation: str) -> str:
    """A built-in reference by key, or the citation written out in a spec."""
    return REFERENCES.get(key_or_citation, key_or_citation)


def load_dataset_spec(path: str | Path) -> DatasetSpec:
    """Read and check a dataset spec (YAML or JSON); every problem is a :class:`SpecError` naming the file.

    Required: the fields of :class:`DatasetSpec` without a default. Optional: the others (losses, kind,
    epochs, ...). ``references`` holds keys of ``REFERENCES`` or full citations; ``losses`` keys of ``LOSSES``.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SpecError(f"dataset spec {path} cannot be read: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise SpecError(f"dataset spec {path}: expected a mapping of fields, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(DatasetSpec)}
    required = [
        n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(f"dataset spec {path}: unknown field(s) {', '.join(unknown)} (known: {', '.join(fields)})")
    missing = [n for n in required if n not in data]
    if missing:
        raise SpecError(f"dataset spec {path}: missing field(s) {', '.join(missing)}")
    values = dict(data)
    for key in ("losses", "references"):
        if key in values:
            if not isinstance(values[key], list) or not all(isinstance(v, str) for v in values[key]):
                raise SpecError(f"dataset spec {path}: {key} must be a list of strings")
            values[key] = tuple(values[key])
    if "class_names" in values:
        values["class_names"] = tuple((int(c), str(n)) for c, n in values["class_names"])
    if "spatial_size_3d" in values:
        values["spatial_size_3d"] = tuple(int(v) for v in values["spatial_size_3d"])
    spec = DatasetSpec(**values)
    if not NAME_PATTERN.match(str(spec.name)):
        raise SpecError(f"dataset spec {path}: name {spec.name!r} must be lower-case letters and digits")
    if spec.kind not in KINDS:
        raise SpecError(f"dataset spec {path}: kind must be one of {', '.join(KINDS)}, got {spec.kind!r}")
    unknown_losses = [loss for loss in spec.losses if loss not in LOSSES]
    if unknown_losses or not spec.losses:
        raise SpecError(
            f"dataset spec {path}: unknown loss(es) {', '.join(unknown_losses) or '(none listed)'}; "
            f"known: {', '.join(LOSSES)}"
        )
    for key in ("image_size", "epochs", "batch_size", "dbce_radius"):
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"dataset spec {path}: {key} must be a positive integer, got {value!r}")
    if not isinstance(spec.learning_rate, (int, float)) or spec.learning_rate <= 0:
        raise SpecError(f"dataset spec {path}: learning_rate must be a positive number, got {spec.learning_rate!r}")
    return spec


DATASETS: dict[str, DatasetSpec] = {name: load_dataset_spec(SPECS_DIR / f"{name}.yaml") for name in BUILTIN_DATASETS}


def bundle_rank(bundle: str) -> int:
    """Where a bundle ``<dataset>_<loss>`` comes in its dataset's loss order (CE first; unknown ones last), so
    that every report and page lists a dataset's losses in the same order."""
    dataset, _, loss = bundle.partition("_")
    losses = DATASETS[dataset].losses if dataset in DATASETS else ()
    return losses.index(loss) if loss in losses else len(losses)


def measured_results(spec: DatasetSpec, results_dir: Path = RESULTS_DIR) -> dict:
    """Published results of a dataset's bundles (``<results_dir>/<dataset>.json``, per loss), if any."""
    results_file = results_dir / f"{spec.name}.json"
    return json.loads(results_file.read_text()) if results_file.is_file() else {}
