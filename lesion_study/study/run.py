"""One run of a study, in its own process (``python -m lesion_study.study run_bundle``): train, evaluate and
predict the example images through MONAI's bundle API, each stage skipped once done (``layout``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lesion_study.study import tracking as study_tracking
from lesion_study.study.launch import end_with_study
from lesion_study.study.layout import settings_file, stage_done, stage_marker
from lesion_study.study.plan import StudyError, top_level_id


@contextmanager
def run_lock(run_dir: Path, name: str) -> Iterator[None]:
    """Hold ``RUN/<name>.lock`` (a run's fold, or its ensemble) for this process, or fail naming its holder.

    A POSIX record lock (``lockf``): the kernel releases it when the process ends however it ends, and the
    data-loader processes it forks do not hold it. The file keeps the holder's PID for the message."""
    try:
        import fcntl
    except ModuleNotFoundError:  # Windows: no lock
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"{name}.lock"
    with open(path, "a+") as lock:
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise StudyError(
                f"{run_dir} {name} is in use by process {holder} ({path}): another study is running it; "
                "wait for it to end or stop it"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def run_bundle(
    bundle_dir: str,
    run_dir: str,
    data_dir: str,
    fold: int,
    overrides: dict | str = "{}",
    examples_dir: str | None = None,
    ensemble_folds: list[int] | str | None = None,
    tracking: dict | str | None = None,
) -> None:
    """One (bundle, fold) in this process: train, evaluate, predict the example images (stages already
    done are skipped). With ``ensemble_folds`` (a JSON list) it only runs the fold-ensemble evaluation.
    ``tracking`` (JSON: uri, experiment, run_name, tags, params): train with MONAI's ``--tracking mlflow``
    into that MLflow run, then add the tags, parameters and evaluation summary to it. One process at a time
    runs a (run folder, fold): a second one fails at once naming the first (:func:`run_lock`)."""
    end_with_study()
    with run_lock(Path(run_dir), "ensemble" if ensemble_folds is not None else f"fold{fold}"):
        _run_stages(bundle_dir, run_dir, data_dir, fold, overrides, examples_dir, ensemble_folds, tracking)


def _run_stages(
    bundle_dir: str,
    run_dir: str,
    data_dir: str,
    fold: int,
    overrides: dict | str,
    examples_dir: str | None,
    ensemble_folds: list[int] | str | None,
    tracking: dict | str | None,
) -> None:
    from monai.bundle import run

    from custom_losses.atomic import write_json_atomic
    from custom_losses.handlers import resume_checkpoints

    bundle, out = Path(bundle_dir), Path(run_dir)
    configs = bundle / "configs"
    overrides = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
    tracking = json.loads(tracking) if isinstance(tracking, str) else tracking
    common = {
        "bundle_root": str(bundle),
        "output_dir": str(out),
        "logging_file": str(configs / "logging.conf"),
        "meta_file": str(configs / "metadata.json"),
        **overrides,
    }
    evaluate = [str(configs / "train.json"), str(configs / "evaluate.json")]
    if ensemble_folds is not None:
        folds = json.loads(ensemble_folds) if isinstance(ensemble_folds, str) else list(ensemble_folds)
        ensemble = evaluate + [str(configs / "evaluate_ensemble.json")]
        run(config_file=ensemble, dataset_dir=data_dir, folds=folds, **common)
        return
    if not stage_done(out, fold, "train"):
        for stale in ("evaluate", "examples"):  # outputs of an earlier model of this run are done again
            stage_marker(out, fold, stale).unlink(missing_ok=True)
        resume = bool(resume_checkpoints(out / "models" / f"fold{fold}"))
        print(f"stage: train {bundle.name} fold {fold}{' (resumed)' if resume else ''}", flush=True)
        if not resume:  # a resumed run keeps the record of its start (the study refuses other settings)
            write_json_atomic(settings_file(out, fold), {"settings": overrides})
        train = [str(configs / "train.json")]
        if "finetune_checkpoint" in overrides:  # start from a trained model (--finetune_from)
            train.append(str(configs / "finetune.json"))
        if tracking:
            logged = {"tracking_uri": tracking["uri"], "experiment_name": tracking["experiment"]}
            logged["run_name"] = tracking["run_name"]
            logged["save_execute_config"] = str(out / f"train_config_fold{fold}.json")  # logged as an artifact
            run(
                config_file=train, dataset_dir=data_dir, fold=fold, resume=resume, tracking="mlflow", **common, **logged
            )
        else:
            run(config_file=train, dataset_dir=data_dir, fold=fold, resume=resume, **common)
    if not stage_done(out, fold, "evaluate"):
        print(f"stage: evaluate {bundle.name} fold {fold}", flush=True)
        run(config_file=evaluate, dataset_dir=data_dir, fold=fold, **common)
    if tracking:
        eval_dir = out / "eval" / f"fold{fold}"
        summary = json.loads((eval_dir / "summary.json").read_text())
        files = [eval_dir / "summary.json", *sorted(eval_dir.glob("per_*.csv"))]  # per_image or per_volume
        study_tracking.record_run(
            tracking["uri"],
            tracking["experiment"],
            tracking["run_name"],
            tracking["tags"],
            tracking["params"],
            summary,
            files,
        )
    if examples_dir and not stage_done(out, fold, "examples"):
        print(f"stage: examples {bundle.name} fold {fold}", flush=True)
        prediction_dir = out / "examples" / f"fold{fold}"
        inference = {k: v for k, v in common.items() if k in ("bundle_root", "output_dir", "logging_file", "meta_file")}
        inference_ids = json.loads((configs / "inference.json").read_text())
        # the overrides inference.json knows (device, image_size, network_def#backbone...), not training's
        inference.update({k: v for k, v in overrides.items() if top_level_id(k) in inference_ids})
        run(
            config_file=str(configs / "inference.json"),
            input_dir=examples_dir,
            prediction_dir=str(prediction_dir),
            fold=fold,
            **inference,
        )
        (prediction_dir / "done").write_text("ok\n")
