"""Inference on a folder that may hold bad files: check every file first, predict the readable ones,
write each prediction atomically and a manifest of what happened (``predictions/manifest.csv``).

``inference_items`` is the inference config's datalist: it lists the folder's image files (2D: PNG, JPEG,
BMP, TIFF; 3D: NIfTI), ignores the other files a user keeps there (notes, spreadsheets, ``Thumbs.db``,
hidden files), opens every image with the training checks and, before anything is predicted, either stops
at the first bad one (``strict``) or reports each bad one in one line and skips it. Also skipped: an image
whose prediction would overwrite another's (``a.png`` and ``a.jpg`` both give ``a_seg.png``: the first in
name order is predicted) and images in subfolders (only the folder's own files are read). The manifest
lists every input with its output, status (``pending`` until the run ends, then ``ok`` or ``missing``;
``not run`` when the checkpoint is bad or the run fails; ``skipped``) and reason. ``AtomicPILWriter`` /
``AtomicNibabelWriter`` write a prediction to a hidden temporary file and rename it into place, so a killed
run leaves only complete predictions.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import NibabelWriter, PILWriter

from .atomic import write_csv_atomic
from .conventions import IMAGE_SUFFIXES
from .data import image_2d_problem, volume_problem
from .errors import InputError, InputNotFoundError
from .handlers import loadable_checkpoint

MANIFEST_NAME = "manifest.csv"
MANIFEST_FIELDS = ["input", "output", "status", "reason"]
NOT_RUN = "not run"
STATUSES = ("ok", "skipped", "missing", NOT_RUN)


def _image_suffix(path: Path, kind: str) -> str | None:
    name = path.name.lower()
    return next((s for s in IMAGE_SUFFIXES[kind] if name.endswith(s)), None)


def output_name(path: Path, kind: str, postfix: str = "seg") -> str:
    """The prediction's file name, as MONAI's SaveImage names it (``<name>_<postfix><ext>``)."""
    suffix = _image_suffix(path, kind) or path.suffix
    base = path.name[: -len(suffix)]
    return f"{base}_{postfix}{'.png' if kind == '2d' else '.nii.gz'}"


def _problem_2d(path: Path) -> str | None:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image_2d_problem(image)


def _problem_3d(path: Path) -> str | None:
    import nibabel

    volume = nibabel.load(path)
    problem = volume_problem(volume)
    if problem is None:
        np.asarray(volume.dataobj[(slice(0, 1),) * 3])  # the data, not only the header, can be read
    return problem


def input_problem(path: Path, kind: str) -> str | None:
    """Why an image file cannot be predicted (the training checks of ``custom_losses.data``), or None."""
    try:
        return (_problem_2d if kind == "2d" else _problem_3d)(path)
    except Exception as error:  # any decoder error means the file cannot be predicted
        return f"is unreadable or not a {kind.upper()} image: {type(error).__name__}: {error}"


def _nested_images(folder: Path, kind: str, prediction_dir: Path) -> list[Path]:
    """Image files in the subfolders of ``folder``, hidden folders and the predictions themselves left out."""
    found, predictions = [], prediction_dir.resolve()
    for root, dirs, names in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (root_path / d).resolve() != predictions)
        if root_path != folder:
            found += [root_path / n for n in sorted(names) if not n.startswith(".") and _image_suffix(Path(n), kind)]
    return found


def _one_line(text: str) -> str:
    return " ".join(text.split())


def inference_items(
    input_dir: str | os.PathLike,
    prediction_dir: str | os.PathLike,
    strict: bool = False,
    kind: str = "2d",
    checkpoint: str | os.PathLike | None = None,
    network: torch.nn.Module | None = None,
) -> list[dict]:
    """Datalist of the predictable images in ``input_dir``; writes ``prediction_dir/manifest.csv`` first.

    Skipped (an error with ``strict``): files the training checks refuse, a file whose prediction would have
    the name of an earlier one's (``a.png`` and ``a.jpg``: both ``a_seg.png``), images in subfolders.
    ``checkpoint`` (and the ``network`` it must fit) is checked after the inputs: a bad one leaves a manifest
    whose rows say ``not run`` and why, and raises.
    """
    if kind not in IMAGE_SUFFIXES:
        raise ValueError(f"kind must be one of {sorted(IMAGE_SUFFIXES)}, got {kind!r}")
    folder, prediction_dir = Path(input_dir), Path(prediction_dir).absolute()
    if not folder.is_dir():
        raise InputNotFoundError(f"input_dir {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    nested = _nested_images(folder, kind, prediction_dir)
    candidates = [p for p in files if _image_suffix(p, kind)]
    if not candidates and not nested:
        raise InputError(f"input_dir {folder} holds no {'/'.join(IMAGE_SUFFIXES[kind])} files")
    logger = logging.getLogger(__name__)
    rows, items, claimed = [], [], {}
    skipped = {"unreadable": 0, "name clash": 0, "in subfolders": 0}

    def skip(path: Path, why: str, reason: str) -> None:
        if strict:
            raise InputError(f"input {path} {reason}")
        print(f"skipped {path}: {reason}", flush=True)
        rows.append({"input": str(path.absolute()), "output": "", "status": "skipped", "reason": reason})
        skipped[why] += 1

    for path in candidates:
        output = prediction_dir / output_name(path, kind)
        problem = input_problem(path, kind)
        if problem:
            skip(path, "unreadable", _one_line(problem))
            continue
        other = claimed.setdefault(output.name.casefold(), path)
        if other != path:
            skip(path, "name clash", f"would overwrite the prediction {output.name} of {other}: rename one of them")
            continue
        rows.append({"input": str(path.absolute()), "output": str(output), "status": "pending", "reason": ""})
        items.append({"image": str(path)})
    for path in nested:
        reason = f"is in a subfolder: inference reads the files of {folder} only (run it on {path.parent} too)"
        skip(path, "in subfolders", reason)

    total, ignored = len(candidates) + len(nested), len(files) - len(candidates)
    message = f"{len(items)} of {total} image file(s) in {folder} to predict"
    message += f", {skipped['unreadable']} skipped as unreadable" if skipped["unreadable"] else ""
    message += f", {skipped['name clash']} skipped as name clashes" if skipped["name clash"] else ""
    message += f", {skipped['in subfolders']} in subfolders skipped" if skipped["in subfolders"] else ""
    message += f" ({ignored} other file(s) ignored)" if ignored else ""
    print(message, flush=True)
    logger.info(message)
    if not items:
        raise InputError(f"input_dir {folder}: none of its {total} image file(s) can be predicted (reasons above)")
    if checkpoint is not None:
        try:
            loadable_checkpoint(checkpoint, network)
        except InputError as error:
            for row in rows:
                if row["status"] == "pending":
                    row.update(status=NOT_RUN, reason=_one_line(str(error)))
            write_csv_atomic(prediction_dir / MANIFEST_NAME, rows, MANIFEST_FIELDS)
            raise
    write_csv_atomic(prediction_dir / MANIFEST_NAME, rows, MANIFEST_FIELDS)
    return items


def _input_files(output) -> list[str]:
    """The input file of each item of an evaluator's output (a decollated list or one batch dict)."""
    names = []
    for item in output if isinstance(output, list) else [output]:
        meta = getattr(item.get("image") if isinstance(item, dict) else None, "meta", None) or {}
        name = meta.get("filename_or_obj")
        names += [str(n) for n in (name if isinstance(name, (list, tuple)) else [name]) if n]
    return names


