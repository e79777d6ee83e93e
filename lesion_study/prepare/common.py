"""What every preparation shares: pairing files by stem, checking in parallel, folds, and writing a prepared
folder (copies plus ``datalist.json`` in MONAI's ``load_decathlon_datalist`` format) atomically.

Used by the dataset preparations (``datasets.py``) and the own-folder one (``folder.py``).
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

import numpy as np
from PIL import Image

from custom_losses.conventions import lesion_pixels

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


DATALIST_NAME = "datalist.json"


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


def raise_problems(problems: Sequence[str]) -> None:
    """Raise one DataPreparationError for the first problem, counting the others."""
    if problems:
        more = f" (and {len(problems) - 1} more problem(s) in the input)" if len(problems) > 1 else ""
        raise DataPreparationError(problems[0] + more)


def matching_suffix(path: Path, suffixes: Sequence[str]) -> str | None:
    """The first of `suffixes` that the file name ends with, ignoring case; None if none does."""
    name = path.name.lower()
    return next((suffix for suffix in suffixes if name.endswith(suffix)), None)


def file_key(path: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> str:
    """The file name without its suffix from `suffixes` ("0011" for 0011.jpg, "hippocampus_001" for .nii.gz)."""
    suffix = matching_suffix(path, suffixes)
    return path.name[: -len(suffix)] if suffix else path.stem


def data_files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Files directly in `folder` ending with one of `suffixes` (any case), sorted; hidden and ._ files ignored."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and matching_suffix(path, suffixes) and not path.name.startswith(".")
    )


def index_by_key(paths: Iterable[Path], kind: str, problems: list[str], suffixes: Sequence[str]) -> dict[str, Path]:
    """Map file key (the name without its suffix) -> file, keeping the first and recording duplicate keys."""
    found: dict[str, Path] = {}
    for path in paths:
        key = file_key(path, suffixes)
        if key in found:
            problems.append(f"duplicate {kind} stem '{key}': {found[key]} and {path}")
        else:
            found[key] = path
    return found


def files_by_stem(
    folder: Path, kind: str, problems: list[str], suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> dict[str, Path]:
    """Map stem -> file for the data files in `folder`, recording missing/empty folders and duplicate stems."""
    if not folder.is_dir():
        problems.append(f"{kind} folder not found: {folder}")
        return {}
    found = index_by_key(data_files(folder, suffixes), kind, problems, suffixes)
    if not found:
        problems.append(f"{kind} folder has no {'/'.join(suffixes)} files: {folder}")
    return found


def pair_by_stem(
    image_dir: Path,
    mask_dir: Path,
    problems: list[str],
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
    mask_kind: str = "mask",
) -> list[tuple[Path, Path]]:
    """Pair images and masks (or labels) by file stem, appending every problem found to `problems`."""
    images = files_by_stem(image_dir, "image", problems, suffixes)
    masks = files_by_stem(mask_dir, mask_kind, problems, suffixes)
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
    pairs = pair_by_stem(Path(image_dir), Path(mask_dir), problems)
    raise_problems(problems)
    return pairs


def unreadable(kind: str, path: Path, what: str, error: Exception) -> DataPreparationError:
    """One-line error for a file that cannot be decoded, with the decoder's reason."""
    reason = " ".join(f"{type(error).__name__}: {error}".split())
    return DataPreparationError(f"cannot read {kind} {path}: corrupt or not {what} ({reason})")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def open_fully(path: Path, kind: str) -> Image.Image:
    """Open and fully decode `path`, so that corrupt or truncated files fail here, naming the file."""
    try:
        image = Image.open(path)
        image.load()
    except Exception as error:  # any decoder error means the same thing here
        raise unreadable(kind, path, "an image", error) from None
    return image


def binarized(mask: Image.Image) -> Image.Image:
    """Grayscale 0/255 mask: `lesion_pixels` after conversion to "L" are lesion."""
    return mask.convert("L").point(lambda value: 255 if lesion_pixels(value) else 0)


