"""The study's datasets, prepared from their official layouts: Kvasir-SEG + EndoTect (polyp), FUSeg (foot
ulcers), Decathlon Task04 (hippocampus). Every file is checked before anything is written; the prepared folder
is written atomically (``common.py``). Commands: ``cli.py``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np

from lesion_study.prepare.common import (
    DataPreparationError,
    PreparedPair,
    SourcePair,
    assign_folds,
    check_all_pairs,
    check_in_parallel,
    check_options,
    collect_pairs,
    copy_name_clashes,
    empty_training_masks_to_test,
    file_key,
    pair_by_stem,
    raise_problems,
    require_positive_int,
    unreadable,
    write_image_dataset,
    write_prepared_folder,
)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


HIPPOCAMPUS_LABELS = {"0": "background", "1": "anterior", "2": "posterior"}


AFFINE_TOLERANCE_MM = 1e-3  # image and label affines may differ by this much per entry


@dataclass(frozen=True)
class CheckedVolume:
    """A checked 3D image/label pair of NIfTI files and its voxel spacing in mm."""

    key: str
    image_path: Path
    label_path: Path
    spacing: list[float]


def _collect_polyp_pairs(kvasir_dir: Path, endotect_dir: Path) -> list[SourcePair]:
    """All Kvasir-SEG (train) and EndoTect (test) pairs, or DataPreparationError naming every structural problem."""
    problems: list[str] = []
    folders: list[tuple[Path, Path, str, str, bool]] = [
        (kvasir_dir / "images", kvasir_dir / "masks", "train", "kvasir-seg", False),
        (endotect_dir / "images", endotect_dir / "masks", "test", "endotect", False),
    ]
    lesion_free = (endotect_dir / "ulcerative-colitis_images", endotect_dir / "ulcerative-colitis_masks")
    if any(folder.exists() for folder in lesion_free):  # optional: your own test set may have no such frames
        folders.append((*lesion_free, "test", "endotect-ulcerative-colitis", True))
    else:
        print(f"no lesion-free test frames ({lesion_free[0].name}/ absent in {endotect_dir})")
    pairs = collect_pairs(folders, problems)
    raise_problems(problems + copy_name_clashes(pairs))
    return pairs


def prepare_polyp(
    kvasir_dir: str | Path,
    endotect_dir: str | Path,
    output_dir: str | Path,
    size: int | None = 352,
    num_folds: int = 5,
    seed: int = 0,
    overwrite: bool = False,
    max_workers: int | None = None,
) -> Path:
    """Prepare Kvasir-SEG (training, in folds) and EndoTect 2021 test frames (testing); return the datalist path.

    Args:
        kvasir_dir: Kvasir-SEG folder with images/*.jpg and masks/*.jpg (same names).
        endotect_dir: EndoTect test folder with images/ + masks/ and ulcerative-colitis_images/ +
            ulcerative-colitis_masks/ (lesion-free frames; optional for your own data: leave both out when
            you have none); pairs match by file stem, .jpg/.jpeg/.png accepted.
        output_dir: created with train/ and test/ PNG copies and datalist.json (written atomically).
        size: copies are resized to size x size (image bilinear, mask bilinear then thresholded to 0/255);
            None makes no copies and the datalist points at the original files by absolute path (bundles
            then need ``--allow_external_paths True``).
        num_folds: training items get "fold" 1..num_folds from a seeded shuffle, balanced sizes.
        seed: seed of the fold shuffle.
        overwrite: replace an output_dir that already holds a datalist.json.
        max_workers: threads for decoding, resizing and writing (default: Python's ThreadPoolExecutor default).
    """
    kvasir_dir, endotect_dir, output_dir = Path(kvasir_dir), Path(endotect_dir), Path(output_dir).absolute()
    require_positive_int("size", size, allow_none=True)
    workers = check_options(num_folds, output_dir, overwrite, max_workers)

    pairs = _collect_polyp_pairs(kvasir_dir, endotect_dir)
    training_stems = [pair.image_path.stem for pair in pairs if pair.split == "train"]
    folds = assign_folds(training_stems, num_folds, seed, f"training images in {kvasir_dir}")
    prepared = check_all_pairs(pairs, size, workers)
    raise_problems(
        [
            f"mask of a lesion-free frame is not empty: {item.pair.mask_path}"
            for item in prepared
            if item.pair.lesion_free_folder and not item.mask_is_empty
        ]
    )
    header = {
        "name": "polyp",
        "description": "Kvasir-SEG (training, in folds) and EndoTect 2021 test frames incl. lesion-free ones",
        "labels": {"0": "background", "1": "lesion"},
        "num_folds": num_folds,
        "seed": seed,
    }

    def lesion_free(item: PreparedPair) -> bool:
        return item.mask_is_empty if item.pair.split == "train" else item.pair.lesion_free_folder

    return write_image_dataset(output_dir, header, prepared, lesion_free, folds, size, workers)


def prepare_footulcer(
    fuseg_dir: str | Path,
    output_dir: str | Path,
    size: int | None = 512,
    num_folds: int = 5,
    seed: int = 0,
    overwrite: bool = False,
    max_workers: int | None = None,
) -> Path:
    """Prepare FUSeg 2021 (foot ulcers) with the protocol of Galdran et al.; return the datalist path.

    Training: the train images whose mask has a wound, in folds. Test: the validation images, plus the
    wound-free train images, so that no model sees a wound-free image; "lesion_free" says whether the
    original mask is empty.

    Args:
        fuseg_dir: FUSeg folder with train/images + train/labels and validation/images + validation/labels;
            images .png (official release) or .jpg, masks .png (0/255), paired by file stem.
        output_dir: created with train/ and test/ PNG copies and datalist.json (written atomically).
        size: copies are resized to size x size (image bilinear, mask bilinear then thresholded to 0/255);
            None makes no copies and the datalist points at the original files by absolute path (bundles
            then need ``--allow_external_paths True``).
        num_folds: training items get "fold" 1..num_folds from a seeded shuffle, balanced sizes.
        seed: seed of the fold shuffle.
        overwrite: replace an output_dir that already holds a datalist.json.
        max_workers: threads for decoding, resizing and writing (default: Python's ThreadPoolExecutor default).
    """
    fuseg_dir, output_dir = Path(fuseg_dir), Path(output_dir).absolute()
    require_positive_int("size", size, allow_none=True)
    workers = check_options(num_folds, output_dir, overwrite, max_workers)

    problems: list[str] = []
    folders = [
        (fuseg_dir / "train" / "images", fuseg_dir / "train" / "labels", "train", "fuseg-train", False),
        (fuseg_dir / "validation" / "images", fuseg_dir / "validation" / "labels", "test", "fuseg-validation", False),
    ]
    pairs = collect_pairs(folders, problems)
    raise_problems(problems)
    prepared = empty_training_masks_to_test(check_all_pairs(pairs, size, workers), "fuseg-train-wound-free")
    raise_problems(copy_name_clashes(item.pair for item in prepared))
    training_stems = [item.pair.image_path.stem for item in prepared if item.pair.split == "train"]
    folds = assign_folds(training_stems, num_folds, seed, f"training images with a wound in {fuseg_dir / 'train'}")
    num_moved = sum(item.pair.source == "fuseg-train-wound-free" for item in prepared)
    print(
        f"{len(training_stems)} train images with a wound; {num_moved} wound-free ones go to the test split", flush=True
    )
    header = {
        "name": "footulcer",
        "description": "FUSeg 2021: train images with a wound (training, in folds); validation images and "
        "wound-free train images (test)",
        "labels": {"0": "background", "1": "wound"},
        "num_folds": num_folds,
        "seed": seed,
    }
    return write_image_dataset(
        output_dir, header, prepared, lambda item: item.source_mask_is_empty, folds, size, workers
    )


def _hippocampus_folders(hippocampus_dir: Path) -> tuple[Path, Path]:
    """imagesTr/ + labelsTr/ of the Decathlon Task04 release when imagesTr/ exists, else images/ + labels/."""
    if (hippocampus_dir / "imagesTr").is_dir():
        return hippocampus_dir / "imagesTr", hippocampus_dir / "labelsTr"
    return hippocampus_dir / "images", hippocampus_dir / "labels"


def _load_nifti(path: Path, kind: str) -> tuple[nib.spatialimages.SpatialImage, np.ndarray]:
    """Load and fully decode a NIfTI file, so that corrupt or truncated files fail here, naming the file."""
    try:
        volume = nib.load(path)
        data = np.asanyarray(volume.dataobj)
    except Exception as error:  # any reader error means the same thing here
        raise unreadable(kind, path, "NIfTI", error) from None
    if data.ndim != 3:
        raise DataPreparationError(f"{kind} is not 3D: {path} has shape {'x'.join(map(str, data.shape))}")
    return volume, data


def _check_volume_pair(pair: tuple[Path, Path]) -> CheckedVolume:
    """Check one hippocampus image/label pair: readable, 3D, same shape, close affines, labels in {0, 1, 2}."""
    image_path, label_path = pair
    image, image_data = _load_nifti(image_path, "image")
    label, label_data = _load_nifti(label_path, "label")
    if image_data.shape != label_data.shape:
        raise DataPreparationError(
            f"shape mismatch: image {image_path} is {'x'.join(map(str, image_data.shape))} "
            f"but label {label_path} is {'x'.join(map(str, label_data.shape))}"
        )
    affine_difference = float(np.max(np.abs(image.affine - label.affine)))
    if not affine_difference <= AFFINE_TOLERANCE_MM:
        raise DataPreparationError(
            f"affine mismatch: image {image_path} and label {label_path} differ by up to {affine_difference:g}"
        )
    unexpected = sorted(set(np.unique(label_data).tolist()) - {0, 1, 2})
    if unexpected:
        raise DataPreparationError(
            f"label {label_path} has values other than 0 (background), 1 (anterior), 2 (posterior): "
            + ", ".join(f"{value:g}" for value in unexpected)
        )
    spacing = [round(float(zoom), 6) for zoom in image.header.get_zooms()[:3]]
    return CheckedVolume(file_key(image_path, NIFTI_SUFFIXES), image_path, label_path, spacing)


def _copy_volumes(staging_dir: Path, volumes: Sequence[CheckedVolume]) -> None:
    """Copy the image and label files into staging_dir/images and staging_dir/labels, keeping their names."""
    (staging_dir / "images").mkdir()
    (staging_dir / "labels").mkdir()
    for volume in volumes:
        shutil.copyfile(volume.image_path, staging_dir / "images" / volume.image_path.name)
        shutil.copyfile(volume.label_path, staging_dir / "labels" / volume.label_path.name)


def _volume_entry(volume: CheckedVolume, copy: bool, fold: int) -> dict:
    """One datalist item: image/label paths (relative copies, or absolute originals), fold and spacing in mm."""
    if copy:
        image_path, label_path = f"images/{volume.image_path.name}", f"labels/{volume.label_path.name}"
    else:
        image_path, label_path = str(volume.image_path.absolute()), str(volume.label_path.absolute())
    return {"image": image_path, "label": label_path, "fold": fold, "spacing": volume.spacing}


def prepare_hippocampus(
    hippocampus_dir: str | Path,
    output_dir: str | Path,
    num_folds: int = 5,
    seed: int = 0,
    overwrite: bool = False,
    copy: bool = True,
    max_workers: int | None = None,
) -> Path:
    """Prepare the Decathlon Task04 hippocampus MRI volumes for cross-validation; return the datalist path.

    Every volume is a training item with a fold and its voxel spacing in mm; the test list is empty.

    Args:
        hippocampus_dir: folder with images/*.nii.gz + labels/*.nii.gz, or the Decathlon release with
            imagesTr/ + labelsTr/ (imagesTs/ and ._ files are ignored); pairs match by file name.
            Labels must be 0 (background), 1 (anterior) or 2 (posterior).
        output_dir: created with datalist.json (and the copies), written atomically.
        num_folds: items get "fold" 1..num_folds from a seeded shuffle, balanced sizes.
        seed: seed of the fold shuffle.
        overwrite: replace an output_dir that already holds a datalist.json.
        copy: copy the files into output_dir/images and output_dir/labels (relative paths in the datalist);
            False points the datalist at the original files by absolute path (bundles then need
            ``--allow_external_paths True``).
        max_workers: threads for reading and checking (default: Python's ThreadPoolExecutor default).
    """
    hippocampus_dir, output_dir = Path(hippocampus_dir), Path(output_dir).absolute()
    workers = check_options(num_folds, output_dir, overwrite, max_workers)

    image_dir, label_dir = _hippocampus_folders(hippocampus_dir)
    problems: list[str] = []
    pairs = pair_by_stem(image_dir, label_dir, problems, NIFTI_SUFFIXES, mask_kind="label")
    raise_problems(problems)
    print(f"hippocampus: {len(pairs)} image/label pairs in {image_dir.parent}; checking with {workers} threads")
    volumes = check_in_parallel(_check_volume_pair, pairs, workers)
    folds = assign_folds((volume.key for volume in volumes), num_folds, seed, f"volumes in {image_dir}")
    datalist = {
        "name": "hippocampus",
        "description": "Medical Segmentation Decathlon Task04: hippocampus MRI, all volumes in folds for "
        "cross-validation; spacing in mm",
        "labels": HIPPOCAMPUS_LABELS,
        "num_folds": num_folds,
        "seed": seed,
        "training": [_volume_entry(volume, copy, folds[volume.key]) for volume in volumes],
        "test": [],
    }
    return write_prepared_folder(output_dir, datalist, partial(_copy_volumes, volumes=volumes) if copy else None)
