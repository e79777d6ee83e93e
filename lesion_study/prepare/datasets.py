"""Prepare the datasets of the study for the bundles.

Reads the official on-disk layouts, checks every file before writing anything, writes the prepared copies and a
`datalist.json` in MONAI's `load_decathlon_datalist` format into a new folder (atomically). Usage:

    python scripts/prepare_data.py polyp --kvasir_dir=DIR --endotect_dir=DIR --output_dir=DIR [--size=352]
    python scripts/prepare_data.py footulcer --fuseg_dir=DIR --output_dir=DIR [--size=512]
    python scripts/prepare_data.py hippocampus --hippocampus_dir=DIR --output_dir=DIR [--copy=False]
    python scripts/prepare_data.py folder --train_dir=DIR --test_dir=DIR [--lesion_free_dir=DIR] --output_dir=DIR
        [--mask_suffix=_mask] [--mask_rule=auto|nonzero|threshold] [--size=352]   # any 2D lesion dataset
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import fire
import nibabel as nib
import numpy as np
from PIL import Image

__all__ = [
    "DataPreparationError",
    "PreparedPair",
    "SourcePair",
    "pair_images_and_masks",
    "prepare_footulcer",
    "prepare_hippocampus",
    "prepare_polyp",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
MASK_THRESHOLD = 127  # mask pixels > 127 (after conversion to grayscale "L") are lesion
DATALIST_NAME = "datalist.json"
HIPPOCAMPUS_LABELS = {"0": "background", "1": "anterior", "2": "posterior"}
AFFINE_TOLERANCE_MM = 1e-3  # image and label affines may differ by this much per entry

InputT = TypeVar("InputT")
CheckedT = TypeVar("CheckedT")


class DataPreparationError(ValueError):
    """Bad input data or output folder; the message is one line naming the file or folder and the problem."""


@dataclass(frozen=True)
class SourcePair:
    """One image/mask pair of the input and where its copies go (`split` is "train" or "test"); `mask_path`
    None is a lesion-free image without a mask file (`prepare_data.py folder`)."""

    image_path: Path
    mask_path: Path | None
    split: str
    source: str
    lesion_free_folder: bool = False  # True for frames that are lesion-free by construction of the dataset


@dataclass(frozen=True)
class PreparedPair:
    """A checked pair: the encoded PNG copies (None when not resizing) and whether its masks are empty.

    `mask_is_empty` is about the final mask (the resized copy, or the original when not resizing),
    `source_mask_is_empty` about the original mask.
    """

    pair: SourcePair
    image_png: bytes | None
    mask_png: bytes | None
    mask_is_empty: bool
    source_mask_is_empty: bool


@dataclass(frozen=True)
class CheckedVolume:
    """A checked 3D image/label pair of NIfTI files and its voxel spacing in mm."""

    key: str
    image_path: Path
    label_path: Path
    spacing: list[float]


def _raise_problems(problems: Sequence[str]) -> None:
    """Raise one DataPreparationError for the first problem, counting the others."""
    if problems:
        more = f" (and {len(problems) - 1} more problem(s) in the input)" if len(problems) > 1 else ""
        raise DataPreparationError(problems[0] + more)


def _matching_suffix(path: Path, suffixes: Sequence[str]) -> str | None:
    """The first of `suffixes` that the file name ends with, ignoring case; None if none does."""
    name = path.name.lower()
    return next((suffix for suffix in suffixes if name.endswith(suffix)), None)


def _file_key(path: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> str:
    """The file name without its suffix from `suffixes` ("0011" for 0011.jpg, "hippocampus_001" for .nii.gz)."""
    suffix = _matching_suffix(path, suffixes)
    return path.name[: -len(suffix)] if suffix else path.stem


def _data_files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Files directly in `folder` ending with one of `suffixes` (any case), sorted; hidden and ._ files ignored."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and _matching_suffix(path, suffixes) and not path.name.startswith(".")
    )


def _files_by_stem(
    folder: Path, kind: str, problems: list[str], suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> dict[str, Path]:
    """Map stem -> file for the data files in `folder`, recording missing/empty folders and duplicate stems."""
    if not folder.is_dir():
        problems.append(f"{kind} folder not found: {folder}")
        return {}
    files_by_stem: dict[str, Path] = {}
    for path in _data_files(folder, suffixes):
        stem = _file_key(path, suffixes)
        if stem in files_by_stem:
            problems.append(f"duplicate {kind} stem '{stem}': {files_by_stem[stem]} and {path}")
        else:
            files_by_stem[stem] = path
    if not files_by_stem:
        problems.append(f"{kind} folder has no {'/'.join(suffixes)} files: {folder}")
    return files_by_stem


def _pair_by_stem(
    image_dir: Path,
    mask_dir: Path,
    problems: list[str],
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
    mask_kind: str = "mask",
) -> list[tuple[Path, Path]]:
    """Pair images and masks (or labels) by file stem, appending every problem found to `problems`."""
    images = _files_by_stem(image_dir, "image", problems, suffixes)
    masks = _files_by_stem(mask_dir, mask_kind, problems, suffixes)
    if not images or not masks:
        return []
    alternatives = "/".join(suffixes)
    problems.extend(
        f"image without {mask_kind}: {images[stem]} (no {stem}{alternatives} in {mask_dir})"
        for stem in sorted(images.keys() - masks.keys())
    )
    problems.extend(
        f"{mask_kind} without image: {masks[stem]} (no {stem}{alternatives} in {image_dir})"
        for stem in sorted(masks.keys() - images.keys())
    )
    return [(images[stem], masks[stem]) for stem in sorted(images.keys() & masks.keys())]


def pair_images_and_masks(image_dir: str | Path, mask_dir: str | Path) -> list[tuple[Path, Path]]:
    """Pair `image_dir/<stem>.{jpg,jpeg,png}` with `mask_dir/<stem>.{jpg,jpeg,png}`, sorted by stem.

    Raises DataPreparationError for a missing or empty folder, duplicate stems, or an unpaired image or mask.
    """
    problems: list[str] = []
    pairs = _pair_by_stem(Path(image_dir), Path(mask_dir), problems)
    _raise_problems(problems)
    return pairs


def _unreadable(kind: str, path: Path, what: str, error: Exception) -> DataPreparationError:
    """One-line error for a file that cannot be decoded, with the decoder's reason."""
    reason = " ".join(f"{type(error).__name__}: {error}".split())
    return DataPreparationError(f"cannot read {kind} {path}: corrupt or not {what} ({reason})")


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _open_fully(path: Path, kind: str) -> Image.Image:
    """Open and fully decode `path`, so that corrupt or truncated files fail here, naming the file."""
    try:
        image = Image.open(path)
        image.load()
    except Exception as error:  # any decoder error means the same thing here
        raise _unreadable(kind, path, "an image", error) from None
    return image


