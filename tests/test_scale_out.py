"""Scaling a study out: parallel runs on one machine, a submitit job array, MLflow tracking, TensorBoard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lesion_study.study import cli as run_study
from lesion_study.study import tracking as study_tracking
from lesion_study.study.launch import (
    Job,
    LaunchError,
    SlurmOptions,
    check_launch,
    run_parallel,
    seconds_left,
    submit_array,
)
from tests.conftest import TINY


def fake_job(tmp_path: Path, key: str, code: str) -> Job:
    return Job(key, key, [sys.executable, "-c", code], tmp_path / f"{key}.log")


def test_time_left_of_a_resumed_run_counts_only_the_epochs_done_since_it_resumed():
    # a fresh run: 2 of 10 epochs in 60 s, 8 left
    assert seconds_left(60.0, 0.2) == pytest.approx(240.0)
    # resumed at epoch 5 of 10: 1 epoch in 60 s is 60 s per epoch, not 12 s (5 epochs in 60 s)
    assert seconds_left(60.0, 0.5, resumed_at=0.4) == pytest.approx(300.0)


def test_parallel_runs_one_per_gpu_and_go_on_after_a_failure(tmp_path, capsys):
    show_gpu = "import os, time; print('gpu', os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(0.3)"
    jobs = [fake_job(tmp_path, f"run{i}", show_gpu) for i in range(4)]
    jobs.insert(1, fake_job(tmp_path, "broken", "print('error: broken.json: no such loss'); raise SystemExit(1)"))
    status = run_parallel(jobs, started=0.0, max_parallel=2, gpus=[3, 5])
    assert status["broken"].text == "failed (exit 1): error: broken.json: no such loss"
    assert all(status[f"run{i}"].text == "ok" for i in range(4))
    seen = [(tmp_path / f"run{i}.log").read_text().split()[-1] for i in range(4)]
    assert set(seen) <= {"3", "5"} and len(set(seen)) == 2  # both GPUs used, each run sees one
    printed = capsys.readouterr().out
    assert printed.count(": ok in") == 4 and "broken: failed (exit 1)" in printed


def test_submitit_array_reports_each_job_and_can_return_at_once(tmp_path, capsys):
    jobs = [fake_job(tmp_path, "good", "print('fine')")]
    jobs.append(fake_job(tmp_path, "bad", "print('error: bad.json: no such loss'); raise SystemExit(2)"))
    status = submit_array(jobs, tmp_path / "array", "local", SlurmOptions(), wait_for_jobs=True, started=0.0)
    assert status["good"].record() == {"status": "ok"}
    assert status["bad"].text.startswith("failed (job ") and status["bad"].text.endswith(
        ": error: bad.json: no such loss"
    )
    assert (tmp_path / "good.log").read_text() == "fine\n"  # the run's output in its own log
    assert sorted(json.loads((tmp_path / "array" / "jobs.json").read_text())) == ["bad", "good"]
    later = [fake_job(tmp_path, "later", "print('done')")]
    assert submit_array(later, tmp_path / "later", "local", SlurmOptions(), wait_for_jobs=False, started=0.0) is None
    assert "later" in json.loads((tmp_path / "later" / "jobs.json").read_text())


def test_launch_options_are_checked():
    with pytest.raises(LaunchError, match="--launcher must be one of"):
        check_launch("kubernetes", 1, None, None)
    with pytest.raises(LaunchError, match="--max_parallel must be a positive integer"):
        check_launch("local", 0, None, None)
    with pytest.raises(LaunchError, match="--device=cuda:1 contradicts it"):
        check_launch("local", 1, [0, 1], "cuda:1")
    with pytest.raises(LaunchError, match="--gpus is for the local launcher"):
        check_launch("slurm", 1, [0], None)
    assert run_study.main(["demo", "--launcher=kubernetes"]) == 1


def test_tracking_without_mlflow_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ModuleNotFoundError
    with pytest.raises(study_tracking.TrackingError, match="pip install mlflow"):
        study_tracking.require("mlflow")
    with pytest.raises(study_tracking.TrackingError, match="must be one of mlflow"):
        study_tracking.require("wandb")


def per_run_results(out: Path) -> dict[str, str]:
    return {
        str(path.relative_to(out)): path.read_text()
        for path in sorted((out / "runs").glob("*/seed*/eval/fold1/per_image.csv"))
    }


@pytest.mark.slow
def test_parallel_study_matches_sequential(tiny_demo_data, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same threads in both, so the same arithmetic
    kwargs = dict(data_dir=str(tiny_demo_data), bundles=["ce", "dice"], examples=False, **TINY)
    assert run_study.study("demo", output_dir=str(tmp_path / "sequential"), **kwargs) == 0
    assert run_study.study("demo", output_dir=str(tmp_path / "parallel"), max_parallel=2, **kwargs) == 0
    sequential, parallel = per_run_results(tmp_path / "sequential"), per_run_results(tmp_path / "parallel")
    assert len(sequential) == 2 and sequential == parallel


@pytest.mark.slow
def test_submitit_array_with_mlflow_tracking_and_tensorboard(tiny_demo_data, tmp_path, capsys):
    mlflow = pytest.importorskip("mlflow")
    out = tmp_path / "study"
    code = run_study.study(
        "demo",
        data_dir=str(tiny_demo_data),
        bundles=["ce", "dice"],
        output_dir=str(out),
        launcher="submitit_local",
        tracking="mlflow",
        **TINY,
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "submitted 2 run(s) as local job(s)" in printed
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert sorted(jobs) == ["polyp_ce/seed0/fold1", "polyp_dice/seed0/fold1"]
    assert [r.split(",")[0] for r in (out / "results.csv").read_text().splitlines()[1:]] == ["ce", "dice"]

    client = mlflow.MlflowClient(tracking_uri=study_tracking.default_uri(out))
    experiment = client.get_experiment_by_name("study")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["polyp_ce/seed0/fold1", "polyp_dice/seed0/fold1", "report"]
    ce = runs["polyp_ce/seed0/fold1"]
    assert ce.info.status == "FINISHED"
    assert {k: ce.data.tags[k] for k in ("loss", "dataset", "fold", "seed")} == {
        "loss": "ce",
        "dataset": "demo",
        "fold": "1",
        "seed": "0",
    }
    assert ce.data.params["epochs"] == "1" and ce.data.params["image_size"] == "64"
    assert ce.data.params["network_def::backbone"] == "resnet10"  # the demo's nested override, MLflow-safe name
    summary = json.loads((out / "runs" / "polyp_ce" / "seed0" / "eval" / "fold1" / "summary.json").read_text())
    assert ce.data.metrics["test_dice_lesion"] == pytest.approx(summary["dice_lesion"])
    logged_files = {Path(a.path).name for a in client.list_artifacts(ce.info.run_id, "evaluation")}
    assert logged_files == {"summary.json", "per_image.csv"}
    for metric in ("train_loss", "train_mean_dice", "val_mean_dice"):  # from MONAI's --tracking mlflow
        assert client.get_metric_history(ce.info.run_id, metric), metric
    assert [m.step for m in client.get_metric_history(ce.info.run_id, "val_mean_dice")] == [1]
    artifacts = {a.path for a in client.list_artifacts(runs["report"].info.run_id)}
    assert {"results.md", "dice_vs_lesion_free_fp.png"} <= artifacts

    # TensorBoard: one --logdir at the study folder finds every run's training curves
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(out))
    multiplexer.Reload()
    curves = {run: tags["scalars"] for run, tags in multiplexer.Runs().items()}
    for bundle in ("polyp_ce", "polyp_dice"):
        run = next(r for r in curves if r.startswith(f"runs/{bundle}/"))
        assert "train_loss" in curves[run] and "val_mean_dice" in curves[run]


@pytest.mark.slow
def test_bundle_tracking_mlflow_records_train_evaluate_and_finetune(tiny_demo_data, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    bundle = run_study.REPO / "bundles" / "polyp_ce"
    train, evaluate, finetune = (str(bundle / "configs" / f"{name}.json") for name in ("train", "evaluate", "finetune"))
    common = ["--bundle_root", str(bundle), "--dataset_dir", str(tiny_demo_data), "--tracking", "mlflow"]
    common += ["--batch_size", "4", "--val_batch_size", "4", "--num_workers", "0", "--image_size", "64"]
    common += ["--device", "cpu"]

    def monai_run(config_files: list[str], output_dir: Path, *args: str) -> list:
        command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(config_files)]
        command += common + ["--output_dir", str(output_dir), *args]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        client = mlflow.MlflowClient(tracking_uri="sqlite:///" + str(output_dir / "mlruns.db"))
        experiment = client.get_experiment_by_name("monai_experiment")
        return client, sorted(client.search_runs([experiment.experiment_id]), key=lambda r: r.info.start_time)

    monai_run([train], tmp_path / "trained", "--epochs", "2")
    client, (training, evaluation) = monai_run([train, evaluate], tmp_path / "trained")
    assert training.data.params["max_epochs"] == "2"
    assert [m.step for m in client.get_metric_history(training.info.run_id, "val_mean_dice")] == [1, 2]
    iterations = 2 * int(training.data.params["epoch_length"])
    assert len(client.get_metric_history(training.info.run_id, "train_loss")) == iterations
    summary = json.loads((tmp_path / "trained" / "eval" / "fold1" / "summary.json").read_text())
    for name in ("dice_lesion", "lesion_free_fp_rate", "area_error_soft"):
        assert evaluation.data.metrics[f"test_{name}"] == pytest.approx(summary[name]), name

    start = tmp_path / "trained" / "models" / "fold1" / "model_final.pt"
    finetuned = tmp_path / "finetuned"
    client, (finetuning,) = monai_run(
        [train, finetune], finetuned, "--finetune_checkpoint", str(start), "--epochs", "1"
    )
    assert finetuning.info.status == "FINISHED" and finetuning.data.params["max_epochs"] == "1"
    assert client.get_metric_history(finetuning.info.run_id, "val_mean_dice")
