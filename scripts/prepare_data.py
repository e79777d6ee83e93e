"""Prepare the polyp datasets (Kvasir-SEG for training, EndoTect 2021 test for testing) for the bundles.

Reads the official on-disk layouts, checks every file before writing anything, writes resized PNG copies and a
`datalist.json` in MONAI's `load_decathlon_datalist` format. Usage:

    python scripts/prepare_data.py polyp --kvasir_dir=DIR --endotect_dir=DIR --output_dir=DIR [--size=352]
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import fire
import numpy as np
from PIL import Image

__all__ = ["DataPreparationError", "PreparedPair", "SourcePair", "pair_images_and_masks", "prepare_polyp"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_THRESHOLD = 127  # mask pixels > 127 (after conversion to grayscale "L") are lesion
DATALIST_NAME = "datalist.json"


class DataPreparationError(ValueError):
    """Bad input data or output folder; the message is one line naming the file or folder and the problem."""


@dataclass(frozen=True)
class SourcePair:
    """One image/mask pair of the input and where its copies go (`split` is "train" or "test")."""

    image_path: Path
    mask_path: Path
    split: str
    source: str
    lesion_free_folder: bool = False  # True for frames that are lesion-free by construction of the dataset


@dataclass(frozen=True)
class PreparedPair:
    """A checked pair: the encoded PNG copies (None when not resizing) and whether the final mask is empty."""

    pair: SourcePair
    image_png: bytes | None
    mask_png: bytes | None
    mask_is_empty: bool


def _raise_problems(problems: Sequence[str]) -> None:
    """Raise one DataPreparationError for the first problem, counting the others."""
    if problems:
        more = f" (and {len(problems) - 1} more problem(s) in the input)" if len(problems) > 1 else ""
        raise DataPreparationError(problems[0] + more)


def _image_files(folder: Path) -> list[Path]:
    """Image files (.jpg/.jpeg/.png, any case) directly in `folder`, sorted; hidden files are ignored."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def _files_by_stem(folder: Path, kind: str, problems: list[str]) -> dict[str, Path]:
    """Map stem -> file for the images in `folder`, recording missing/empty folders and duplicate stems."""
    if not folder.is_dir():
        problems.append(f"{kind} folder not found: {folder}")
        return {}
    files_by_stem: dict[str, Path] = {}
    for path in _image_files(folder):
        if path.stem in files_by_stem:
            problems.append(f"duplicate {kind} stem '{path.stem}': {files_by_stem[path.stem]} and {path}")
        else:
            files_by_stem[path.stem] = path
    if not files_by_stem:
        problems.append(f"{kind} folder has no .jpg/.jpeg/.png files: {folder}")
    return files_by_stem