def _binary_mask(mask: Image.Image) -> Image.Image:
    """Grayscale 0/255 mask: pixels > MASK_THRESHOLD after conversion to "L" are lesion."""
    return mask.convert("L").point(lambda value: 255 if value > MASK_THRESHOLD else 0)


def _check_and_convert(pair: SourcePair, size: int | None) -> PreparedPair:
    """Decode one pair, check it, and (when `size`) make its resized PNG copies in memory."""
    image = _open_fully(pair.image_path, "image")
    mask = _open_fully(pair.mask_path, "mask")
    image_size, mask_size = image.size, mask.size
    if image_size != mask_size:
        raise DataPreparationError(
            f"size mismatch: image {pair.image_path} is {image_size[0]}x{image_size[1]} "
            f"but mask {pair.mask_path} is {mask_size[0]}x{mask_size[1]}"
        )
    binary_mask = _binary_mask(mask)
    source_mask_is_empty = binary_mask.getbbox() is None
    if size is None:
        return PreparedPair(pair, None, None, source_mask_is_empty, source_mask_is_empty)
    resized_image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    resized_mask = _binary_mask(binary_mask.resize((size, size), Image.Resampling.BILINEAR))
    return PreparedPair(
        pair, _png_bytes(resized_image), _png_bytes(resized_mask), resized_mask.getbbox() is None, source_mask_is_empty
    )


