"""MLflow tracking of a study: one experiment per study folder, one MLflow run per (bundle, seed, fold).

Training logs through MONAI's own experiment management (``monai.bundle run ... --tracking mlflow``: the
executed config, per-iteration train loss, per-epoch train and validation Dice); this module adds what the
study knows: tags (loss, dataset, fold, seed), the study settings as parameters, the evaluation summary as
``test_*`` metrics with its files, and the report's figures in a run named ``report``. MLflow is optional:
``pip install mlflow``.
"""

from __future__ import annotations

import time
from pathlib import Path

TRACKERS = ("mlflow",)
REPORT_RUN = "report"


class TrackingError(ValueError):
    """Tracking that cannot work: the message says why and what to do."""


def require(tracking: str) -> None:
    if tracking not in TRACKERS:
        raise TrackingError(f"--tracking must be one of {', '.join(TRACKERS)}, got {tracking!r}")
    try:
        import mlflow  # noqa: F401
    except ModuleNotFoundError as error:
        raise TrackingError(
            "--tracking=mlflow needs MLflow, an optional dependency: pip install mlflow (or pip install -e .[tracking])"
        ) from error


def default_uri(study_dir: Path) -> str:
    """A SQLite store in the study folder (MLflow 3 no longer accepts a plain folder as its store)."""
    return "sqlite:///" + str((study_dir / "mlruns.db").resolve())


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str, artifacts_dir: Path) -> str:
    """The experiment's id, creating it with its artifacts under ``artifacts_dir`` (before any run starts,
    so parallel runs do not race to create it)."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(name, artifact_location=artifacts_dir.resolve().as_uri())


def find_or_create_run(uri: str, experiment: str, run_name: str):
    client = _client(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    return runs[0] if runs else client.create_run(experiment_id, run_name=run_name)


def record_run(
    uri: str,
    experiment: str,
    run_name: str,
    tags: dict,
    params: dict,
    summary: dict,
    files: list[Path],
) -> str:
    """Tags, parameters (those not logged yet), the evaluation summary and its files on the run; returns its id."""
    from mlflow.entities import Metric, Param, RunTag
    from monai.bundle.reference_resolver import ReferenceResolver

    from custom_losses.metrics import test_metrics

    client = _client(uri)
    run = find_or_create_run(uri, experiment, run_name)
    run_id = run.info.run_id
    logged = run.data.params
    # MLflow names may not hold "#": a nested config id is written with MONAI's other separator, "::"
    names = {k: ReferenceResolver.normalize_id(k) for k in params}
    new_params = [Param(names[k], str(v)) for k, v in params.items() if names[k] not in logged]
    now = int(1000 * time.time())
    metrics = [Metric(name, float(value), now, 0) for name, value in test_metrics(summary).items()]
    client.log_batch(run_id, metrics=metrics, params=new_params, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    for path in files:
        if path.is_file():
            client.log_artifact(run_id, str(path), artifact_path="evaluation")
    if run.info.status == "RUNNING":
        client.set_terminated(run_id)
    return run_id


def record_report(uri: str, experiment: str, study_dir: Path) -> str:
    """The report's tables and figures as artifacts of the experiment's ``report`` run."""
    client = _client(uri)
    run = find_or_create_run(uri, experiment, REPORT_RUN)
    for path in sorted(study_dir.glob("*.png")) + [study_dir / "results.md", study_dir / "results.csv"]:
        if path.is_file():
            client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id
