"""Which loss for my lesion task? Train the loss bundles of a dataset, evaluate them, report.

    python scripts/run_study.py demo                                   # synthetic data, CPU, ~10 min
    python scripts/run_study.py polyp --data_dir=DATA/polyp --folds=[1] --epochs=40 --device=cuda
    python scripts/run_study.py polyp --data_dir=DATA/polyp --folds=[1,2,3,4,5] --ensemble=True
    python scripts/run_study.py report --output_dir=study/polyp        # rebuild the report only
    python scripts/run_study.py sweep study/r1 study/r2 --parameter=dbce_radius   # one setting across studies
    python scripts/run_study.py levels study/w0 study/w2       # volume bias across label-uncertainty widths
    python scripts/run_study.py keep study/polyp records/polyp  # the finished runs without weights (to commit)
    python scripts/run_study.py polyp --data_dir=DATA/polyp --gpus=[0,1,2,3] --tracking=mlflow  # scale out:
    python scripts/run_study.py polyp --data_dir=DATA/polyp --launcher=slurm --slurm_partition=gpu  # docs/scale_out.md

Each (bundle, seed, fold) runs in its own process through MONAI's bundle API (``monai.bundle.run`` on the
bundle's own configs) and writes into ``OUTPUT/runs/<bundle>/seed<s>/`` (``models/``, ``eval/``, ``logs/``),
with its console output in ``OUTPUT/runs/<bundle>/seed<s>/fold<k>.log`` and the bundle overrides it was
trained with in ``fold<k>_settings.json`` (``export_bundle.py`` carries them into a shared bundle). A
finished stage (training: ``model_final.pt``; evaluation: ``summary.json``) is skipped when the study is run
again, and a training interrupted mid-run continues from its last resume checkpoint, so an interrupted study
resumes.
A failed run is reported and the others go on; the exit status is 1 if any run failed.
The report: ``results.csv``, ``results.md`` and PNG plots in ``OUTPUT``, with every loss compared image
by image with a reference loss (``--reference=ce``): mean differences with bootstrap intervals, Wilcoxon
and McNemar p-values, Holm-corrected.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path

from lesion_study.bundlegen.specs import SpecError, bundle_rank
from lesion_study.command import run_fire
from lesion_study.paths import REPO  # noqa: F401  (tests and users find the repository here)
from lesion_study.study import tracking as study_tracking
from lesion_study.study.keep import keep
from lesion_study.study.launch import (
    LaunchError,
    RunState,
    RunStatus,
    SlurmOptions,
    format_seconds,
    launch_jobs,
    outcome,
    run_child,
)
from lesion_study.study.layout import STUDY_RECORD, ReportInputError, discover_runs, read_study_record
from lesion_study.study.levels import levels
from lesion_study.study.plan import (  # noqa: F401  (the study's names, importable from its command)
    DEMO_SETTINGS,
    SETTINGS,
    Plan,
    StudyError,
    bundle_names,
    choose_examples,
    ensemble_jobs,
    plan_study,
    planned_jobs,
    read_json,
)
from lesion_study.study.run import run_bundle
from lesion_study.study.sweep import sweep


def study(
    dataset: str,
    data_dir: str | None = None,
    bundles: list[str] | str | None = None,
    folds: list[int] | int = (1,),
    seeds: list[int] | int = (0,),
    epochs: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    output_dir: str | None = None,
    setting: str | None = None,
    reference: str = "ce",
    ensemble: bool = False,
    examples: bool = True,
    bundles_dir: str | None = None,
    spec: str | None = None,
    finetune_from: str | None = None,
    max_parallel: int = 1,
    gpus: list[int] | int | None = None,
    launcher: str = "local",
    wait: bool = True,
    slurm_partition: str | None = None,
    slurm_time_min: int = 120,
    slurm_gpus_per_job: int = 1,
    slurm_cpus_per_job: int = 8,
    slurm_mem_gb: int | None = None,
    tracking: str | None = None,
    tracking_uri: str | None = None,
    **overrides,
) -> int:
    """Train, evaluate and report every chosen loss bundle of ``dataset`` on the chosen folds and seeds.

    Args:
        dataset: ``polyp``, ``footulcer``, ``hippocampus``, or ``demo`` (synthetic polyp-like data made
            here, small settings for a CPU: the README's main job).
        data_dir: the prepared dataset folder (``datalist.json`` inside, see scripts/prepare_data.py);
            for ``demo`` it defaults to ``OUTPUT/data`` and is generated.
        bundles: losses or bundle names (default: all of the dataset), e.g. ``[ce,dice]``.
        folds: folds to train, e.g. ``[1,2,3,4,5]``.
        seeds: training seeds; every (bundle, fold, seed) is its own run, e.g. ``[0,1,2]``.
        epochs: training epochs (default: the bundle's, or the setting's).
        device: ``cpu``, ``cuda``, ``cuda:1``... (default: the bundle's choice).
        precision: the networks' compute precision: ``auto`` (bf16 where the device computes it natively:
            a GPU, or a CPU with AVX512-BF16 or AMX; fp32 elsewhere), ``bf16`` or ``fp32``.
        output_dir: study folder (default ``study/<dataset>``).
        setting: a named reduced-scale setting: ``cpu`` (image size, epochs, batch size for the 2-core
            CPU; see SETTINGS in lesion_study/study/plan.py and docs/results/), or ``galdran_cpu`` (Galdran
            et al.'s recipe at 96x128 px from scratch, polyp and footulcer; docs/galdran_recipe.md).
        reference: the loss every other loss is compared with, image by image, in the report.
        ensemble: also evaluate the mean probability of the fold models (needs every fold listed).
        examples: predict a few test images per bundle for the example grid.
        bundles_dir: where the bundles live (default: this repo's ``bundles/``).
        spec: your dataset's spec file (``make_bundles.py --dataset_spec``); ``dataset`` is its name and
            ``bundles_dir`` the folder its bundles were written to.
        finetune_from: a trained checkpoint (``model.pt`` of a bundle or of an earlier study) every loss
            starts from instead of from scratch (the bundles' ``finetune.json``: matching tensors are
            loaded, learning rate 1e-4).
        max_parallel: runs at a time on this machine (CPU runs share the cores); with a SLURM launcher,
            the most jobs of the array running at once (default 64).
        gpus: GPUs to spread the runs over, one run per GPU at a time, e.g. ``[0,1,2,3]`` (each run sees
            only its GPU, through ``CUDA_VISIBLE_DEVICES``).
        launcher: ``local`` (this machine), ``slurm`` (one job array through submitit), or
            ``submitit_local`` (submitit's local executor: the SLURM code path without SLURM).
        wait: with a SLURM launcher, wait for the jobs and build the report (False: submit and return;
            build the report later with ``run_study.py report``).
        slurm_partition, slurm_time_min, slurm_gpus_per_job, slurm_cpus_per_job, slurm_mem_gb: resources
            of each SLURM job.
        tracking: ``mlflow``: every run logs to one MLflow experiment named after the study folder
            (MONAI's ``--tracking mlflow`` for training, plus tags, evaluation and report); needs
            ``pip install mlflow``.
        tracking_uri: the MLflow store (default: ``OUTPUT/mlruns.db``, SQLite).
        overrides: any other bundle config id, e.g. ``--batch_size=8 --num_workers=8``.
    """
    started = time.time()
    plan = plan_study(
        dataset,
        data_dir=data_dir,
        bundles=bundles,
        folds=folds,
        seeds=seeds,
        epochs=epochs,
        device=device,
        precision=precision,
        output_dir=output_dir,
        setting=setting,
        ensemble=ensemble,
        examples=examples,
        bundles_dir=bundles_dir,
        spec=spec,
        finetune_from=finetune_from,
        max_parallel=max_parallel,
        gpus=gpus,
        launcher=launcher,
        tracking=tracking,
        tracking_uri=tracking_uri,
        overrides=overrides,
    )
    out = plan.out
    runs = f"{len(plan.names)} bundle(s) x {len(plan.seeds)} seed(s) x {len(plan.folds)} fold(s)"
    print(f"study {dataset}: {runs} -> {out}", flush=True)
    jobs, status = planned_jobs(plan)
    ensembles = ensemble_jobs(plan) if plan.ensemble else []  # refused before any training, where it cannot run
    slurm = SlurmOptions(slurm_partition, slurm_time_min, slurm_gpus_per_job, slurm_cpus_per_job, slurm_mem_gb)
    launched = launch_jobs(jobs, launcher, plan.parallel, plan.gpus, slurm, out / "slurm", wait, started)
    if launched is None:
        report_command = f"python scripts/run_study.py report --output_dir={out}"
        print(f"not waiting: build the report when the jobs have ended: {report_command}", flush=True)
        return 0
    status.update(launched)
    for job in ensembles:
        code, error_line = run_child(job, started, 0)
        status[job.key] = outcome(code, error_line)
    return finish(plan, status, started, reference)


def finish(plan: Plan, status: dict[str, RunStatus], started: float, reference: str) -> int:
    """Record the study, write its report, and say which runs failed (exit status 1 if any)."""
    out = plan.out
    failed = [key for key, value in status.items() if value.failed]
    try:
        from custom_losses.atomic import write_text_atomic
        from lesion_study.study.report import write_report

        if plan.dataset.volumes:
            write_law_theory(plan.out, plan.data_path, plan.folds, plan.settings, plan.bundles_root / plan.names[0])
    except ModuleNotFoundError as error:  # e.g. a bare GPU machine: the runs are done, report elsewhere
        print(
            f"report skipped: {error.name} is not installed; the runs are complete, build the report with "
            f"python scripts/run_study.py report --output_dir={out}",
            flush=True,
        )
    else:
        records = {key: value.record() for key, value in status.items()}
        record = study_record(read_study_record(out), plan.dataset.name, plan.names, plan.settings, records)
        write_text_atomic(out / STUDY_RECORD, json.dumps(record, indent=4) + "\n")
        write_report(
            out,
            plan.names,
            plan.folds,
            records,
            settings=plan.settings,
            dataset=plan.dataset.name,
            seeds=plan.seeds,
            reference=reference,
        )
        print(f"report: {out / 'results.md'} ({format_seconds(time.time() - started)} in all)", flush=True)
        if plan.tracking_run:
            uri, experiment = plan.tracking_run["uri"], plan.tracking_run["experiment"]
            study_tracking.record_report(uri, experiment, out)
            print(f"MLflow: experiment {out.name!r} in {uri}; browse it with: mlflow ui --backend-store-uri {uri}")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their logs)", file=sys.stderr)
        reasons = {status[key].reason for key in failed if status[key].reason}
        if len(reasons) == 1:  # the same input error everywhere: its one line last
            print(reasons.pop(), file=sys.stderr)
    return 1 if failed else 0


def study_record(earlier: dict, dataset: str, names: list[str], settings: dict, status: dict[str, dict]) -> dict:
    """What ``study.json`` records of this command. A study run in parts (one loss per command, as
    docs/galdran_recipe.md does) keeps the runs an earlier command of the same dataset and settings recorded
    and this one did not ask for, as "ok (an earlier command)" where they were ok, so ``report`` on the folder
    lists every run; after a command with other settings the record is this command's alone."""
    record = {"dataset": dataset, "bundles": list(names), "settings": settings, "status": status}
    if earlier.get("dataset") != dataset or earlier.get("settings") != settings:
        return record
    before = {}
    for key, value in earlier.get("status", {}).items():
        if key not in status:
            was = RunStatus.from_record(value)
            before[key] = RunStatus(RunState.EARLIER, seconds=was.seconds).record() if was.ok else value
    bundles = list(earlier.get("bundles", []))
    return record | {"bundles": bundles + [n for n in names if n not in bundles], "status": before | status}


def write_law_theory(out: Path, data_dir: Path, folds: list[int], settings: dict, bundle: Path) -> None:
    """``OUT/label_law_theory.json`` for a 3D study: each loss's minimiser under the study's label law
    (``label_uncertainty_width``, default 0) on the held-out volumes (``lesion_study.volume_bias``
    label_law), for the report; kept when it is of the same width, folds and grid. A volume it cannot use
    leaves the report without it, with one line saying why."""
    from lesion_study.study.report import LAW_THEORY_FILE
    from lesion_study.volume_bias import label_law_theory, write_label_law_theory

    if settings.get("label_uncertainty_targets") == "expected":
        print("theory skipped: the calculation is of training on drawn annotations, not expected labels", flush=True)
        return
    width = float(settings.get("label_uncertainty_width", 0))
    grid = settings.get("spatial_size") or read_json(bundle / "configs" / "train.json")["spatial_size"]
    path = out / LAW_THEORY_FILE
    earlier = read_json(path) if path.is_file() else {}
    if (earlier.get("width"), earlier.get("folds"), earlier.get("spatial_size")) == (width, folds, list(grid)):
        return
    print(f"theory: each loss's minimiser under the label law of width {width:g} -> {path}", flush=True)
    try:
        write_label_law_theory(path, label_law_theory(data_dir, width, folds, grid))
    except ValueError as error:  # custom_losses InputError included
        print(f"theory skipped: {error}", flush=True)


def report(output_dir: str, reference: str = "ce") -> None:
    """Rebuild ``results.csv``, ``results.md`` and the plots of an existing study folder from its saved
    summaries and per-image CSVs (no training), comparing every loss with ``reference``; the dataset,
    settings and run statuses come from ``study.json``, written by the study commands."""
    from lesion_study.study.report import write_report

    out = Path(output_dir).resolve()
    names, seeds, folds = discover_runs(out)
    names.sort(key=lambda n: (bundle_rank(n), n))
    if not names:
        raise StudyError(f"{out / 'runs'} holds no evaluated run (runs/<bundle>/seed<s>/eval/fold<k>/summary.json)")
    record = read_study_record(out)
    names += [name for name in record.get("bundles", []) if name not in names]  # e.g. a failed one
    write_report(
        out,
        names,
        folds,
        status=record.get("status", {}),
        settings=record.get("settings", {}),
        dataset=record.get("dataset", out.name),
        seeds=seeds,
        reference=reference,
    )
    print(f"report: {out / 'results.md'}")


SUBCOMMANDS = {
    "run_bundle": run_bundle,
    "report": report,
    "sweep": sweep,
    "levels": levels,
    "keep": keep,
}  # the first argument; else a dataset


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    errors = (StudyError, SpecError, ReportInputError, LaunchError, study_tracking.TrackingError)
    if argv and argv[0] in SUBCOMMANDS:
        return run_fire(SUBCOMMANDS[argv[0]], argv[1:], argv[0], errors)
    if any(arg in ("--help", "-h") for arg in argv):  # with **overrides, fire would take it as one
        argv = ["--", "--help"]
    exit_codes: list[int] = []

    def study_command(*args, **kwargs) -> None:
        exit_codes.append(study(*args, **kwargs))

    study_command.__doc__ = study.__doc__
    study_command.__signature__ = inspect.signature(study)
    status = run_fire(study_command, argv, "run_study.py", errors)
    return status or (exit_codes[0] if exit_codes else 0)


if __name__ == "__main__":
    sys.exit(main())