def _check_in_parallel(
    check: Callable[[InputT], CheckedT], inputs: Sequence[InputT], max_workers: int
) -> list[CheckedT]:
    """Run `check` on every input in a thread pool; raise one error naming the first problem if any failed."""

    def check_or_error(item: InputT) -> CheckedT | DataPreparationError:
        try:
            return check(item)
        except DataPreparationError as error:
            return error

    with ThreadPoolExecutor(max_workers=max_workers) as executor:
        outcomes = list(executor.map(check_or_error, inputs))
    _raise_problems([str(outcome) for outcome in outcomes if isinstance(outcome, DataPreparationError)])
    return [outcome for outcome in outcomes if not isinstance(outcome, DataPreparationError)]


def _check_all_pairs(pairs: Sequence[SourcePair], size: int | None, max_workers: int) -> list[PreparedPair]:
    """Decode and check every image/mask pair in a thread pool (and make the resized copies when `size`)."""
    print(f"checking{' and resizing' if size else ''} {len(pairs)} pairs with {max_workers} threads", flush=True)
    return _check_in_parallel(partial(_check_and_convert, size=size), pairs, max_workers)


def _collect_pairs(folders: Sequence[tuple[Path, Path, str, str, bool]], problems: list[str]) -> list[SourcePair]:
    """Pairs of every (image_dir, mask_dir, split, source, lesion_free_folder), recording structural problems."""
    pairs: list[SourcePair] = []
    for image_dir, mask_dir, split, source, lesion_free in folders:
        found = _pair_by_stem(image_dir, mask_dir, problems)
        print(f"{source}: {len(found)} image/mask pairs in {image_dir.parent}", flush=True)
        pairs.extend(SourcePair(image, mask, split, source, lesion_free) for image, mask in found)
    return pairs


def _copy_name_clashes(pairs: Iterable[SourcePair]) -> list[str]:
    """Copies of one split share a folder, so image stems must be unique within a split: one problem per clash."""
    problems: list[str] = []
    first_by_split_and_stem: dict[tuple[str, str], Path] = {}
    for pair in pairs:
        key = (pair.split, pair.image_path.stem)
        if key in first_by_split_and_stem:
            problems.append(f"duplicate image stem '{key[1]}': {first_by_split_and_stem[key]} and {pair.image_path}")
        first_by_split_and_stem.setdefault(key, pair.image_path)
    return problems


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
    pairs = _collect_pairs(folders, problems)
    _raise_problems(problems + _copy_name_clashes(pairs))
    return pairs


def _assign_folds(stems: Iterable[str], num_folds: int, seed: int, what: str) -> dict[str, int]:
    """Folds 1..num_folds from a seeded shuffle of the sorted stems; fold sizes differ by at most one.

    `what` names the items in the error raised when there are fewer than `num_folds` of them.
    """
    sorted_stems = sorted(stems)
    if len(sorted_stems) < num_folds:
        raise DataPreparationError(f"{len(sorted_stems)} {what} cannot fill {num_folds} folds")
    order = np.random.default_rng(seed).permutation(len(sorted_stems))
    return {sorted_stems[index]: rank % num_folds + 1 for rank, index in enumerate(order)}


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse to replace a prepared dataset unless `overwrite`, and never replace any other non-empty folder."""
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise DataPreparationError(f"output path exists and is not a folder: {output_dir}")
    if (output_dir / DATALIST_NAME).exists():
        if not overwrite:
            raise DataPreparationError(f"output folder already prepared: {output_dir} (pass --overwrite to replace it)")
    elif any(output_dir.iterdir()):
        raise DataPreparationError(f"output folder exists, is not empty and has no {DATALIST_NAME}: {output_dir}")


def _move_into_place(staging_dir: Path, output_dir: Path) -> None:
    """Rename `staging_dir` to `output_dir`, replacing an existing `output_dir` with as short a gap as possible."""
    if not output_dir.exists():
        staging_dir.rename(output_dir)
        return
    if not any(output_dir.iterdir()):
        output_dir.rmdir()
        staging_dir.rename(output_dir)
        return
    retired_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
    retired_dir.rmdir()
    output_dir.rename(retired_dir)
    try:
        staging_dir.rename(output_dir)
    except BaseException:
        retired_dir.rename(output_dir)
        raise
    shutil.rmtree(retired_dir, ignore_errors=True)


def _copy_paths(pair: SourcePair) -> tuple[str, str]:
    """Paths of a pair's resized image and mask copies, relative to the output folder."""
    stem = pair.image_path.stem
    return f"{pair.split}/images/{stem}.png", f"{pair.split}/masks/{stem}.png"


