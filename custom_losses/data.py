"""Datalist access for the bundles, with clear errors before any training starts."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from monai.data import load_decathlon_datalist

from .conventions import MASK_THRESHOLD, lesion_pixels
from .errors import InputError, InputNotFoundError

GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


class DataError(InputError):
    """A dataset file that the bundles cannot use; the message names the file and the problem."""


class DataNotFoundError(DataError, InputNotFoundError):
    """A dataset folder, datalist or listed file that does not exist."""


def _is_nifti(path: str) -> bool:
    return path.endswith((".nii", ".nii.gz"))


def image_2d_problem(image) -> str | None:
    """Why a loaded PIL image is not a usable bundle input (empty, one channel: ``convert('RGB')`` would
    saturate a 16-bit image), or None. Training and inference apply the same rules."""
    if image.size[0] < 1 or image.size[1] < 1:
        return f"is empty ({image.size[0]}x{image.size[1]})"
    if image.mode in GRAYSCALE_MODES:
        return f"has 1 channel (PIL mode {image.mode}), expected an RGB image"
    return None


def _check_2d_pair(image_path: str, label_path: str) -> None:
    from PIL import Image

    try:
        with Image.open(image_path) as image:
            image.load()
            image_size, problem = image.size, image_2d_problem(image)
    except Exception as error:
        raise DataError(f"image {image_path} is unreadable or corrupt: {error}") from error
    if problem:
        raise DataError(f"image {image_path} {problem}")
    try:
        with Image.open(label_path) as label:
            label_size = label.size
            mask = np.asarray(label.convert("L"))
    except Exception as error:
        raise DataError(f"mask {label_path} is unreadable or corrupt: {error}") from error
    if label_size != image_size:
        raise DataError(
            f"mask {label_path} is {label_size[0]}x{label_size[1]} but image {image_path} is "
            f"{image_size[0]}x{image_size[1]}"
        )
    if mask.max() > 0 and not lesion_pixels(mask.max()):
        raise DataError(
            f"mask {label_path} has values up to {mask.max()}: no pixel is above the threshold {MASK_THRESHOLD}, "
            "so it would count as empty; expected 0/255 masks (class-index masks must be scaled to 0/255)"
        )


def volume_problem(volume) -> str | None:
    """Why a loaded NIfTI image is not one usable 3D volume (a 4D series, an affine that is not finite or
    not invertible), or None."""
    shape = volume.shape
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        return f"has shape {shape}: expected one 3D volume (a 4D series needs one file per volume)"
    affine = np.asarray(volume.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        return "has no usable orientation: its affine is not finite or not invertible"
    return None


def _check_nifti_pair(image_path: str, label_path: str, num_classes: int) -> None:
    import nibabel

    try:
        image = nibabel.load(image_path)
    except Exception as error:
        raise DataError(f"image {image_path} is unreadable or corrupt: {error}") from error
    try:
        label = nibabel.load(label_path)
        values = np.unique(np.asarray(label.dataobj))
    except Exception as error:
        raise DataError(f"label {label_path} is unreadable or corrupt: {error}") from error
    problem = volume_problem(image)
    if problem:
        raise DataError(f"image {image_path} {problem}")
    if image.shape[:3] != label.shape[:3]:
        raise DataError(f"label {label_path} has shape {label.shape} but image {image_path} has {image.shape}")
    unknown = [v.item() for v in values if v not in range(num_classes)]
    if unknown:
        raise DataError(
            f"label {label_path} holds classes {unknown} that the bundle does not know (expected 0..{num_classes - 1})"
        )


def check_items(items: list[dict], num_classes: int = 2, max_workers: int = 8) -> None:
    """Open every image/label pair and raise :class:`DataError` on the first bad one, before training.

    2D images (PNG/JPEG): readable, RGB, mask of the same size with values that survive the > 127
    threshold. NIfTI: readable, same shape, label classes in ``0..num_classes-1``.
    """

    def check(item: dict) -> None:
        if "label" not in item:
            raise DataError(f"image {item.get('image')} has no label in the datalist")
        if _is_nifti(item["image"]):
            _check_nifti_pair(item["image"], item["label"], num_classes)
        else:
            _check_2d_pair(item["image"], item["label"])

    with ThreadPoolExecutor(max_workers) as pool:
        for _ in pool.map(check, items):
            pass


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([folder, path]) == folder


def _outside(path: str, folder: str | os.PathLike) -> bool:
    """Whether ``path`` (joined to ``folder``) lies outside ``folder`` both as written and with symlinks
    resolved: a symlink inside the folder, or the folder reached through a symlink, stays inside."""
    lexical = _within(os.path.normpath(os.path.abspath(path)), os.path.abspath(folder))
    return not (lexical or _within(os.path.realpath(path), os.path.realpath(folder)))


def _refuse_external_paths(items: list[dict], datalist_file: Path, dataset_dir: Path, split: str) -> None:
    """Raise :class:`DataError` naming the first entry whose image or label leaves ``dataset_dir``."""
    raw_items = None  # the entries as written, read again only to name a refused one
    for index, item in enumerate(items):
        for key in ("image", "label"):
            paths = item.get(key, [])
            for position, path in enumerate(paths if isinstance(paths, list) else [paths]):
                if not _outside(path, dataset_dir):
                    continue
                if raw_items is None:
                    raw_items = json.loads(datalist_file.read_text())[split]
                raw = raw_items[index]
                written = raw if isinstance(raw, str) else raw[key]  # a test item may be a bare image path
                written = written[position] if isinstance(written, list) else written
                raise DataError(
                    f"datalist {datalist_file}: {split}[{index}] {key} {written} is outside dataset_dir "
                    f"{dataset_dir} (run with --allow_external_paths True if the datalist may point elsewhere)"
                )


def load_split(
    datalist_file: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    split: str,
    check: bool = True,
    num_classes: int = 2,
    allow_external_paths: bool = False,
) -> list[dict]:
    """Items of ``split`` (``training`` or ``test``) with paths resolved against ``dataset_dir``.

    Raises :class:`DataNotFoundError` (a ``FileNotFoundError``) or :class:`DataError` (a ``ValueError``)
    naming the file and the problem: missing or empty ``dataset_dir``, missing datalist, missing split, an
    entry whose image or label lies outside ``dataset_dir`` (``../x.png``, an absolute path elsewhere;
    unless ``allow_external_paths``) or does not exist, and with ``check`` every problem
    :func:`check_items` finds.
    """
    dataset_dir, datalist_file = Path(dataset_dir), Path(datalist_file)
    if not dataset_dir.is_dir():
        raise DataNotFoundError(f"dataset_dir {dataset_dir} does not exist (prepare it with scripts/prepare_data.py)")
    if not any(dataset_dir.iterdir()):
        raise DataNotFoundError(f"dataset_dir {dataset_dir} is empty (prepare it with scripts/prepare_data.py)")
    if not datalist_file.is_file():
        raise DataNotFoundError(f"datalist {datalist_file} does not exist (prepare it with scripts/prepare_data.py)")
    try:
        items = load_decathlon_datalist(datalist_file, data_list_key=split, base_dir=dataset_dir)
    except ValueError as error:
        raise DataError(f"datalist {datalist_file}: {error}") from error
    if not allow_external_paths:
        _refuse_external_paths(items, datalist_file, dataset_dir, split)
    for index, item in enumerate(items):
        for key in ("image", "label"):
            if key in item and not Path(item[key]).is_file():
                raise DataNotFoundError(f"datalist {datalist_file}: {split}[{index}] {key} {item[key]} does not exist")
    if check:
        check_items(items, num_classes)
    return items


def fold_split(
    datalist_file: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    fold: int,
    role: str,
    check: bool = True,
    num_classes: int = 2,
    allow_external_paths: bool = False,
) -> list[dict]:
    """Training items of the other folds (``role="train"``) or of ``fold`` itself (``role="validate"``),
    checked with :func:`check_items` unless ``check=False``; ``allow_external_paths`` as :func:`load_split`."""
    if role not in ("train", "validate"):
        raise ValueError(f"role must be 'train' or 'validate', got {role!r}")
    items = load_split(datalist_file, dataset_dir, "training", check=False, allow_external_paths=allow_external_paths)
    folds = sorted({item.get("fold") for item in items if "fold" in item})
    if not folds:
        raise DataError(f"datalist {datalist_file}: training items carry no 'fold' key")
    if fold not in folds:
        raise DataError(f"fold {fold!r} does not exist in {datalist_file}: folds are {folds}")
    chosen = [item for item in items if (item.get("fold") == fold) == (role == "validate")]
    if check:
        check_items(chosen, num_classes)
    return chosen