def _pair_by_stem(image_dir: Path, mask_dir: Path, problems: list[str]) -> list[tuple[Path, Path]]:
    """Pair images and masks by file stem, appending every problem found to `problems`."""
    images = _files_by_stem(image_dir, "image", problems)
    masks = _files_by_stem(mask_dir, "mask", problems)
    if not images or not masks:
        return []
    problems.extend(
        f"image without mask: {images[stem]} (no {stem}.jpg/.jpeg/.png in {mask_dir})"
        for stem in sorted(images.keys() - masks.keys())
    )
    problems.extend(
        f"mask without image: {masks[stem]} (no {stem}.jpg/.jpeg/.png in {image_dir})"
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
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise DataPreparationError(f"cannot read {kind} {path}: corrupt or not an image ({reason})") from None
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
    if size is None:
        return PreparedPair(pair, None, None, mask_is_empty=binary_mask.getbbox() is None)
    resized_image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    resized_mask = _binary_mask(binary_mask.resize((size, size), Image.Resampling.BILINEAR))
    return PreparedPair(pair, _png_bytes(resized_image), _png_bytes(resized_mask), resized_mask.getbbox() is None)


def _check_all_pairs(pairs: Sequence[SourcePair], size: int | None, max_workers: int) -> list[PreparedPair]:
    """Decode and check every pair in a thread pool; raise one error listing the first problem if any failed."""
    outcomes: list[PreparedPair | DataPreparationError] = []

    def check(pair: SourcePair) -> PreparedPair | DataPreparationError:
        try:
            return _check_and_convert(pair, size)
        except DataPreparationError as error:
            return error

    with ThreadPoolExecutor(max_workers=max_workers) as executor:
        outcomes = list(executor.map(check, pairs))
    _raise_problems([str(outcome) for outcome in outcomes if isinstance(outcome, DataPreparationError)])
    return [outcome for outcome in outcomes if isinstance(outcome, PreparedPair)]


def _collect_polyp_pairs(kvasir_dir: Path, endotect_dir: Path) -> list[SourcePair]:
    """All Kvasir-SEG (train) and EndoTect (test) pairs, or DataPreparationError naming every structural problem."""
    problems: list[str] = []
    folders: list[tuple[Path, Path, str, str, bool]] = [
        (kvasir_dir / "images", kvasir_dir / "masks", "train", "kvasir-seg", False),
        (endotect_dir / "images", endotect_dir / "masks", "test", "endotect", False),
        (
            endotect_dir / "ulcerative-colitis_images",
            endotect_dir / "ulcerative-colitis_masks",
            "test",
            "endotect-ulcerative-colitis",
            True,
        ),
    ]
    pairs: list[SourcePair] = []
    for image_dir, mask_dir, split, source, lesion_free in folders:
        found = _pair_by_stem(image_dir, mask_dir, problems)
        print(f"{source}: {len(found)} image/mask pairs in {image_dir.parent}", flush=True)
        pairs.extend(SourcePair(image, mask, split, source, lesion_free) for image, mask in found)
    # copies of one split share a folder, so stems must be unique within a split
    first_by_split_and_stem: dict[tuple[str, str], Path] = {}
    for pair in pairs:
        key = (pair.split, pair.image_path.stem)
        if key in first_by_split_and_stem:
            problems.append(f"duplicate image stem '{key[1]}': {first_by_split_and_stem[key]} and {pair.image_path}")
        first_by_split_and_stem.setdefault(key, pair.image_path)
    _raise_problems(problems)
    return pairs


def _assign_folds(stems: Iterable[str], num_folds: int, seed: int) -> dict[str, int]:
    """Folds 1..num_folds from a seeded shuffle of the sorted stems; fold sizes differ by at most one."""
    sorted_stems = sorted(stems)
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


def _datalist_entry(item: PreparedPair, resized: bool, folds: dict[str, int]) -> dict:
    """One datalist item: image/label paths (relative copies, or absolute originals), fold, lesion_free, source."""
    if resized:
        image_path, label_path = _copy_paths(item.pair)
    else:
        image_path, label_path = str(item.pair.image_path.absolute()), str(item.pair.mask_path.absolute())
    entry: dict = {"image": image_path, "label": label_path}
    if item.pair.split == "train":
        entry["fold"] = folds[item.pair.image_path.stem]
        entry["lesion_free"] = item.mask_is_empty
    else:
        entry["lesion_free"] = item.pair.lesion_free_folder
    entry["source"] = item.pair.source
    return entry


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
            ulcerative-colitis_masks/ (lesion-free frames); pairs match by file stem, .jpg/.jpeg/.png accepted.
        output_dir: created with train/ and test/ PNG copies and datalist.json (written atomically).
        size: copies are resized to size x size (image bilinear, mask bilinear then thresholded to 0/255);
            None makes no copies and the datalist points at the original files by absolute path.
        num_folds: training items get "fold" 1..num_folds from a seeded shuffle, balanced sizes.
        seed: seed of the fold shuffle.
        overwrite: replace an output_dir that already holds a datalist.json.
        max_workers: threads for decoding, resizing and writing (default: Python's ThreadPoolExecutor default).
    """
    kvasir_dir, endotect_dir, output_dir = Path(kvasir_dir), Path(endotect_dir), Path(output_dir).absolute()
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DataPreparationError(f"size must be a positive integer or None, got {size!r}")
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 1:
        raise DataPreparationError(f"num_folds must be a positive integer, got {num_folds!r}")
    _check_output_dir(output_dir, overwrite)
    workers = max_workers or min(32, (os.cpu_count() or 1) + 4)

    pairs = _collect_polyp_pairs(kvasir_dir, endotect_dir)
    num_training = sum(pair.split == "train" for pair in pairs)
    if num_training < num_folds:
        raise DataPreparationError(f"{num_training} training images in {kvasir_dir} cannot fill {num_folds} folds")
    print(f"checking{' and resizing' if size else ''} {len(pairs)} pairs with {workers} threads", flush=True)
    prepared = _check_all_pairs(pairs, size, workers)
    _raise_problems(
        [
            f"mask of a lesion-free frame is not empty: {item.pair.mask_path}"
            for item in prepared
            if item.pair.lesion_free_folder and not item.mask_is_empty
        ]
    )
    training_stems = [item.pair.image_path.stem for item in prepared if item.pair.split == "train"]
    folds = _assign_folds(training_stems, num_folds, seed)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        if size is not None:
            print(f"writing {2 * len(prepared)} PNG files", flush=True)
            _write_copies(staging_dir, prepared, workers)
        entries = [_datalist_entry(item, size is not None, folds) for item in prepared]
        datalist = {
            "name": "polyp",
            "description": "Kvasir-SEG (training, in folds) and EndoTect 2021 test frames incl. lesion-free ones",
            "labels": {"0": "background", "1": "lesion"},
            "num_folds": num_folds,
            "seed": seed,
            "size": size,
            "training": [entry for entry in entries if "fold" in entry],
            "test": [entry for entry in entries if "fold" not in entry],
        }
        (staging_dir / DATALIST_NAME).write_text(json.dumps(datalist, indent=1) + "\n")
        _move_into_place(staging_dir, output_dir)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise
    masks_emptied = sum(item.mask_is_empty and not item.pair.lesion_free_folder for item in prepared)
    if masks_emptied:
        print(f"warning: {masks_emptied} mask(s) of frames with a lesion are empty at this size", file=sys.stderr)
    print(f"{len(datalist['training'])} training and {len(datalist['test'])} test items in {output_dir}", flush=True)
    return output_dir / DATALIST_NAME


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: one-line `error: ...` and exit status 1 on bad input."""
    try:
        fire.Fire({"polyp": prepare_polyp}, command=list(argv) if argv is not None else None)
    except DataPreparationError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