def _write_copies(staging_dir: Path, prepared: Sequence[PreparedPair], max_workers: int) -> None:
    """Write the encoded PNG copies into `staging_dir` in a thread pool."""
    for split in sorted({item.pair.split for item in prepared}):
        (staging_dir / split / "images").mkdir(parents=True)
        (staging_dir / split / "masks").mkdir(parents=True)

    def write(item: PreparedPair) -> None:
        if item.image_png is None or item.mask_png is None:
            raise RuntimeError(f"no resized copy of {item.pair.image_path}")
        image_path, mask_path = _copy_paths(item.pair)
        (staging_dir / image_path).write_bytes(item.image_png)
        (staging_dir / mask_path).write_bytes(item.mask_png)

    with ThreadPoolExecutor(max_workers=max_workers) as executor:
        list(executor.map(write, prepared))


def _datalist_entry(item: PreparedPair, resized: bool, fold: int | None, lesion_free: bool) -> dict:
    """One datalist item: image/label paths (relative copies, or absolute originals), fold, lesion_free, source."""
    if resized:
        image_path, label_path = _copy_paths(item.pair)
    else:
        image_path, label_path = str(item.pair.image_path.absolute()), str(item.pair.mask_path.absolute())
    entry: dict = {"image": image_path, "label": label_path}
    if fold is not None:
        entry["fold"] = fold
    entry["lesion_free"] = lesion_free
    entry["source"] = item.pair.source
    return entry