class ManifestUpdater:
    """Marks each pending manifest row when inference ends: ``ok`` (predicted, its file exists) or ``missing``;
    if the run fails or is interrupted, the rows not predicted yet become ``not run`` with the error.

    Attach it before ``StatsHandler``: ignite calls only the first ``EXCEPTION_RAISED`` handler that
    re-raises (MONAI's convention), and this one re-raises.
    """

    def __init__(self, prediction_dir: str | os.PathLike) -> None:
        self.path = Path(prediction_dir) / MANIFEST_NAME
        self.predicted: set[str] = set()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.failed)

    def collect(self, engine: Engine) -> None:
        self.predicted.update(str(Path(name).absolute()) for name in _input_files(engine.state.output))

    def failed(self, engine: Engine, error: BaseException) -> None:
        self(engine, error)
        raise error

    def __call__(self, engine: Engine | None = None, error: BaseException | None = None) -> None:
        with open(self.path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            if row["status"] != "pending":
                continue
            if error is None or row["input"] in self.predicted:  # a completed run went through every item
                row["status"] = "ok" if Path(row["output"]).is_file() else "missing"
            else:
                row.update(status=NOT_RUN, reason=_one_line(f"{type(error).__name__}: {error}")[:300])
        write_csv_atomic(self.path, rows, MANIFEST_FIELDS)
        counts = {status: sum(r["status"] == status for r in rows) for status in STATUSES}
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
