"""Publish a finished study: its report, tables, per-image CSVs and plots into docs/results/, and its
headline numbers into bundles/results/<dataset>.json (shown by each bundle's docs and bundles/README.md
after ``python scripts/make_bundles.py``).

    python scripts/publish_results.py --study_dir=study/polyp_cpu --dataset=polyp --name=polyp_cpu \\
        --setting="CPU reduced scale (--setting=cpu)" --machine="2-core AMD EPYC, torch 2.13.0+cpu" \\
        --command="python scripts/run_study.py polyp ..." --wall_time="1 h 52 min"

Nothing that shows the data is copied (``examples.png`` stays in the study folder), and no weights.
"""

from __future__ import annotations

import csv
import inspect
import json
import shutil
import sys
from pathlib import Path

from custom_losses.atomic import write_text_atomic
from lesion_study.command import run_fire
from lesion_study.paths import REPO
from lesion_study.study.layout import discover_runs
from lesion_study.study.report import ensemble_csvs, per_image_csvs

PLOTS = (
    "dice_vs_lesion_free_fp.png",
    "area_errors.png",
    "bland_altman_expected.png",
    "reliability.png",
    "validation_curves.png",
)
# results.csv columns that go into a bundle's docs and metadata (those present)
HEADLINE_COLUMNS = (
    "dice_lesion",
    "iou_lesion",
    "dice_all",
    "predicted_empty_share",
    "lesion_free_fp_rate",
    "lesion_free_fp_area",
    "area_error_hard",
    "area_error_soft",
    "whole_dice",
    "whole_error_hard_ml",
    "whole_error_soft_ml",
    "ece",
)


class PublishError(ValueError):
    """A study folder that cannot be published: the message names what is missing."""


def bundle_results(results_csv: Path, measured_with: str) -> dict[str, dict]:
    """Per loss: the mean over runs of the headline metrics (3 decimals) and how they were measured."""
    with open(results_csv, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["kind"] == "runs"]
    results = {}
    for row in rows:
        entry = {key: f"{float(row[f'{key}_mean']):.3f}" for key in HEADLINE_COLUMNS if row.get(f"{key}_mean")}
        entry["runs"] = int(row["n"])
        entry["measured_with"] = measured_with
        results[row["loss"]] = entry
    return results


def publish(
    study_dir: str,
    dataset: str,
    name: str,
    setting: str,
    machine: str,
    command: str,
    wall_time: str,
    docs_dir: str | None = None,
    bundle_results_dir: str | None = None,
    bundle_docs: bool = True,
) -> Path:
    """Copy the study's report into ``docs/results/<name>/`` with a page ``docs/results/<name>.md``, and
    write the per-loss headline numbers into ``bundles/results/<dataset>.json``.

    ``bundle_docs=False`` publishes the page only and leaves ``bundles/results/<dataset>.json`` as it is:
    for a study the bundle docs should not show, e.g. a label-uncertainty level other than the bundles'
    default (the bundles train on the labels as they are)."""
    study = Path(study_dir).resolve()
    for required in ("results.md", "results.csv"):
        if not (study / required).is_file():
            raise PublishError(f"{study / required} does not exist: run the study (or its report) first")
    docs = Path(docs_dir) if docs_dir else REPO / "docs" / "results"
    target = docs / name
    if target.exists():
        shutil.rmtree(target)
    (target / "per_image").mkdir(parents=True)
    shutil.copy(study / "results.csv", target / "results.csv")
    plots = [p for p in PLOTS if (study / p).is_file()]
    for plot in plots:
        shutil.copy(study / plot, target / plot)
    names, seeds, folds = discover_runs(study)
    for bundle in names:
        for path in per_image_csvs(study, bundle, folds, seeds) + ensemble_csvs(study, bundle, seeds):
            # runs/<bundle>/seed<s>/eval/<fold<k> or ensemble>/per_image.csv -> <bundle>_seed<s>_<fold<k>|ensemble>
            run = f"{path.parents[3].name}_{path.parents[2].name}_{path.parent.name}"
            shutil.copy(path, target / "per_image" / f"{run}_{path.name}")

    measured_with = f"{setting}; {machine}; docs/results/{name}.md"
    report = (study / "results.md").read_text()
    page = [
        f"# {dataset}: {setting}",
        "",
        f"- **Command:** `{command}`",
        f"- **Machine:** {machine}",
        f"- **Wall time:** {wall_time}",
        f"- **Files:** [`results.csv`]({name}/results.csv), per-image metrics of every run (and of every fold "
        f"ensemble, `*_ensemble_per_image.csv`) in [`{name}/per_image/`]({name}/per_image/), plots below.",
        "",
        *[f"![{p}]({name}/{p})" for p in plots],
        "",
        report.replace("`validation_curves.png`", f"`{name}/validation_curves.png`"),
    ]
    page_path = docs / f"{name}.md"
    write_text_atomic(page_path, "\n".join(page))
    if not bundle_docs:
        print(f"published {page_path}; bundle results left as they are")
        return page_path

    results_dir = Path(bundle_results_dir) if bundle_results_dir else REPO / "bundles" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    results_path = results_dir / f"{dataset}.json"
    existing = json.loads(results_path.read_text()) if results_path.is_file() else {}
    existing.update(bundle_results(study / "results.csv", measured_with))
    write_text_atomic(results_path, json.dumps(existing, indent=4) + "\n")
    print(f"published {page_path} and {results_path}; now run python scripts/make_bundles.py")
    return page_path


def publish_command(*args, **kwargs) -> None:
    publish(*args, **kwargs)  # fire would print the returned path a second time


publish_command.__doc__ = publish.__doc__
publish_command.__signature__ = inspect.signature(publish)


def main(argv: list[str] | None = None) -> int:
    return run_fire(publish_command, argv, "publish_results.py", (PublishError,))


if __name__ == "__main__":
    sys.exit(main())
