"""A study's record without its weights: what ``report``, ``levels`` and ``sweep`` read and what tells a
later study command that a run is done, in a folder small enough to commit (no checkpoints, predictions,
TensorBoard logs or data).

    python scripts/run_study.py keep study/hippocampus_w2 docs/results/records/hippocampus_w2
    cp -r docs/results/records/hippocampus_w2 study/hippocampus_w2    # later, on another machine
    python scripts/run_study.py hippocampus ... --output_dir=study/hippocampus_w2   # trains the rest

Each finished run (trained and evaluated) keeps its settings, evaluation summary, per-image CSV and
validation curve (``logs/fold<k>/validation.csv``), with ``models/fold<k>/weights_not_kept.json`` in place
of its checkpoints; the study record (``study.json``) and the label law's calculation come along. Copied
back as a study folder, the study command skips the kept runs and trains the others, and ``report``
rebuilds the same page. A fold ensemble averages the fold models, so it cannot be evaluated from runs whose
weights were not kept (the study says so before it trains anything).
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

from lesion_study.study.layout import (
    STUDY_RECORD,
    WEIGHTS_NOT_KEPT,
    ReportInputError,
    settings_file,
    stage_done,
    stage_marker,
    weights_not_kept,
)

KEPT_RECORD = "kept.json"  # at the top of a kept record: the study it came from and the runs it holds


def keep(output_dir: str, record_dir: str) -> Path:
    """Write the weight-free record of study ``output_dir``'s finished runs to ``record_dir`` (replaced
    whole, once complete; a folder that is not a kept record is refused). Unfinished runs are listed."""
    out, record = Path(output_dir).resolve(), Path(record_dir).resolve()
    if not (out / "runs").is_dir():
        raise ReportInputError(f"{out} is not a study folder: it has no runs/")
    if record == out or out in record.parents:
        raise ReportInputError(f"{record} is inside the study folder {out}: choose a folder outside it")
    if record.exists() and not (record / KEPT_RECORD).is_file() and any(record.iterdir()):
        raise ReportInputError(f"{record} is not empty and not a kept study record (no {KEPT_RECORD}): choose another")
    partial = record.with_name(record.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        kept, left = _write_record(out, partial)
    except BaseException:  # nothing half-written is left behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    old = record.with_name(record.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if record.exists():
        record.rename(old)
    partial.rename(record)
    shutil.rmtree(old, ignore_errors=True)
    print(f"kept {len(kept)} run(s) in {record}", flush=True)
    for line in left:
        print(f"not kept: {line}", flush=True)
    return record


def _write_record(out: Path, partial: Path) -> tuple[list[str], list[str]]:
    """The record of ``out``'s finished runs written into ``partial``: the runs kept, and those left out."""
    from lesion_study.study.report import CURVE_FILE, LAW_THEORY_FILE, validation_curve, write_curve

    kept, left = [], []
    for run_dir in sorted((out / "runs").glob("*/seed*")):
        target = partial / run_dir.relative_to(out)
        for summary in sorted(run_dir.glob("eval/*/summary.json")):
            fold = summary.parent.name.removeprefix("fold")
            key = f"{run_dir.parent.name}/{run_dir.name}/{summary.parent.name}"
            if fold != "ensemble" and not stage_done(run_dir, fold, "train"):
                left.append(f"{key} (its evaluation is of an earlier model: training again)")
                continue
            evaluation = target / "eval" / summary.parent.name
            evaluation.mkdir(parents=True)
            for path in [summary, *sorted(summary.parent.glob("per_*.csv"))]:
                shutil.copy2(path, evaluation / path.name)
            kept.append(key)
            if fold == "ensemble":
                continue
            if settings_file(run_dir, fold).is_file():
                shutil.copy2(settings_file(run_dir, fold), settings_file(target, fold))
            curve = validation_curve(run_dir, int(fold))
            if curve:
                (target / "logs" / f"fold{fold}").mkdir(parents=True)
                write_curve(target / "logs" / f"fold{fold}" / CURVE_FILE, curve)
            models = target / "models" / f"fold{fold}"
            models.mkdir(parents=True)
            if weights_not_kept(run_dir, fold):  # kept before: its note stays as first written
                shutil.copy2(run_dir / "models" / f"fold{fold}" / WEIGHTS_NOT_KEPT, models / WEIGHTS_NOT_KEPT)
            else:
                note = {
                    "trained_in": str(run_dir),
                    "model": str(stage_marker(run_dir, fold, "train")),
                    "kept_on": datetime.date.today().isoformat(),
                }
                (models / WEIGHTS_NOT_KEPT).write_text(json.dumps(note, indent=4) + "\n")
        left += [f"{p.parents[2].name}/{p.parents[1].name}/{p.name} (not evaluated)" for p in _unevaluated(run_dir)]
    if not kept:
        raise ReportInputError(f"{out / 'runs'} holds no finished run (trained and evaluated) to keep")
    for name in (STUDY_RECORD, LAW_THEORY_FILE):
        if (out / name).is_file():
            shutil.copy2(out / name, partial / name)
    (partial / KEPT_RECORD).write_text(json.dumps({"study": str(out), "runs": kept}, indent=4) + "\n")
    return kept, left


def _unevaluated(run_dir: Path) -> list[Path]:
    """Model folders of a run with no evaluation (training unfinished, or not evaluated yet)."""
    models = sorted(run_dir.glob("models/fold*"))
    return [m for m in models if not (run_dir / "eval" / m.name / "summary.json").is_file()]
