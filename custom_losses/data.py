"""Datalist access for the bundles, with clear errors before any training starts."""

from __future__ import annotations

import os
from pathlib import Path

from monai.data import load_decathlon_datalist


def load_split(datalist_file: str | os.PathLike, dataset_dir: str | os.PathLike, split: str) -> list[dict]:
    """Items of ``split`` (``training`` or ``test``) with paths resolved against ``dataset_dir``.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file and the problem: missing or empty
    ``dataset_dir``, missing datalist, missing split, an entry whose image or label file does not exist.
    """
    dataset_dir, datalist_file = Path(dataset_dir), Path(datalist_file)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"dataset_dir {dataset_dir} does not exist (prepare it with scripts/prepare_data.py)")
    if not any(dataset_dir.iterdir()):
        raise FileNotFoundError(f"dataset_dir {dataset_dir} is empty (prepare it with scripts/prepare_data.py)")
    if not datalist_file.is_file():
        raise FileNotFoundError(f"datalist {datalist_file} does not exist (prepare it with scripts/prepare_data.py)")
    try:
        items = load_decathlon_datalist(datalist_file, data_list_key=split, base_dir=dataset_dir)
    except ValueError as error:
        raise ValueError(f"datalist {datalist_file}: {error}") from error
    for index, item in enumerate(items):
        for key in ("image", "label"):
            if key in item and not Path(item[key]).is_file():
                raise FileNotFoundError(f"datalist {datalist_file}: {split}[{index}] {key} {item[key]} does not exist")
    return items


def fold_split(datalist_file: str | os.PathLike, dataset_dir: str | os.PathLike, fold: int, role: str) -> list[dict]:
    """Training items of the other folds (``role="train"``) or of ``fold`` itself (``role="validate"``)."""
    if role not in ("train", "validate"):
        raise ValueError(f"role must be 'train' or 'validate', got {role!r}")
    items = load_split(datalist_file, dataset_dir, "training")
    folds = sorted({item.get("fold") for item in items if "fold" in item})
    if not folds:
        raise ValueError(f"datalist {datalist_file}: training items carry no 'fold' key")
    if fold not in folds:
        raise ValueError(f"fold {fold!r} does not exist in {datalist_file}: folds are {folds}")
    if role == "validate":
        return [item for item in items if item.get("fold") == fold]
    return [item for item in items if item.get("fold") != fold]
