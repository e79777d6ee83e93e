"""One bundle setting varied across study folders (a sweep, such as DBCE's radius): every evaluated run's
validation curve and test figures side by side, by the value it was trained with.

    python scripts/run_study.py sweep study/r1 study/r2 study/r3 --parameter=dbce_radius --output_dir=study/sweep

The value is read from each run's own ``fold<k>_settings.json`` (what it was trained with), so a folder
whose runs differ is reported run by run. The value to choose is the one with the highest mean **last**
validation Dice (the evaluated model of a cosine schedule is the last one); test figures are shown, not used.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean

from lesion_study.study.layout import (
    ReportInputError,
    discover_runs,
    run_path,
    settings_file,
    stage_marker,
    study_folders,
    write_comparison_page,
)

TEST_FIGURES = (("dice_lesion", "test Dice (lesion images)"), ("dice_all", "test Dice (all images)"))
TEST_FIGURES_3D = (("whole_dice", "held-out Dice (whole)"),)


def _trained_value(run_dir: Path, fold: int, parameter: str) -> object:
    path = settings_file(run_dir, fold)
    if not path.is_file():
        raise ReportInputError(f"{path} does not exist: the run's settings are unknown, so is its {parameter}")
    try:
        settings = json.loads(path.read_text())["settings"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ReportInputError(f"{path} is not a run settings record ({error})") from None
    if parameter not in settings:
        raise ReportInputError(
            f"{path}: the run was not trained with {parameter} set (its settings: {', '.join(sorted(settings))})"
        )
    return settings[parameter]


def sweep_runs(output_dirs: list[Path], parameter: str) -> list[dict]:
    """One row per evaluated run of the study folders: the value, its convergence and its test figures."""
    from lesion_study.study.report import convergence, validation_curve

    rows = []
    for out in output_dirs:
        names, seeds, folds = discover_runs(out)
        if not names:
            raise ReportInputError(f"{out / 'runs'} holds no evaluated run (runs/<bundle>/seed<s>/eval/fold<k>/)")
        for name in names:
            for seed in seeds:
                run_dir = run_path(out, name, seed)
                for fold in folds:
                    summary_path = stage_marker(run_dir, fold, "evaluate")
                    if not summary_path.is_file():
                        continue
                    curve = validation_curve(run_dir, fold)
                    if not curve:
                        raise ReportInputError(f"{run_dir / 'logs' / f'fold{fold}'} holds no validation curve")
                    rows.append(
                        {
                            "value": _trained_value(run_dir, fold, parameter),
                            "study": out.name,
                            "bundle": name,
                            "seed": seed,
                            "fold": fold,
                            "curve": curve,
                            "convergence": convergence(curve),
                            "summary": json.loads(summary_path.read_text()),
                        }
                    )
    return sorted(rows, key=lambda r: (json.dumps(r["value"]), r["bundle"], r["seed"], r["fold"]))


def best_value(rows: list[dict]) -> tuple[object, float, float | None]:
    """The value of the highest mean last validation Dice, that mean, and its margin over the next value."""
    by_value: dict[str, list[float]] = {}
    for row in rows:
        by_value.setdefault(json.dumps(row["value"]), []).append(row["convergence"]["last"])
    ranked = sorted(((fmean(v), k) for k, v in by_value.items()), reverse=True)
    margin = ranked[0][0] - ranked[1][0] if len(ranked) > 1 else None
    return json.loads(ranked[0][1]), ranked[0][0], margin


def sweep_lines(rows: list[dict], parameter: str) -> list[str]:
    from lesion_study.study.report import FLAT_TOLERANCE, convergence_verdict

    figures = TEST_FIGURES if any("dice_all" in r["summary"] for r in rows) else TEST_FIGURES_3D
    header = f"| {parameter} | bundle | seed | fold | epochs | last validation Dice | best (epoch) | flattened |"
    lines = [
        header + "".join(f" {title} |" for _, title in figures),
        "|---" * (8 + len(figures)) + "|",
    ]
    for row in rows:
        c = row["convergence"]
        tests = "".join(
            f" {row['summary'][key]:.4f} |" if isinstance(row["summary"].get(key), float) else " n/a |"
            for key, _ in figures
        )
        lines.append(
            f"| {json.dumps(row['value'])} | {row['bundle']} | {row['seed']} | {row['fold']} | {c['epochs']} | "
            f"{c['last']:.4f} | {c['best']:.4f} ({c['best_epoch']}) | {convergence_verdict(c)} |{tests}"
        )
    value, mean_last, margin = best_value(rows)
    lines += [
        "",
        f"Highest mean last validation Dice: {parameter} = {json.dumps(value)} ({mean_last:.4f}"
        + (f", {margin:.4f} above the next value)." if margin is not None else ", the only value)."),
    ]
    if margin is not None and margin < FLAT_TOLERANCE:
        lines.append(
            f"The margin is below {FLAT_TOLERANCE}, the report's flattening tolerance: within what one validation "
            "fold's epoch-to-epoch noise can give, so the values are level on this evidence."
        )
    lines.append("Test figures are shown for reading, not for choosing.")
    return lines


def plot_sweep_curves(output_dir: Path, rows: list[dict], parameter: str) -> None:
    from lesion_study.study.report import plot_validation_curves

    curves: dict[str, list] = {}
    for row in rows:
        curves.setdefault(f"{parameter} = {json.dumps(row['value'])}", []).append((row["study"], row["curve"]))
    plot_validation_curves(output_dir, curves)


def sweep(*output_dirs: str, parameter: str, output_dir: str | None = None) -> None:
    """Compare study folders that differ in one bundle setting (``parameter``, e.g. ``dbce_radius``): print a
    table of each evaluated run's value, last and best validation Dice, flattening and test figures, and the
    value with the highest mean last validation Dice. With ``output_dir``, also write ``sweep.md`` and
    ``validation_curves.png`` there."""
    folders = study_folders(output_dirs, 1, "sweep study/r1 study/r2 --parameter=...")
    rows = sweep_runs(folders, parameter)
    lines = sweep_lines(rows, parameter)
    print("\n".join(lines))
    if output_dir is not None:
        page = write_comparison_page(output_dir, "sweep.md", f"Sweep of `{parameter}` over", folders, lines)
        plot_sweep_curves(page.parent, rows, parameter)
        print(f"wrote {page} and {page.parent / 'validation_curves.png'}")
