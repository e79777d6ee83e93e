"""Where a study keeps its runs, and what says a stage is done (no heavy imports: the runner needs it
without matplotlib or SciPy).

    STUDY/study.json                                   the study commands' dataset, settings and run statuses
    STUDY/runs/<bundle>/seed<s>/fold<k>.log            a run's console output
    STUDY/runs/<bundle>/seed<s>/fold<k>_settings.json  the bundle overrides it was trained with
    STUDY/runs/<bundle>/seed<s>/models/fold<k>/        checkpoints; model_final.pt says training is done
                                                       (or weights_not_kept.json in a kept record: ``keep``)
    STUDY/runs/<bundle>/seed<s>/eval/fold<k>/          summary.json (evaluation done) and the per-image CSV
    STUDY/runs/<bundle>/seed<s>/eval/ensemble/         the fold ensemble's evaluation
"""

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


STUDY_RECORD = "study.json"  # what the study commands ran (cli.study_record), so that `report` rebuilds the page


def stage_marker(run_dir: Path, fold: int | str, stage: str) -> Path:
    """The file whose presence says a run's stage has finished."""
    if stage == "train":
        return run_dir / "models" / f"fold{fold}" / "model_final.pt"
    if stage == "evaluate":
        return run_dir / "eval" / f"fold{fold}" / "summary.json"
    if stage == "examples":
        return run_dir / "examples" / f"fold{fold}" / "done"
    raise ValueError(stage)


# in models/fold<k>/ of a study's kept record (``keep``): trained and evaluated, the checkpoints left behind
WEIGHTS_NOT_KEPT = "weights_not_kept.json"


def weights_not_kept(run_dir: Path, fold: int | str) -> bool:
    return (Path(run_dir) / "models" / f"fold{fold}" / WEIGHTS_NOT_KEPT).is_file()


def stage_done(run_dir: Path, fold: int | str, stage: str) -> bool:
    if stage == "train" and weights_not_kept(run_dir, fold):
        return True
    return stage_marker(run_dir, fold, stage).is_file()


def read_study_record(out: Path) -> dict:
    """The study commands' dataset, bundles, settings and run statuses (empty before the first)."""
    path = out / STUDY_RECORD
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportInputError(f"{path} is not valid JSON: {error}") from None


def study_folders(output_dirs: tuple[str, ...], minimum: int, example: str) -> list[Path]:
    """The study folders a comparison command was given, resolved; at least ``minimum``, each existing."""
    if len(output_dirs) < minimum:
        raise ReportInputError(f"name {'the' if minimum < 2 else f'{minimum} or more'} study folders, e.g. {example}")
    folders = [Path(d).resolve() for d in output_dirs]
    for folder in folders:
        if not folder.is_dir():
            raise ReportInputError(f"study folder {folder} does not exist")
    return folders


def write_comparison_page(output_dir: str, file_name: str, title: str, folders: list[Path], lines: list[str]) -> Path:
    """``OUTPUT_DIR/file_name``: a comparison command's page, titled ``title`` followed by the folders' names."""
    from custom_losses.atomic import write_text_atomic

    target = Path(output_dir)
    target.mkdir(parents=True, exist_ok=True)
    sources = ", ".join(f"`{f.name}`" for f in folders)
    write_text_atomic(target / file_name, "\n".join([f"# {title} {sources}", "", *lines, ""]))
    return target / file_name
