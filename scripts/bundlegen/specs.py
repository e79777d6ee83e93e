"""What is generated: the losses, the datasets (read from bundles/specs/*.yaml), versions and references."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
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
