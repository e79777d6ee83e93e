"""Label-uncertainty levels side by side: study folders of one volume dataset, each trained at one width of
the label law (``--label_uncertainty_width``), compared volume by volume on the same held-out fold.

    python scripts/run_study.py levels study/hippocampus_w0 study/hippocampus_w2 --output_dir=study/levels

Bertels et al.'s claim is about what label uncertainty does: soft Dice's volumes drift from the expected
volume when the labels are uncertain, CE's do not. Each study's own report gives the error at its width;
this page gives, per loss, how the error changes from the lowest width to each other one, and how its
difference to the reference loss changes (a difference of paired differences over the same volumes).
A level is a width and the training targets: drawn annotations (``sampled``, the default) or the law's
expected labels (``--label_uncertainty_targets=expected``, soft labels), e.g. ``study/hippocampus_w2e``
beside the two above; levels are ordered by width, drawn annotations first.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from lesion_study.bundlegen.specs import bundle_rank
from lesion_study.study.layout import (
    ReportInputError,
    discover_runs,
    read_settings,
    settings_file,
    study_folders,
    write_comparison_page,
)

WIDTH = "label_uncertainty_width"
TARGETS = "label_uncertainty_targets"  # sampled (drawn annotations, the default) or expected (soft labels)


def level_name(level: tuple[float, str]) -> str:
    """``2`` for width 2 on drawn annotations, ``2 (expected labels)`` for its soft labels."""
    width, targets = level
    return f"{width:g}" + ("" if targets == "sampled" else f" ({targets} labels)")


class Level(NamedTuple):
    """One study folder: its level (every run's own label-law width and targets) and, by loss, its
    per-volume CSVs, convergence and place in the dataset's loss order."""

    key: tuple[float, str]
    csvs: dict[str, list[Path]]
    curves: dict[str, list[dict]]
    ranks: dict[str, int]
    folder: Path


def _level_of(out: Path) -> Level:
    from lesion_study.study.report import convergence, loss_of, per_image_csvs, validation_curve

    names, seeds, folds = discover_runs(out)
    if not names:
        raise ReportInputError(f"{out / 'runs'} holds no evaluated run (runs/<bundle>/seed<s>/eval/fold<k>/)")
    found: dict[tuple[float, str], Path] = {}
    csvs: dict[str, list[Path]] = {}
    curves: dict[str, list[dict]] = {}
    ranks = {loss_of(name): bundle_rank(name) for name in names}
    for name in names:
        paths = per_image_csvs(out, name, folds, seeds)
        if not paths or paths[0].name != "per_volume.csv":
            raise ReportInputError(f"{out}: {name} has no per-volume CSV; levels compares volume studies only")
        for path in paths:
            run_dir, fold = path.parents[2], int(path.parent.name[4:])
            settings = read_settings(run_dir, fold)
            if settings is None:
                raise ReportInputError(f"{settings_file(run_dir, fold)} does not exist: the run's {WIDTH} is unknown")
            level = (float(settings.get(WIDTH, 0)), settings.get(TARGETS, "sampled"))
            found.setdefault(level, settings_file(run_dir, fold))
            curve = validation_curve(run_dir, fold)
            curves.setdefault(loss_of(name), []).append(convergence(curve) if curve else {})
        csvs[loss_of(name)] = paths
    if len(found) > 1:
        listed = ", ".join(f"{level_name(level)} ({p})" for level, p in found.items())
        raise ReportInputError(f"{out}: its runs were trained at different {WIDTH}s or targets: {listed}")
    return Level(next(iter(found)), csvs, curves, ranks, out)


def _paired(a: dict[str, float], b: dict[str, float], seed: int, metric) -> dict | None:
    """Mean of a - b over the volumes both hold, with its interval and Wilcoxon p, as ``comparison.compare``
    gives it (for ``format_difference``); None without common volumes."""
    from lesion_study.study.statistics import paired_difference

    common = sorted(set(a) & set(b))
    if not common:
        return None
    return paired_difference([a[i] for i in common], [b[i] for i in common], seed=seed) | {"metric": metric}


def _run_label(path: Path, many_folds: bool) -> str:
    """``seed 1`` for ``runs/<bundle>/seed1/eval/fold1/per_volume.csv`` (``seed 1 fold 1`` among several folds)."""
    run, fold = path.parents[2].name.removeprefix("seed"), path.parent.name.removeprefix("fold")
    return f"seed {run}" + (f" fold {fold}" if many_folds else "")


def _run_lines(levels: list[Level], names: list[str], losses: list[str]) -> list[str]:
    """Each run's mean whole-volume error per level: whether a loss's bias holds in every run, i.e. how far
    training noise (which the intervals over volumes do not describe) moves it."""
    from lesion_study.study.comparison import EXPECTED_PAIRED, per_image_values, read_runs

    paths = [path for level in levels for loss_paths in level.csvs.values() for path in loss_paths]
    many_folds = len({path.parent.name for path in paths}) > 1
    lines = [
        "### Each run's whole-volume error against the expected volume (ml)",
        "",
        "| from | loss |" + "".join(f" width {w} |" for w in names),
        "|---|---|" + "---|" * len(names),
    ]
    for metric in (m for m in EXPECTED_PAIRED if m.title.startswith("whole, ")):
        for loss in losses:
            cells = []
            for level in levels:
                runs = []
                for path in level.csvs.get(loss, []):
                    values = list(per_image_values(read_runs([path]), metric).values())
                    runs.append(f"{np.mean(values):+.3f} ({_run_label(path, many_folds)})" if values else "-")
                cells.append(", ".join(runs) if runs else "-")
            lines.append(f"| {metric.title.split(', ')[1]} | {loss} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each run's mean error over the held-out volumes. The intervals above are over volumes, with each",
        "volume's error averaged over a loss's runs first; the spread between runs here is the training noise",
        "(seeds) they do not describe.",
        "",
    ]
    return lines


def level_lines(folders: list[Path], reference: str = "ce", seed: int = 0) -> list[str]:
    """The page: runs and flattening per level, the error against the expected volume per level with its
    change from the lowest width, each run's whole-volume error, and Dice per level."""
    from lesion_study.study.comparison import (
        EXPECTED_PAIRED,
        VOLUME_PAIRED,
        format_difference,
        format_interval,
        format_p,
        per_image_values,
        read_runs,
    )
    from lesion_study.study.statistics import holm, mean_ci

    levels = sorted(map(_level_of, folders), key=lambda level: (level.key[0], level.key[1] != "sampled"))
    names = [level_name(level.key) for level in levels]
    for a, b in zip(levels, levels[1:], strict=False):
        if a.key == b.key:
            raise ReportInputError(
                f"{a.folder} and {b.folder} were both trained at {WIDTH} {level_name(a.key)}: one folder per level"
            )
    ranks = {loss: rank for level in levels for loss, rank in level.ranks.items()}
    losses = sorted(ranks, key=lambda loss: (loss != reference, ranks[loss], loss))
    if reference not in losses:
        raise ReportInputError(
            f"the reference loss {reference!r} has no evaluated run in {', '.join(map(str, folders))}"
        )
    runs = [{loss: read_runs(paths) for loss, paths in level.csvs.items()} for level in levels]
    base, others = names[0], names[1:]

    lines = [
        "| loss | " + " | ".join(f"width {w}: runs (flattened)" for w in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for loss in losses:
        cells = []
        for level in levels:
            results = level.curves.get(loss, [])
            cells.append(f"{len(results)} ({sum(bool(r.get('flattened')) for r in results)})" if results else "-")
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Flattened: the report's rule (the best validation Dice rose by less than 0.01 over the last fifth of",
        "the epochs); each level's own report lists every run's curve.",
        "",
        f"### Error against the expected volume (ml), by width, and its change from width {base}",
        "",
    ]
    head = "| volume | from | loss |" + "".join(f" width {w} | - {reference} |" for w in names)
    head += "".join(f" change {base} to {w} | change of the difference to {reference} | Holm p |" for w in others)
    lines += [head, "|---" * (3 + 2 * len(names) + 3 * len(others)) + "|"]
    for metric in EXPECTED_PAIRED:
        name, source = metric.title.split(", ")
        values = [{loss: per_image_values(r[loss], metric) for loss in r} for r in runs]
        to_reference = [
            {
                loss: _paired(v[loss], v[reference], seed, metric) if reference in v and loss != reference else None
                for loss in v
            }
            for v in values
        ]
        changes, holm_p = {}, {}
        for k in range(1, len(levels)):
            for loss in losses:
                own = _paired(values[k].get(loss, {}), values[0].get(loss, {}), seed, metric)
                relative = None
                if loss != reference and all(loss in v and reference in v for v in (values[0], values[k])):
                    differences = [
                        {i: v[loss][i] - v[reference][i] for i in set(v[loss]) & set(v[reference])}
                        for v in (values[k], values[0])
                    ]
                    relative = _paired(differences[0], differences[1], seed, metric)
                changes[(k, loss)] = (own, relative)
            compared = [loss for loss in losses if changes[(k, loss)][1] is not None]
            for loss, p in zip(compared, holm([changes[(k, loss)][1]["p"] for loss in compared]), strict=True):
                holm_p[(k, loss)] = p
        for loss in losses:
            cells = []
            for k, v in enumerate(values):
                cells.append(format_interval(mean_ci(list(v[loss].values()), seed=seed)) if v.get(loss) else "-")
                cells.append(format_difference(to_reference[k][loss]) if to_reference[k].get(loss) else "")
            for k in range(1, len(levels)):
                own, relative = changes[(k, loss)]
                cells.append(format_difference(own) if own else "-")
                cells.append(format_difference(relative) if relative else "")
                cells.append(format_p(holm_p[(k, loss)]) if (k, loss) in holm_p else "")
            lines.append(f"| {name} | {source} | {loss} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Error: predicted minus expected volume under the law the runs were trained with (at width 0, the",
        "label's volume), per held-out volume averaged over a loss's runs; mean with a 95% BCa bootstrap",
        f"interval over volumes. - {reference}: the paired mean difference to {reference} at that width. Change:",
        f"the width's error minus width {base}'s, paired over the volumes both evaluated; change of the",
        f"difference to {reference}: (loss - {reference}) at that width minus (loss - {reference}) at width {base},",
        "paired over the volumes of all four. Holm p: Wilcoxon signed-rank test of that change, Holm's",
        f"correction over the losses compared with {reference}, per row group. Bold: the interval excludes 0.",
        "",
        *_run_lines(levels, names, losses),
        "### Dice (points) by width",
        "",
        "| loss |" + "".join(f" width {w} |" for w in names) + "".join(f" change {base} to {w} |" for w in others),
        "|---|" + "---|" * (len(names) + len(others)),
    ]
    dice = next(m for m in VOLUME_PAIRED if m.key == "whole_dice")
    for loss in losses:
        values = [per_image_values(r[loss], dice) if loss in r else {} for r in runs]
        cells = [f"{100 * np.mean(list(v.values())):.1f}" if v else "-" for v in values]
        for k in range(1, len(levels)):
            result = _paired(values[k], values[0], seed, dice)
            cells.append(format_difference(result) if result else "-")
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    lines += ["", "Dice of the whole hippocampus against the held-out label, mean over volumes; change paired.", ""]
    return lines


def levels(*output_dirs: str, reference: str = "ce", output_dir: str | None = None) -> None:
    """Compare study folders of one volume dataset trained at different label-uncertainty widths (or on the
    expected labels of a width): print, per loss, the error against the expected volume at each width and
    its change from the lowest width (and that of its difference to ``reference``), with intervals. With
    ``output_dir``, also write ``levels.md``."""
    folders = study_folders(output_dirs, 2, "levels study/w0 study/w2")
    lines = level_lines(folders, reference)
    print("\n".join(lines))
    if output_dir is not None:
        page = write_comparison_page(output_dir, "levels.md", "Label-uncertainty levels:", folders, lines)
        print(f"wrote {page}")