def check_and_convert(pair: SourcePair, size: int | None) -> PreparedPair:
    """Decode one pair, check it, and (when `size`) make its resized PNG copies in memory."""
    image = open_fully(pair.image_path, "image")
    mask = open_fully(pair.mask_path, "mask")
    image_size, mask_size = image.size, mask.size
    if image_size != mask_size:
        raise DataPreparationError(
            f"size mismatch: image {pair.image_path} is {image_size[0]}x{image_size[1]} "
            f"but mask {pair.mask_path} is {mask_size[0]}x{mask_size[1]}"
        )
    binary = binarized(mask)
    source_mask_is_empty = binary.getbbox() is None
    if size is None:
        return PreparedPair(pair, None, None, source_mask_is_empty, source_mask_is_empty)
    resized_image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    resized_mask = binarized(binary.resize((size, size), Image.Resampling.BILINEAR))
    return PreparedPair(
        pair, png_bytes(resized_image), png_bytes(resized_mask), resized_mask.getbbox() is None, source_mask_is_empty
    )


def check_in_parallel(
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
    raise_problems([str(outcome) for outcome in outcomes if isinstance(outcome, DataPreparationError)])
    return [outcome for outcome in outcomes if not isinstance(outcome, DataPreparationError)]


def check_all_pairs(pairs: Sequence[SourcePair], size: int | None, max_workers: int) -> list[PreparedPair]:
    """Decode and check every image/mask pair in a thread pool (and make the resized copies when `size`)."""
    print(f"checking{' and resizing' if size else ''} {len(pairs)} pairs with {max_workers} threads", flush=True)
    return check_in_parallel(partial(check_and_convert, size=size), pairs, max_workers)


def collect_pairs(folders: Sequence[tuple[Path, Path, str, str, bool]], problems: list[str]) -> list[SourcePair]:
    """Pairs of every (image_dir, mask_dir, split, source, lesion_free_folder), recording structural problems."""
    pairs: list[SourcePair] = []
    for image_dir, mask_dir, split, source, lesion_free in folders:
        found = pair_by_stem(image_dir, mask_dir, problems)
        print(f"{source}: {len(found)} image/mask pairs in {image_dir.parent}", flush=True)
        pairs.extend(SourcePair(image, mask, split, source, lesion_free) for image, mask in found)
    return pairs


def copy_name_clashes(pairs: Iterable[SourcePair]) -> list[str]:
    """Copies of one split share a folder, so image stems must be unique within a split: one problem per clash."""
    problems: list[str] = []
    first_by_split_and_stem: dict[tuple[str, str], Path] = {}
    for pair in pairs:
        key = (pair.split, pair.image_path.stem)
        if key in first_by_split_and_stem:
            problems.append(f"duplicate image stem '{key[1]}': {first_by_split_and_stem[key]} and {pair.image_path}")
        first_by_split_and_stem.setdefault(key, pair.image_path)
    return problems


def assign_folds(stems: Iterable[str], num_folds: int, seed: int, what: str) -> dict[str, int]:
    """Folds 1..num_folds from a seeded shuffle of the sorted stems; fold sizes differ by at most one.

    `what` names the items in the error raised when there are fewer than `num_folds` of them.
    """
    sorted_stems = sorted(stems)
    if len(sorted_stems) < num_folds:
        raise DataPreparationError(f"{len(sorted_stems)} {what} cannot fill {num_folds} folds")
    order = np.random.default_rng(seed).permutation(len(sorted_stems))
    return {sorted_stems[index]: rank % num_folds + 1 for rank, index in enumerate(order)}


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
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


def move_into_place(staging_dir: Path, output_dir: Path) -> None:
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


def copy_paths(pair: SourcePair) -> tuple[str, str]:
    """Paths of a pair's resized image and mask copies, relative to the output folder."""
    stem = pair.image_path.stem
    return f"{pair.split}/images/{stem}.png", f"{pair.split}/masks/{stem}.png"


def write_copies(staging_dir: Path, prepared: Sequence[PreparedPair], max_workers: int) -> None:
    """Write the encoded PNG copies into `staging_dir` in a thread pool."""
    for split in sorted({item.pair.split for item in prepared}):
        (staging_dir / split / "images").mkdir(parents=True)
        (staging_dir / split / "masks").mkdir(parents=True)

    def write(item: PreparedPair) -> None:
        if item.image_png is None or item.mask_png is None:
            raise RuntimeError(f"no resized copy of {item.pair.image_path}")
        image_path, mask_path = copy_paths(item.pair)
        (staging_dir / image_path).write_bytes(item.image_png)
        (staging_dir / mask_path).write_bytes(item.mask_png)

    with ThreadPoolExecutor(max_workers=max_workers) as executor:
        list(executor.map(write, prepared))


def datalist_entry(item: PreparedPair, resized: bool, fold: int | None, lesion_free: bool) -> dict:
    """One datalist item: image/label paths (relative copies, or absolute originals), fold, lesion_free, source."""
    if resized:
        image_path, label_path = copy_paths(item.pair)
    else:
        image_path, label_path = str(item.pair.image_path.absolute()), str(item.pair.mask_path.absolute())
    entry: dict = {"image": image_path, "label": label_path}
    if fold is not None:
        entry["fold"] = fold
    entry["lesion_free"] = lesion_free
    entry["source"] = item.pair.source
    return entry


def require_positive_int(name: str, value: object, allow_none: bool = False) -> None:
    """Raise DataPreparationError unless `value` is a positive int (or None when `allow_none`)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataPreparationError(
            f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}"
        )


def check_options(num_folds: int, output_dir: Path, overwrite: bool, max_workers: int | None) -> int:
    """Check the options every dataset shares; return the number of threads to use (`max_workers`, or the
    default of Python's ThreadPoolExecutor)."""
    require_positive_int("num_folds", num_folds)
    check_output_dir(output_dir, overwrite)
    return max_workers or min(32, (os.cpu_count() or 1) + 4)


def write_prepared_folder(output_dir: Path, datalist: dict, write_files: Callable[[Path], None] | None = None) -> Path:
    """Create `output_dir` atomically: `write_files(staging_dir)`, then the datalist, then one rename into place.

    Nothing is left behind when anything fails. Returns the path of the datalist.
    """
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        if write_files is not None:
            write_files(staging_dir)
        (staging_dir / DATALIST_NAME).write_text(json.dumps(datalist, indent=1) + "\n")
        move_into_place(staging_dir, output_dir)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise
    print(f"{len(datalist['training'])} training and {len(datalist['test'])} test items in {output_dir}", flush=True)
    return output_dir / DATALIST_NAME


def write_image_dataset(
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

    entries = [datalist_entry(item, size is not None, fold(item), lesion_free(item)) for item in prepared]
    datalist = {
        **header,
        "size": size,
        "training": [entry for entry in entries if "fold" in entry],
        "test": [entry for entry in entries if "fold" not in entry],
    }
    write_files = None
    if size is not None:
        print(f"writing {2 * len(prepared)} PNG files", flush=True)
        write_files = partial(write_copies, prepared=prepared, max_workers=max_workers)
    datalist_path = write_prepared_folder(output_dir, datalist, write_files)
    masks_emptied = sum(item.mask_is_empty and not item.source_mask_is_empty for item in prepared)
    if masks_emptied:
        print(f"warning: {masks_emptied} mask(s) with a lesion are empty at size {size}", file=sys.stderr)
    return datalist_path


def empty_training_masks_to_test(prepared: Sequence[PreparedPair], source: str) -> list[PreparedPair]:
    """The study's protocol (models train only on images with a lesion): training images whose mask is empty
    move to the test split under ``source``, listed after the other test images."""
    moved = [
        replace(item, pair=replace(item.pair, split="test", source=source))
        for item in prepared
        if item.pair.split == "train" and item.source_mask_is_empty
    ]
    kept = [item for item in prepared if not (item.pair.split == "train" and item.source_mask_is_empty)]
    return kept + moved