def _require_positive_int(name: str, value: object, allow_none: bool = False) -> None:
    """Raise DataPreparationError unless `value` is a positive int (or None when `allow_none`)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataPreparationError(
            f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}"
        )


def _check_options(num_folds: int, output_dir: Path, overwrite: bool, max_workers: int | None) -> int:
    """Check the options every dataset shares; return the number of threads to use (`max_workers`, or the
    default of Python's ThreadPoolExecutor)."""
    _require_positive_int("num_folds", num_folds)
    _check_output_dir(output_dir, overwrite)
    return max_workers or min(32, (os.cpu_count() or 1) + 4)


def _write_prepared_folder(output_dir: Path, datalist: dict, write_files: Callable[[Path], None] | None = None) -> Path:
    """Create `output_dir` atomically: `write_files(staging_dir)`, then the datalist, then one rename into place.

    Nothing is left behind when anything fails. Returns the path of the datalist.
    """
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        if write_files is not None:
            write_files(staging_dir)
        (staging_dir / DATALIST_NAME).write_text(json.dumps(datalist, indent=1) + "\n")
        _move_into_place(staging_dir, output_dir)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise
    print(f"{len(datalist['training'])} training and {len(datalist['test'])} test items in {output_dir}", flush=True)
    return output_dir / DATALIST_NAME


def _write_image_dataset(
    output_dir: Path,
    header: dict,
    prepared: Sequence[PreparedPair],
    lesion_free: Callable[[PreparedPair], bool],
    folds: dict[str, int],
    size: int | None,
    max_workers: int,
) -> Path:
    """Write the PNG copies (when `size`) and the datalist of a 2D dataset: `header`, the "train" split's items
    with their fold from `folds` (by stem), and the "test" split's. Warns when resizing emptied lesion masks."""

    def fold(item: PreparedPair) -> int | None:
        return folds[item.pair.image_path.stem] if item.pair.split == "train" else None

    entries = [_datalist_entry(item, size is not None, fold(item), lesion_free(item)) for item in prepared]
    datalist = {
        **header,
        "size": size,
        "training": [entry for entry in entries if "fold" in entry],
        "test": [entry for entry in entries if "fold" not in entry],
    }
    write_copies = None
    if size is not None:
        print(f"writing {2 * len(prepared)} PNG files", flush=True)
        write_copies = partial(_write_copies, prepared=prepared, max_workers=max_workers)
    datalist_path = _write_prepared_folder(output_dir, datalist, write_copies)
    masks_emptied = sum(item.mask_is_empty and not item.source_mask_is_empty for item in prepared)
    if masks_emptied:
        print(f"warning: {masks_emptied} mask(s) with a lesion are empty at size {size}", file=sys.stderr)
    return datalist_path


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
    _require_positive_int("size", size, allow_none=True)
    workers = _check_options(num_folds, output_dir, overwrite, max_workers)

    pairs = _collect_polyp_pairs(kvasir_dir, endotect_dir)
    training_stems = [pair.image_path.stem for pair in pairs if pair.split == "train"]
    folds = _assign_folds(training_stems, num_folds, seed, f"training images in {kvasir_dir}")
    prepared = _check_all_pairs(pairs, size, workers)
    _raise_problems(
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

    return _write_image_dataset(output_dir, header, prepared, lesion_free, folds, size, workers)


def _empty_training_masks_to_test(prepared: Sequence[PreparedPair], source: str) -> list[PreparedPair]:
    """The study's protocol (models train only on images with a lesion): training images whose mask is empty
    move to the test split under ``source``, listed after the other test images."""
    moved = [
        replace(item, pair=replace(item.pair, split="test", source=source))
        for item in prepared
        if item.pair.split == "train" and item.source_mask_is_empty
    ]
    kept = [item for item in prepared if not (item.pair.split == "train" and item.source_mask_is_empty)]
    return kept + moved


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
    _require_positive_int("size", size, allow_none=True)
    workers = _check_options(num_folds, output_dir, overwrite, max_workers)

    problems: list[str] = []
    folders = [
        (fuseg_dir / "train" / "images", fuseg_dir / "train" / "labels", "train", "fuseg-train", False),
        (fuseg_dir / "validation" / "images", fuseg_dir / "validation" / "labels", "test", "fuseg-validation", False),
    ]
    pairs = _collect_pairs(folders, problems)
    _raise_problems(problems)
    prepared = _empty_training_masks_to_test(_check_all_pairs(pairs, size, workers), "fuseg-train-wound-free")
    _raise_problems(_copy_name_clashes(item.pair for item in prepared))
    training_stems = [item.pair.image_path.stem for item in prepared if item.pair.split == "train"]
    folds = _assign_folds(training_stems, num_folds, seed, f"training images with a wound in {fuseg_dir / 'train'}")
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
    return _write_image_dataset(
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
        raise _unreadable(kind, path, "NIfTI", error) from None
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
    return CheckedVolume(_file_key(image_path, NIFTI_SUFFIXES), image_path, label_path, spacing)


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
    workers = _check_options(num_folds, output_dir, overwrite, max_workers)

    image_dir, label_dir = _hippocampus_folders(hippocampus_dir)
    problems: list[str] = []
    pairs = _pair_by_stem(image_dir, label_dir, problems, NIFTI_SUFFIXES, mask_kind="label")
    _raise_problems(problems)
    print(f"hippocampus: {len(pairs)} image/label pairs in {image_dir.parent}; checking with {workers} threads")
    volumes = _check_in_parallel(_check_volume_pair, pairs, workers)
    folds = _assign_folds((volume.key for volume in volumes), num_folds, seed, f"volumes in {image_dir}")
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
    return _write_prepared_folder(output_dir, datalist, partial(_copy_volumes, volumes=volumes) if copy else None)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: one-line `error: ...` and exit status 1 on bad input."""
    from scripts.prepare_folder import prepare_folder

    commands = {
        "polyp": prepare_polyp,
        "footulcer": prepare_footulcer,
        "hippocampus": prepare_hippocampus,
        "folder": prepare_folder,
    }
    try:
        fire.Fire(commands, command=list(argv) if argv is not None else None)
    except DataPreparationError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    # run the importable module, so that scripts/prepare_folder.py shares its classes (one DataPreparationError)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scripts.prepare_data import main as package_main

    package_main()
