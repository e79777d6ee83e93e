"""Where a study keeps its runs (no heavy imports: the runner needs it without matplotlib or SciPy)."""

from __future__ import annotations

import json
from pathlib import Path


class ReportInputError(ValueError):
    """A per-image CSV that cannot be read: the message names the file and the problem."""


def run_path(out: Path, bundle: str, seed: int) -> Path:
    """Folder of one (bundle, seed): ``models/fold<k>``, ``eval/fold<k>``, ``logs/``, ``fold<k>.log``."""
    return out / "runs" / bundle / f"seed{seed}"


def discover_runs(out: Path) -> tuple[list[str], list[int], list[int]]:
    """Bundles, seeds and folds with an evaluation in a study folder."""
    summaries = sorted((out / "runs").glob("*/seed*/eval/fold*/summary.json"))
    names = sorted({p.parents[3].name for p in summaries})
    seeds = sorted({int(p.parents[2].name[4:]) for p in summaries})
    folds = sorted({int(p.parent.name[4:]) for p in summaries})
    return names, seeds, folds


def settings_file(run_dir: Path, fold: int | str) -> Path:
    """The bundle overrides a run was trained with, seed included: written when its training starts. The
    report states them per run; ``export_bundle.py`` carries them into the shared bundle."""
    return Path(run_dir) / f"fold{fold}_settings.json"


def read_settings(run_dir: Path, fold: int | str) -> dict | None:
    """A run's recorded settings, or None for a run that recorded none (trained by an earlier version)."""
    path = settings_file(run_dir, fold)
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text())["settings"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ReportInputError(f"{path}: not a run settings file ({error!r})") from None
    if not isinstance(settings, dict):
        raise ReportInputError(f"{path}: 'settings' is not an object")
    return settings
