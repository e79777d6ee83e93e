"""Prepare any 2D binary lesion dataset laid out as folders of files (``prepare_data.py folder``).

A split folder holds either ``images/`` and ``masks/`` (paired by file stem, like Kvasir-SEG) or images
and masks side by side, a mask named ``<image stem><mask_suffix>`` (``--mask_suffix=_mask``, as in many
public sets). Images: PNG, JPEG, BMP or TIFF (8-bit RGB or grayscale; TIFF read with tifffile, strips and
tiles alike). Masks: the same formats, one channel (or RGB with equal channels).

Mask values (``--mask_rule``):
- ``auto`` (default): a mask whose values are all in {0, 255} or all in {0, 1} is binary as it is
  (foreground 255 or 1); a JPEG mask is thresholded at 127 (compression blurs 0/255 masks); any other
  mask is refused as ambiguous, naming the file and its values;
- ``nonzero``: every value > 0 is lesion;
- ``threshold``: values > 127 are lesion.

Lesion-free test images (``--lesion_free_dir``) may come with masks (they must be empty) or without.
Training images whose mask is empty are not trained on: they join the test split as lesion-free images
(the protocol of the study: models see only images with a lesion).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from custom_losses.conventions import IMAGE_SUFFIXES, lesion_pixels
from lesion_study.prepare.common import (
    DataPreparationError,
    PreparedPair,
    SourcePair,
    assign_folds,
    check_in_parallel,
    check_options,
    copy_name_clashes,
    data_files,
    empty_training_masks_to_test,
    index_by_key,
    png_bytes,
    raise_problems,
    require_positive_int,
    unreadable,
    write_image_dataset,
)

FOLDER_SUFFIXES = IMAGE_SUFFIXES["2d"]  # what the 2D bundles' inference reads, too
TIFF_SUFFIXES = (".tif", ".tiff")
JPEG_SUFFIXES = (".jpg", ".jpeg")
MASK_RULES = ("auto", "nonzero", "threshold")


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def read_image_array(path: Path, kind: str) -> np.ndarray:
    """Decode an image file fully into a uint8 array (H, W) or (H, W, C); one-line error naming the file."""
    try:
        if _suffix(path) in TIFF_SUFFIXES:
            array = tifffile.imread(path)
        else:
            with Image.open(path) as image:
                image.load()
                array = np.asarray(image.convert("RGB") if image.mode in ("P", "CMYK", "YCbCr") else image)
    except Exception as error:  # any decoder error means the same thing here
        raise unreadable(kind, path, "an image", error) from None
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype != np.uint8:
        raise DataPreparationError(f"{kind} {path} has {array.dtype} pixels: only 8-bit images are supported")
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar TIFF (C, H, W)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise DataPreparationError(f"{kind} {path} has shape {array.shape}: expected one 2D grayscale or RGB image")
    return array


def _rgb(array: np.ndarray) -> Image.Image:
    if array.ndim == 2 or array.shape[-1] == 1:
        return Image.fromarray(array.reshape(array.shape[:2])).convert("RGB")
    return Image.fromarray(np.ascontiguousarray(array[..., :3]))


def _mask_values(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 3:
        channels = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
        if not all(np.array_equal(channels[..., 0], channels[..., c]) for c in range(1, channels.shape[-1])):
            raise DataPreparationError(f"mask {path} has colour: expected one channel (or equal RGB channels)")
        array = channels[..., 0]
    return array


def binary_mask(array: np.ndarray, path: Path, rule: str) -> np.ndarray:
    """Lesion pixels of a mask under ``rule`` (see the module docstring); refuses ambiguous masks."""
    values = _mask_values(array, path)
    if rule == "nonzero":
        return values > 0
    if rule == "threshold":
        return lesion_pixels(values)
    present = np.unique(values)
    if set(present.tolist()) <= {0, 255}:
        return values == 255
    if set(present.tolist()) <= {0, 1}:
        return values == 1
    if _suffix(path) in JPEG_SUFFIXES:
        return lesion_pixels(values)
    shown = ", ".join(str(v) for v in present[:6]) + (", ..." if present.size > 6 else "")
    raise DataPreparationError(
        f"mask {path} has values {{{shown}}}: neither 0/255 nor 0/1, so which are lesion is ambiguous "
        "(pass --mask_rule=nonzero or --mask_rule=threshold)"
    )


def check_folder_pair(pair: SourcePair, size: int | None, mask_rule: str) -> PreparedPair:
    """Decode and check one pair (a missing mask is an empty one) and make its resized PNG copies."""
    image = read_image_array(pair.image_path, "image")
    height, width = image.shape[:2]
    if pair.mask_path is None:
        lesion = np.zeros((height, width), dtype=bool)
    else:
        mask = read_image_array(pair.mask_path, "mask")
        if mask.shape[:2] != (height, width):
            raise DataPreparationError(
                f"size mismatch: image {pair.image_path} is {width}x{height} "
                f"but mask {pair.mask_path} is {mask.shape[1]}x{mask.shape[0]}"
            )
        lesion = binary_mask(mask, pair.mask_path, mask_rule)
    source_empty = not lesion.any()
    mask_image = Image.fromarray((lesion * 255).astype(np.uint8))
    rgb = _rgb(image)
    if size is not None:
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        mask_image = mask_image.resize((size, size), Image.Resampling.BILINEAR).point(
            lambda value: 255 if lesion_pixels(value) else 0
        )
    return PreparedPair(pair, png_bytes(rgb), png_bytes(mask_image), mask_image.getbbox() is None, source_empty)


def collect_split(
    folder: Path, split: str, source: str, mask_suffix: str, masks_required: bool, problems: list[str]
) -> list[SourcePair]:
    """Image/mask pairs of one split folder (``images/`` + ``masks/``, or side by side with ``mask_suffix``)."""
    if not folder.is_dir():
        problems.append(f"{source} folder not found: {folder}")
        return []
    if (folder / "images").is_dir():
        image_dir, mask_dir = folder / "images", folder / "masks"
        images = index_by_key(data_files(image_dir, FOLDER_SUFFIXES), "image", problems, FOLDER_SUFFIXES)
        mask_files = data_files(mask_dir, FOLDER_SUFFIXES) if mask_dir.is_dir() else []
        if masks_required and not mask_dir.is_dir():
            problems.append(f"{source}: {image_dir} has no sibling masks/ folder")
    else:
        if not mask_suffix and masks_required:
            problems.append(
                f"{source}: {folder} has no images/ subfolder; with images and masks side by side, name the "
                "masks' suffix (e.g. --mask_suffix=_mask)"
            )
            return []
        mask_dir = folder
        files = data_files(folder, FOLDER_SUFFIXES)
        is_mask = [bool(mask_suffix) and p.stem.endswith(mask_suffix) for p in files]
        images = index_by_key(
            [p for p, m in zip(files, is_mask, strict=True) if not m], "image", problems, FOLDER_SUFFIXES
        )
        mask_files = [p for p, m in zip(files, is_mask, strict=True) if m]
    masks = index_by_key(mask_files, "mask", problems, FOLDER_SUFFIXES)
    if mask_suffix:
        masks = {stem[: -len(mask_suffix)]: path for stem, path in masks.items() if stem.endswith(mask_suffix)}
    if not images:
        problems.append(f"{source} folder has no {'/'.join(FOLDER_SUFFIXES)} images: {folder}")
    if masks_required:
        problems += [
            f"image without mask: {images[s]} (no {s}{mask_suffix}.* in {mask_dir})"
            for s in sorted(images.keys() - masks.keys())
        ]
    problems += [f"mask without image: {masks[s]} (no {s}.* in {folder})" for s in sorted(masks.keys() - images.keys())]
    print(f"{source}: {len(images)} image(s), {len(masks)} mask(s) in {folder}", flush=True)
    return [
        SourcePair(images[s], masks.get(s), split, source, lesion_free_folder=not masks_required)
        for s in sorted(images.keys())
        if s in masks or not masks_required
    ]


def prepare_folder(
    train_dir: str | Path,
    test_dir: str | Path,
    output_dir: str | Path,
    lesion_free_dir: str | Path | None = None,
    mask_suffix: str = "",
    mask_rule: str = "auto",
    size: int = 352,
    name: str = "lesions",
    num_folds: int = 5,
    seed: int = 0,
    overwrite: bool = False,
    max_workers: int | None = None,
) -> Path:
    """Prepare a 2D binary lesion dataset from folders of files; return the datalist path.

    Args:
        train_dir: training images with masks (``images/`` + ``masks/``, or side by side with ``mask_suffix``).
        test_dir: test images with masks, same layout.
        output_dir: created with train/ and test/ PNG copies and datalist.json (written atomically).
        lesion_free_dir: optional test images without a lesion, with empty masks or none at all.
        mask_suffix: what a mask's file stem adds to its image's (``_mask`` pairs ``a.png`` with
            ``a_mask.png``); in an ``images/`` + ``masks/`` layout, masks may also carry it.
        mask_rule: ``auto``, ``nonzero`` or ``threshold``: which mask values are lesion (module docstring).
        size: copies are resized to size x size (image bilinear, mask bilinear then thresholded at 127).
        name: the dataset's name in the datalist.
        num_folds: training items get "fold" 1..num_folds from a seeded shuffle, balanced sizes.
        seed: seed of the fold shuffle.
        overwrite: replace an output_dir that already holds a datalist.json.
        max_workers: threads for decoding, resizing and writing (default: Python's ThreadPoolExecutor default).
    """
    if mask_rule not in MASK_RULES:
        raise DataPreparationError(f"mask_rule must be one of {', '.join(MASK_RULES)}, got {mask_rule!r}")
    require_positive_int("size", size)
    output_dir = Path(output_dir).absolute()
    workers = check_options(num_folds, output_dir, overwrite, max_workers)
    mask_suffix = str(mask_suffix or "")

    problems: list[str] = []
    pairs = collect_split(Path(train_dir), "train", "train", mask_suffix, True, problems)
    pairs += collect_split(Path(test_dir), "test", "test", mask_suffix, True, problems)
    if lesion_free_dir is not None:
        pairs += collect_split(Path(lesion_free_dir), "test", "lesion-free", mask_suffix, False, problems)
    raise_problems(problems)
    print(f"checking and resizing {len(pairs)} image(s) with {workers} threads (mask rule: {mask_rule})", flush=True)
    prepared = check_in_parallel(partial(check_folder_pair, size=size, mask_rule=mask_rule), pairs, workers)
    raise_problems(
        [
            f"mask of a lesion-free image is not empty: {item.pair.mask_path}"
            for item in prepared
            if item.pair.lesion_free_folder and not item.source_mask_is_empty
        ]
    )
    prepared = empty_training_masks_to_test(prepared, "train-lesion-free")
    moved = sum(item.pair.source == "train-lesion-free" for item in prepared)
    if moved:
        print(f"{moved} training image(s) with an empty mask go to the test split as lesion-free", flush=True)
    raise_problems(copy_name_clashes(item.pair for item in prepared))
    training_stems = [item.pair.image_path.stem for item in prepared if item.pair.split == "train"]
    folds = assign_folds(training_stems, num_folds, seed, f"training images with a lesion in {train_dir}")
    header = {
        "name": name,
        "description": f"2D lesion dataset prepared from {Path(train_dir).name}/ (training, in folds) and "
        f"{Path(test_dir).name}/ (test){' plus lesion-free images' if lesion_free_dir else ''}",
        "labels": {"0": "background", "1": "lesion"},
        "num_folds": num_folds,
        "seed": seed,
        "mask_rule": mask_rule,
    }
    return write_image_dataset(
        output_dir, header, prepared, lambda item: item.source_mask_is_empty, folds, size, workers
    )
