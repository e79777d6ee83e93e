"""Inference on a folder that may hold bad files: check every file first, predict the readable ones,
write each prediction atomically and a manifest of what happened (``predictions/manifest.csv``).

``inference_items`` is the inference config's datalist: it lists the folder's image files (2D: PNG, JPEG,
BMP, TIFF; 3D: NIfTI), ignores the other files a user keeps there (notes, spreadsheets, ``Thumbs.db``,
hidden files), opens every image and, before anything is predicted, either stops at the first bad one
(``strict``) or reports each bad one in one line and skips it. The manifest lists every input with its
output, status (``pending`` until the run completes, then ``ok`` or ``missing``; ``skipped`` for bad
files) and reason. ``AtomicPILWriter`` / ``AtomicNibabelWriter`` write a prediction to a hidden
temporary file and rename it into place, so a killed run leaves only complete predictions.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events
from monai.data import NibabelWriter, PILWriter

from .atomic import write_csv_atomic
from .data import volume_problem
from .errors import InputError, InputNotFoundError

IMAGE_SUFFIXES = {"2d": (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"), "3d": (".nii.gz", ".nii")}
MANIFEST_NAME = "manifest.csv"
MANIFEST_FIELDS = ["input", "output", "status", "reason"]


def _image_suffix(path: Path, kind: str) -> str | None:
    name = path.name.lower()
    return next((s for s in IMAGE_SUFFIXES[kind] if name.endswith(s)), None)


def output_name(path: Path, kind: str, postfix: str = "seg") -> str:
    """The prediction's file name, as MONAI's SaveImage names it (``<name>_<postfix><ext>``)."""
    suffix = _image_suffix(path, kind) or path.suffix
    base = path.name[: -len(suffix)]
    return f"{base}_{postfix}{'.png' if kind == '2d' else '.nii.gz'}"


def check_2d(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.size[0] < 1 or image.size[1] < 1:
            raise ValueError(f"empty image {image.size}")


def check_3d(path: Path) -> None:
    import nibabel

    volume = nibabel.load(path)
    problem = volume_problem(volume)
    if problem:
        raise ValueError(problem)
    np.asarray(volume.dataobj[(slice(0, 1),) * 3])  # the data, not only the header, can be read


def inference_items(
    input_dir: str | os.PathLike, prediction_dir: str | os.PathLike, strict: bool = False, kind: str = "2d"
) -> list[dict]:
    """Datalist of the readable images in ``input_dir``; writes ``prediction_dir/manifest.csv`` first."""
    if kind not in IMAGE_SUFFIXES:
        raise ValueError(f"kind must be one of {sorted(IMAGE_SUFFIXES)}, got {kind!r}")
    folder = Path(input_dir)
    if not folder.is_dir():
        raise InputNotFoundError(f"input_dir {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    candidates = [p for p in files if _image_suffix(p, kind)]
    if not candidates:
        raise InputError(f"input_dir {folder} holds no {'/'.join(IMAGE_SUFFIXES[kind])} files")
    check = check_2d if kind == "2d" else check_3d
    logger = logging.getLogger(__name__)
    rows, items = [], []
    for path in candidates:
        output = (Path(prediction_dir) / output_name(path, kind)).absolute()
        try:
            check(path)
        except Exception as error:  # any decoder error means the file cannot be predicted
            reason = " ".join(f"{type(error).__name__}: {error}".split())
            if strict:
                raise InputError(f"input {path} is unreadable or not a {kind.upper()} image: {reason}") from None
            print(f"skipped {path}: {reason}", flush=True)
            rows.append({"input": str(path.absolute()), "output": "", "status": "skipped", "reason": reason})
            continue
        rows.append({"input": str(path.absolute()), "output": str(output), "status": "pending", "reason": ""})
        items.append({"image": str(path)})
    skipped = len(candidates) - len(items)
    ignored = len(files) - len(candidates)
    message = f"{len(items)} of {len(candidates)} image file(s) in {folder} to predict"
    message += f", {skipped} skipped as unreadable" if skipped else ""
    message += f" ({ignored} other file(s) ignored)" if ignored else ""
    print(message, flush=True)
    logger.info(message)
    if not items:
        raise InputError(f"input_dir {folder}: none of its {len(candidates)} image file(s) can be read")
    write_csv_atomic(Path(prediction_dir) / MANIFEST_NAME, rows, MANIFEST_FIELDS)
    return items


class ManifestUpdater:
    """When inference completes, mark each pending manifest row ``ok`` (its prediction exists) or ``missing``."""

    def __init__(self, prediction_dir: str | os.PathLike) -> None:
        self.path = Path(prediction_dir) / MANIFEST_NAME

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        with open(self.path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            if row["status"] == "pending":
                row["status"] = "ok" if Path(row["output"]).is_file() else "missing"
        write_csv_atomic(self.path, rows, MANIFEST_FIELDS)
        counts = {status: sum(r["status"] == status for r in rows) for status in ("ok", "skipped", "missing")}
        logging.getLogger(__name__).info("manifest %s: %s", self.path, counts)


class _AtomicWrite:
    """Write to a hidden temporary file beside the target, then rename it into place."""

    def write(self, filename, verbose: bool = True, **kwargs):
        path = Path(filename)
        suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
        partial = path.with_name(f".{path.name[: -len(suffix)]}.partial{suffix}")
        try:
            super().write(str(partial), verbose=False, **kwargs)
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if verbose:
            logging.getLogger(__name__).info("writing: %s", path)


class AtomicPILWriter(_AtomicWrite, PILWriter):
    """MONAI's PILWriter, writing atomically."""


class AtomicNibabelWriter(_AtomicWrite, NibabelWriter):
    """MONAI's NibabelWriter, writing atomically."""
