"""Where a study keeps its runs (no heavy imports: the runner needs it without matplotlib or SciPy)."""

from __future__ import annotations

from pathlib import Path


class ReportInputError(ValueError):
    """A per-image CSV that cannot be read: the message names the file and the problem."""


def run_path(out: Path, bundle: str, seed: int) -> Path:
    """Folder of one (bundle, seed): ``models/fold<k>``, ``eval/fold<k>``, ``logs/``, ``fold<k>.log``."""
    return out / "runs" / bundle / f"seed{seed}"


def overrides_path(run_dir: Path, fold: int | str) -> Path:
    """The bundle overrides fold ``fold`` of a run was trained with (JSON, written when its training starts);
    ``export_bundle.py`` carries them into the shared bundle."""
    return Path(run_dir) / f"overrides_fold{fold}.json"


def discover_runs(out: Path) -> tuple[list[str], list[int], list[int]]:
    """Bundles, seeds and folds with an evaluation in a study folder."""
    summaries = sorted((out / "runs").glob("*/seed*/eval/fold*/summary.json"))
    names = sorted({p.parents[3].name for p in summaries})
    seeds = sorted({int(p.parents[2].name[4:]) for p in summaries})
    folds = sorted({int(p.parent.name[4:]) for p in summaries})
    return names, seeds, folds
