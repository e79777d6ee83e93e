"""The study runner end to end on a tiny demo, its resume and failure handling, and the report."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from custom_losses.precision import resolve_precision
from lesion_study.study import cli as run_study
from lesion_study.study.layout import run_path
from lesion_study.study.report import convergence, convergence_verdict, validation_curve, write_report
from lesion_study.synthetic import write_prepared_polyp
from tests.conftest import TINY


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_demo_study_runs_resumes_and_reports_failures(tiny_demo_data, tmp_path, capsys):
    out = tmp_path / "study"
    code = run_study.study("demo", data_dir=str(tiny_demo_data), bundles=["ce", "dice"], output_dir=str(out), **TINY)
    assert code == 0
    for name in ("polyp_ce", "polyp_dice"):
        assert (out / "runs" / name / "seed0" / "models" / "fold1" / "model_final.pt").is_file()
        assert (out / "runs" / name / "seed0" / "eval" / "fold1" / "summary.json").is_file()
        assert (out / "runs" / name / "seed0" / "fold1.log").is_file()
    rows = read_csv(out / "results.csv")
    assert [(r["loss"], r["kind"], r["n"]) for r in rows] == [("ce", "runs", "1"), ("dice", "runs", "1")]
    assert rows[1]["reference"] == "ce" and rows[1]["dice_lesion_ci_low"] != ""
    summary = json.loads((out / "runs" / "polyp_ce" / "seed0" / "eval" / "fold1" / "summary.json").read_text())
    assert float(rows[0]["dice_lesion_mean"]) == pytest.approx(summary["dice_lesion"])
    table = (out / "results.md").read_text()
    assert "| ce | 1 |" in table and "| dice | 1 |" in table
    assert "### Paired differences to ce" in table and "### Reading" in table
    assert (out / "example_masks").is_dir() and len(list((out / "example_masks").iterdir())) == 5
    assert "### Convergence" in table and "| ce | seed 0 fold 1 | 1 |" in table
    for plot in (
        "dice_vs_lesion_free_fp.png",
        "area_errors.png",
        "reliability.png",
        "examples.png",
        "validation_curves.png",
    ):
        assert (out / plot).stat().st_size > 1000, plot
    assert "epoch 1/1" in capsys.readouterr().out  # progress a person can follow

    # resume: finished runs are skipped, their checkpoints untouched
    first = json.loads((out / "study.json").read_text())["status"]["polyp_ce/seed0/fold1"]
    assert first["status"] == "ok" and first["seconds"] > 0
    checkpoint = out / "runs" / "polyp_ce" / "seed0" / "models" / "fold1" / "model_final.pt"
    modified = checkpoint.stat().st_mtime_ns
    assert (
        run_study.study("demo", data_dir=str(tiny_demo_data), bundles=["ce", "dice"], output_dir=str(out), **TINY) == 0
    )
    assert checkpoint.stat().st_mtime_ns == modified
    assert "finished earlier, skipped" in capsys.readouterr().out

    # a run whose final model was deleted is done again, evaluation included; the other run is skipped
    dice_run = out / "runs" / "polyp_dice" / "seed0"
    (dice_run / "models" / "fold1" / "model_final.pt").unlink()
    summary = dice_run / "eval" / "fold1" / "summary.json"
    evaluated = summary.stat().st_mtime_ns
    assert (
        run_study.study("demo", data_dir=str(tiny_demo_data), bundles=["ce", "dice"], output_dir=str(out), **TINY) == 0
    )
    assert checkpoint.stat().st_mtime_ns == modified
    assert (dice_run / "models" / "fold1" / "model_final.pt").is_file() and summary.stat().st_mtime_ns > evaluated
    output = capsys.readouterr().out
    assert "polyp_ce seed 0 fold 1: finished earlier, skipped" in output
    assert "polyp_dice seed 0 fold 1: finished earlier" not in output
    assert "stage: train polyp_dice fold 1 (resumed)" in (dice_run / "fold1.log").read_text()
    # the record keeps how long the skipped run took when it ran (two commands ago)
    kept = json.loads((out / "study.json").read_text())["status"]["polyp_ce/seed0/fold1"]
    assert kept == {"status": "ok (an earlier command)", "seconds": first["seconds"]}
    row = f"| polyp_ce/seed0/fold1 | ok (an earlier command) | {first['seconds']} |"
    assert row in (out / "results.md").read_text()

    # a failing bundle is reported, the others still go through, the exit status says so
    bundles_dir = tmp_path / "bundles"
    for name in ("polyp_ce", "polyp_dice"):
        shutil.copytree(run_study.REPO / "bundles" / name, bundles_dir / name)
    shutil.copytree(run_study.REPO / "bundles" / "polyp_ce", bundles_dir / "polyp_broken")
    train_json = bundles_dir / "polyp_broken" / "configs" / "train.json"
    config = json.loads(train_json.read_text())
    config["loss"] = {"_target_": "custom_losses.NoSuchLoss"}
    train_json.write_text(json.dumps(config, indent=4))
    code = run_study.study(
        "demo",
        data_dir=str(tiny_demo_data),
        bundles=["broken", "ce", "dice"],
        output_dir=str(out),
        bundles_dir=str(bundles_dir),
        **TINY,
    )
    assert code == 1
    assert "1 run(s) failed: polyp_broken/seed0/fold1" in capsys.readouterr().err
    table = (out / "results.md").read_text()
    assert "| polyp_broken/seed0/fold1 | failed (exit 1)" in table
    assert [r["loss"] for r in read_csv(out / "results.csv")] == ["ce", "dice"]
    assert "NoSuchLoss" in (out / "runs" / "polyp_broken" / "seed0" / "fold1.log").read_text()

    # the report rebuilds the same page from the saved summaries, per-image CSVs and study record alone
    (out / "results.md").unlink()
    run_study.report(str(out))
    assert (out / "results.md").read_text() == table
    assert "### Paired differences to ce" in table


def test_study_record_of_a_study_run_one_loss_at_a_time_keeps_the_earlier_losses():
    """study.json after the second loss's command still lists the first loss's runs (same dataset and
    settings), as done by an earlier command; after a command with other settings it is that command's alone."""
    settings = {"epochs": 45, "batch_size": 8}
    first = run_study.study_record(
        {},
        "polyp",
        ["polyp_ce"],
        settings,
        {"polyp_ce/seed0/fold1": {"status": "ok", "seconds": 2700.0}, "polyp_ce/seed0/ensemble": {"status": "ok"}},
    )
    failed = {"status": "failed (exit 1): error: data/x.png is not an image"}
    second = run_study.study_record(
        first | {"status": first["status"] | {"polyp_ce/seed0/fold2": failed}},
        "polyp",
        ["polyp_dice"],
        settings,
        {"polyp_dice/seed0/fold1": {"status": "ok", "seconds": 2600.0}},
    )
    assert second["bundles"] == ["polyp_ce", "polyp_dice"]
    assert second["status"] == {
        "polyp_ce/seed0/fold1": {"status": "ok (an earlier command)", "seconds": 2700.0},
        "polyp_ce/seed0/ensemble": {"status": "ok (an earlier command)"},
        "polyp_ce/seed0/fold2": failed,
        "polyp_dice/seed0/fold1": {"status": "ok", "seconds": 2600.0},
    }
    # this command's own status of a run wins over the earlier one
    again = run_study.study_record(second, "polyp", ["polyp_ce"], settings, {"polyp_ce/seed0/fold2": {"status": "ok"}})
    assert again["status"]["polyp_ce/seed0/fold2"] == {"status": "ok"}
    other = run_study.study_record(second, "polyp", ["polyp_ce"], settings | {"epochs": 30}, {})
    assert other == {"dataset": "polyp", "bundles": ["polyp_ce"], "settings": settings | {"epochs": 30}, "status": {}}
    assert run_study.study_record(second, "footulcer", ["footulcer_ce"], settings, {})["bundles"] == ["footulcer_ce"]


def test_study_refuses_bad_arguments(tmp_path):
    with pytest.raises(run_study.StudyError, match="dataset must be one of"):
        run_study.study("kidney", output_dir=str(tmp_path))
    with pytest.raises(run_study.StudyError, match="--data_dir is required"):
        run_study.study("polyp", output_dir=str(tmp_path))
    with pytest.raises(run_study.StudyError, match="no bundle polyp_focal"):
        run_study.study("polyp", bundles=["focal"], data_dir=str(tmp_path), output_dir=str(tmp_path))
    with pytest.raises(run_study.StudyError, match="no test set to ensemble on"):
        run_study.study("hippocampus", ensemble=True, data_dir=str(tmp_path), output_dir=str(tmp_path))
    with pytest.raises(run_study.StudyError, match=r"--ensemble needs two or more folds, got --folds=\[1\]"):
        run_study.study("polyp", ensemble=True, folds=[1], data_dir=str(tmp_path), output_dir=str(tmp_path))
    assert run_study.bundle_names("hippocampus", None, run_study.REPO / "bundles") == [
        f"hippocampus_{loss}" for loss in ("ce", "dice", "batch_dice", "ce_dice", "ce_finetune_dice", "dbce")
    ]
    with pytest.raises(run_study.StudyError, match="datalist.json does not exist"):
        run_study.study("polyp", bundles=["ce"], data_dir=str(tmp_path), output_dir=str(tmp_path))
    assert run_study.main(["polyp", f"--output_dir={tmp_path}"]) == 1


def last_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_study_names_a_malformed_datalist_in_one_line(tiny_demo_data, tmp_path, capsys):
    data = Path(shutil.copytree(tiny_demo_data, tmp_path / "data")).resolve()
    (data / "datalist.json").write_text('{"train": [], "test": [')
    out = tmp_path / "study"
    assert run_study.main(["polyp", f"--data_dir={data}", "--bundles=[ce]", f"--output_dir={out}"]) == 1
    assert last_error_line(capsys).startswith(f"error: {data / 'datalist.json'} is not valid JSON: ")
    assert not out.exists()


def test_study_example_set_is_complete_or_absent(tiny_demo_data, tmp_path, capsys):
    """A missing test image: one line naming it, no example folder; once restored, the whole set (4 test
    images with a lesion and 2 without: 3 + 2), also in place of a half-copied set of an earlier version."""
    data = Path(shutil.copytree(tiny_demo_data, tmp_path / "data")).resolve()
    datalist = json.loads((data / "datalist.json").read_text())
    missing = data / [t for t in datalist["test"] if not t["lesion_free"]][1]["image"]
    kept = missing.read_bytes()
    missing.unlink()
    out = tmp_path / "study"
    assert run_study.main(["polyp", f"--data_dir={data}", "--bundles=[ce]", f"--output_dir={out}"]) == 1
    assert last_error_line(capsys) == f"error: test image {missing} listed in {data / 'datalist.json'} does not exist"
    assert not out.exists()

    missing.write_bytes(kept)
    assert len(list(run_study.choose_examples(data, out).iterdir())) == 5
    assert sorted(p.name for p in out.iterdir()) == ["example_images", "example_masks"]
    assert len(list((out / "example_masks").iterdir())) == 5

    shutil.rmtree(out / "example_images")
    (out / "example_images").mkdir()
    shutil.copy(missing, out / "example_images" / f"lesion_{missing.name}")  # what the earlier version left
    done = out / "runs" / "polyp_ce" / "seed0" / "examples" / "fold1" / "done"
    done.parent.mkdir(parents=True)
    done.write_text("ok\n")
    assert len(list(run_study.choose_examples(data, out).iterdir())) == 5
    assert not done.exists()  # the run's example predictions are done again, on the whole set


def test_study_on_cuda_without_cuda_says_so_before_any_run(tiny_demo_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "study"
    common = ["polyp", f"--data_dir={tiny_demo_data}", "--bundles=[ce]", "--examples=False", f"--output_dir={out}"]
    assert run_study.main([*common, "--device=cuda", "--epochs=1"]) == 1
    assert last_error_line(capsys).startswith("error: --device=cuda: CUDA is not available on this machine (torch ")
    assert run_study.main([*common, "--gpus=[0,1]", "--epochs=1"]) == 1
    assert last_error_line(capsys).startswith("error: --gpus=[0, 1]: CUDA is not available on this machine")
    assert not out.exists()  # no run started


@pytest.mark.slow
def test_report_states_each_runs_own_settings(tiny_demo_data, tmp_path, capsys):
    """A finished 1-epoch run is skipped by a 2-epoch study: the report gives each run its own epochs, and
    an unfinished run does not go on with other settings."""
    out = tmp_path / "study"
    common = {"data_dir": str(tiny_demo_data), "output_dir": str(out), "examples": False}
    assert run_study.study("polyp", bundles=["ce"], **common, **TINY) == 0
    assert run_study.study("polyp", bundles=["ce", "dice"], **common, **{**TINY, "epochs": 2}) == 0
    page = (out / "results.md").read_text()
    assert "`epochs=2`" not in page  # the command's, not the skipped run's
    assert "**The runs differ in their settings** (each run its own):" in page
    assert "| epochs | 1 | ce seed 0 fold 1 |" in page and "| epochs | 2 | dice seed 0 fold 1 |" in page
    assert "`epochs=" not in page.split("Same in every run: ")[1].splitlines()[0]
    # what precision auto meant on the machine that trained each run
    assert f"`computed_in={resolve_precision('auto', 'cpu')}`" in page.split("Same in every run: ")[1].splitlines()[0]
    skipped = "polyp_ce seed 0 fold 1: finished earlier with epochs=1 (this command: epochs=2), skipped"
    assert skipped in capsys.readouterr().out
    run_study.report(str(out))
    assert (out / "results.md").read_text() == page

    models = out / "runs" / "polyp_dice" / "seed0" / "models" / "fold1"
    (models / "model_final.pt").unlink()  # the run is unfinished: its last resume checkpoint is left
    assert run_study.main(["polyp", "--bundles=[dice]", *(f"--{k}={v}" for k, v in {**common, **TINY}.items())]) == 1
    assert last_error_line(capsys) == (
        "error: polyp_dice/seed0/fold1 was trained with epochs=2, this command asks for epochs=1: run it with the "
        f"same settings, or delete {models} to train it again, or choose another --output_dir"
    )


def fake_summary(dice: float, fp_rate: float, area_error: float) -> dict:
    return {
        "dice_lesion": dice,
        "iou_lesion": dice / 2,
        "dice_all": dice,
        "predicted_empty_share": fp_rate / 10,
        "ideal_empty_share": 0.1,
        "lesion_free_fp_rate": fp_rate,
        "lesion_free_fp_area": fp_rate / 100,
        "area_error_hard": area_error,
        "area_error_soft": area_error / 2,
        "abs_area_error_hard": abs(area_error),
        "abs_area_error_soft": abs(area_error / 2),
        "ece": 0.05,
    }


def write_run(out: Path, bundle: str, seed: int, fold: int, summary: dict, images: list[dict] | None = None) -> None:
    evaluation = out / "runs" / bundle / f"seed{seed}" / "eval" / f"fold{fold}"
    evaluation.mkdir(parents=True)
    (evaluation / "summary.json").write_text(json.dumps(summary))
    if images is not None:
        with open(evaluation / "per_image.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(images[0]))
            writer.writeheader()
            writer.writerows(images)


def per_image(dice: list[float], free_with_lesion: list[bool], area_error: float = 0.1) -> list[dict]:
    """Per-image rows: lesion images with the given Dice, then lesion-free images."""
    rows = []
    for i, value in enumerate(dice):
        rows.append(
            {"image": f"lesion{i}.png", "lesion_free": False, "has_lesion": True, "dice": value, "iou": value / 2}
            | {"true_area": 100, "pred_area": 110, "soft_area": 120.0, "pred_empty": False, "fp_area_fraction": 0.0}
            | {"area_error_hard": area_error, "area_error_soft": area_error * 2}
        )
    for i, flag in enumerate(free_with_lesion):
        rows.append(
            {"image": f"free{i}.png", "lesion_free": True, "has_lesion": False, "dice": float(not flag)}
            | {"iou": float(not flag), "true_area": 0, "pred_area": 5 * flag, "soft_area": 6.0 * flag}
            | {"pred_empty": not flag, "fp_area_fraction": 0.02 if flag else 0.0}
            | {"area_error_hard": "", "area_error_soft": ""}
        )
    return rows


def test_report_means_stds_and_best_marks(tmp_path):
    runs = {
        "polyp_ce": [fake_summary(0.80, 0.1, -0.05), fake_summary(0.84, 0.3, 0.05)],
        "polyp_dice": [fake_summary(0.85, 0.9, 0.20), fake_summary(0.87, 0.7, 0.30)],
    }
    for name, summaries in runs.items():
        for fold, summary in enumerate(summaries, start=1):
            write_run(tmp_path, name, 0, fold, summary)
    (tmp_path / "runs" / "polyp_ce" / "seed0" / "eval" / "ensemble").mkdir()
    (tmp_path / "runs" / "polyp_ce" / "seed0" / "eval" / "ensemble" / "summary.json").write_text(
        json.dumps(fake_summary(0.9, 0.0, 0.0))
    )
    write_report(tmp_path, ["polyp_ce", "polyp_dice"], [1, 2], status={}, settings={}, dataset="unit")
    rows = read_csv(tmp_path / "results.csv")
    assert [(r["loss"], r["kind"]) for r in rows] == [("ce", "runs"), ("ce", "ensemble"), ("dice", "runs")]
    assert float(rows[0]["dice_lesion_mean"]) == pytest.approx(0.82)
    assert float(rows[0]["dice_lesion_std"]) == pytest.approx(0.0282843, rel=1e-4)  # sample std of 0.80, 0.84
    assert float(rows[2]["lesion_free_fp_rate_mean"]) == pytest.approx(0.8)
    table = (tmp_path / "results.md").read_text()
    assert "**0.860 ± 0.014**" in table  # dice has the best Dice
    assert "**0.200 ± 0.141**" in table  # ce has the lowest lesion-free FP rate
    assert "**0.000 ± 0.071**" in table  # ce's signed area error is closest to 0
    assert "### Fold ensemble" in table


def test_report_paired_differences_over_seeds(tmp_path, capsys):
    """Two seeds per loss: image values are averaged over runs, then compared with ce image by image."""
    rng = np.random.default_rng(0)
    ce_dice = rng.uniform(0.6, 0.9, size=40)
    free_ce = [i < 2 for i in range(20)]  # ce: a false lesion on 2 of 20 lesion-free images
    free_dice = [i < 14 for i in range(20)]  # dice: on 14, including ce's 2
    for seed, jitter in ((0, -0.01), (1, 0.01)):  # the two seeds average back to the base values
        write_run(
            tmp_path, "polyp_ce", seed, 1, fake_summary(0.8, 0.1, 0.1), per_image(list(ce_dice + jitter), free_ce)
        )
        write_run(
            tmp_path,
            "polyp_dice",
            seed,
            1,
            fake_summary(0.7, 0.7, 0.1),
            per_image(list(ce_dice - 0.1 + jitter), free_dice),
        )
        write_run(
            tmp_path, "polyp_twin", seed, 1, fake_summary(0.8, 0.1, 0.1), per_image(list(ce_dice + jitter), free_ce)
        )
    names = ["polyp_ce", "polyp_dice", "polyp_twin"]
    write_report(tmp_path, names, [1], status={}, settings={}, dataset="unit", seeds=[0, 1])

    rows = {r["loss"]: r for r in read_csv(tmp_path / "results.csv")}
    assert rows["ce"]["n"] == "2" and rows["ce"]["dice_lesion_diff"] == ""  # the reference has no difference
    dice = rows["dice"]
    assert float(dice["dice_lesion_diff"]) == pytest.approx(-10.0)  # points
    assert float(dice["dice_lesion_ci_low"]) == pytest.approx(-10.0) == float(dice["dice_lesion_ci_high"])
    assert dice["dice_lesion_n"] == "40" and dice["lesion_free_fp_area_n"] == "20"
    assert (dice["lesion_free_with_lesion_count"], dice["lesion_free_with_lesion_reference_count"]) == ("14", "2")
    assert (dice["lesion_free_with_lesion_only_this"], dice["lesion_free_with_lesion_only_reference"]) == ("12", "0")
    assert float(dice["lesion_free_with_lesion_p"]) == pytest.approx(2 * 0.5**12)
    assert float(dice["lesion_free_with_lesion_p_holm"]) == pytest.approx(2 * 2 * 0.5**12)  # 2 losses compared
    twin = rows["twin"]
    assert float(twin["dice_lesion_diff"]) == 0.0 and float(twin["dice_lesion_p"]) == 1.0

    table = (tmp_path / "results.md").read_text()
    opening = table.split("### Mean")[0]  # three sentences from the measured means, before any table
    assert "**In distribution**, ce had the highest Dice on lesion images (0.800); dice the lowest" in opening
    assert "**On lesion-free images**, ce put a false lesion on the fewest (10% of them; dice: 70%)" in opening
    assert "**Areas**" in opening
    ce_mean = float(np.mean(ce_dice)) * 100
    assert f"| Dice lesion (points) | dice | {ce_mean - 10:.1f} | {ce_mean:.1f} | **-10.0 [-10.0, -10.0]** |" in table
    assert "| lesion-free image predicted with a lesion | dice | 14/20 | 2/20 | 12 | 0 |" in table
    reading = table.split("### Reading")[1]
    assert "- dice against ce: -10.0 points Dice lesion [-10.0, -10.0]" in reading
    assert "lesion-free image predicted with a lesion 14/20 against 2/20 (Holm p < 0.001)" in reading
    assert "- twin: no headline difference to ce (interval excluding 0 and Holm p < 0.05)." in reading
    assert "runs per loss: ce 2, dice 2, twin 2" in table

    write_report(tmp_path, names, [1], status={}, settings={}, dataset="unit", seeds=[0, 1], reference="focal")
    assert "the reference loss 'focal' has no evaluated run" in (tmp_path / "results.md").read_text()

    # a truncated per-image CSV: one line naming it, from the report command
    broken = tmp_path / "runs" / "polyp_twin" / "seed1" / "eval" / "fold1" / "per_image.csv"
    broken.write_text(broken.read_text().splitlines()[0].rsplit(",", 3)[0] + "\n")
    assert run_study.main(["report", f"--output_dir={tmp_path}"]) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"error: {broken}: columns ") and "missing" in message and "\n" not in message


@pytest.mark.slow
def test_report_checks_the_dbce_claim_image_by_image(tmp_path):
    base = list(np.random.default_rng(1).uniform(0.6, 0.9, size=30))
    free_dbce = [i < 2 for i in range(20)]
    free_balanced = [i < 14 for i in range(20)]
    write_run(tmp_path, "polyp_dbce", 0, 1, fake_summary(0.8, 0.1, 0.1), per_image(base, free_dbce))
    write_run(tmp_path, "polyp_ce_dice", 0, 1, fake_summary(0.8, 0.1, 0.1), per_image(base, free_dbce))
    lower = [v - 0.1 for v in base]
    write_run(tmp_path, "polyp_balanced_ce", 0, 1, fake_summary(0.7, 0.7, 0.1), per_image(lower, free_balanced))
    names = ["polyp_ce_dice", "polyp_balanced_ce", "polyp_dbce"]
    write_report(tmp_path, names, [1], status={}, settings={}, dataset="unit")
    claim = (tmp_path / "results.md").read_text().split("### DBCE against balanced CE and CE + Dice")[1]
    assert "| Dice lesion (points) | dbce - balanced_ce | **+10.0 [+10.0, +10.0]** |" in claim
    assert "| lesion-free image predicted with a lesion | dbce - balanced_ce | 2/20 against 14/20 |" in claim
    assert "| Dice lesion (points) | dbce - ce_dice | +0.0" in claim
    assert "Holm over the 2 comparison(s) per metric" in claim
    # without balanced CE only the CE + Dice half is checked; without DBCE there is no section
    write_report(tmp_path, ["polyp_ce_dice", "polyp_dbce"], [1], status={}, settings={}, dataset="unit")
    claim = (tmp_path / "results.md").read_text().split("### DBCE against CE + Dice (")[1]
    assert "dbce - ce_dice" in claim and "dbce - balanced_ce" not in claim
    write_report(tmp_path, ["polyp_ce_dice", "polyp_balanced_ce"], [1], status={}, settings={}, dataset="unit")
    assert "### DBCE against" not in (tmp_path / "results.md").read_text()


def write_curve(out: Path, bundle: str, seed: int, fold: int, values: list[float]) -> None:
    """A run's validation Dice per epoch (epochs 1, 2, ...) in its TensorBoard log, as training writes it."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out / "runs" / bundle / f"seed{seed}" / "logs" / f"fold{fold}")) as writer:
        for epoch, value in enumerate(values, start=1):
            writer.add_scalar("val_mean_dice", value, epoch)


def write_ensemble(out: Path, bundle: str, seed: int, summary: dict, images: list[dict]) -> None:
    evaluation = out / "runs" / bundle / f"seed{seed}" / "eval" / "ensemble"
    evaluation.mkdir(parents=True)
    (evaluation / "summary.json").write_text(json.dumps(summary))
    with open(evaluation / "per_image.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(images[0]))
        writer.writeheader()
        writer.writerows(images)


def galdran_summary(dice_all: float, empty: float, fp_rate: float) -> dict:
    return fake_summary(0.8, fp_rate, 0.1) | {
        "dice_all": dice_all,
        "predicted_empty_share": empty,
        "num_lesion_free": 20,
        "ideal_empty_share": 20 / 60,
    }


def galdran_section(out: Path) -> str:
    return (out / "results.md").read_text().split("### Galdran et al.'s comparison, as he measured it")[1]


def galdran_five_fold_study(out: Path, ensemble_extra: dict) -> None:
    """CE and CE + Dice, five folds and their ensembles (``ensemble_extra`` joins the ensembles' summaries)."""
    base = list(np.random.default_rng(2).uniform(0.6, 0.9, size=40))
    last = {"ce": [0.80, 0.82, 0.84, 0.86, 0.88], "ce_dice": [0.85, 0.85, 0.86, 0.87, 0.87]}
    for fold in range(1, 6):
        for loss, free in (("ce", [i < 4 for i in range(20)]), ("ce_dice", [i < 8 for i in range(20)])):
            summary = galdran_summary(0.70, 0.05, 0.2 if loss == "ce" else 0.4)
            write_run(out, f"polyp_{loss}", 0, fold, summary, per_image(base, free))
            value = last[loss][fold - 1]
            write_curve(out, f"polyp_{loss}", 0, fold, [0.5, value + 0.01, value])  # best at epoch 2
    # the ensembles: CE keeps 18 of 20 lesion-free images empty, CE + Dice 6 of them (CE's two included), and
    # CE + Dice is 0.05 lower on every lesion image: Dice over all 60 images differs by (40 * -0.05 - 12) / 60
    write_ensemble(
        out,
        "polyp_ce",
        0,
        galdran_summary(0.77, 0.30, 0.1) | {"folds": [1, 2, 3, 4, 5]} | ensemble_extra,
        per_image(base, [i < 2 for i in range(20)]),
    )
    write_ensemble(
        out,
        "polyp_ce_dice",
        0,
        galdran_summary(0.55, 0.10, 0.7) | {"folds": [1, 2, 3, 4, 5]} | ensemble_extra,
        per_image([v - 0.05 for v in base], [i < 14 for i in range(20)]),
    )
    write_report(out, ["polyp_ce", "polyp_ce_dice"], [1, 2, 3, 4, 5], status={}, settings={}, dataset="polyp")


def test_report_sets_galdran_figures_beside_the_five_fold_ensemble(tmp_path):
    """Five folds with an ensemble: his test figures beside the ensemble's Dice over all images, paired tests of
    the ensembles against CE, and the validation Dice of the last epoch as mean ± std over folds (ddof 0)."""
    galdran_five_fold_study(tmp_path, {})
    section = galdran_section(tmp_path)
    assert "test_polyps.ipynb" in section and "commit c6726e0b0ccf" in section
    ensemble, single = section.split("#### Test set, single models (one per run)")
    single, validation = single.split("#### In distribution")
    assert "folds [1, 2, 3, 4, 5]. Each fold model" in ensemble and "(his: all five)" not in ensemble
    # summaries without evaluation_model are of the best-validation checkpoints
    assert "`models/fold<k>/model.pt` (the bundles' best-validation checkpoint); his: the last epoch." in ensemble
    assert "his test figures are of the five-fold ensemble; these rows are single models" not in section.lower()
    # the ensemble rows beside his figures: Dice all, his, % predicted empty, his, Dice lesion, FP rate
    assert "| ce | 1 | 77.00 | 87.333 | 30.00 | 6.364 | 80.00 | 2/20 |" in ensemble
    assert "| ce_dice | 1 | 55.00 | 84.889 | 10.00 | 4.091 | 80.00 | 14/20 |" in ensemble
    difference = -(40 * 0.05 + 12) / 60 * 100
    row = next(line for line in ensemble.splitlines() if line.startswith("| Dice all images (points) | ce_dice |"))
    assert f"| **{difference:+.1f} [" in row  # the interval excludes 0
    assert "| lesion-free image predicted with a lesion | ce_dice | 14/20 | 2/20 | only this loss 12, only ce 0 |" in (
        ensemble
    )
    assert "| Dice lesion (points) | ce_dice | " in ensemble and "**-5.0 [-5.0, -5.0]**" in ensemble
    assert "Over all test images (fold ensembles), ce had the highest Dice (77.00) and ce put a false lesion" in (
        ensemble
    )
    # the single models stay, beside his figures with the warning gone, and per run the false lesions
    assert "| ce | 5 | 70.00 ± 0.00 | 87.333 | 5.00 ± 0.00 | 6.364 | 4/20, 4/20, 4/20, 4/20, 4/20 |" in single
    assert "(single models), ce and ce_dice had the highest Dice (70.00) and ce put a false lesion" in single
    assert "| Dice all images (points) | ce_dice | " in single  # the single models' paired tests stay
    # in distribution: the last epoch's validation Dice, numpy's std over the five folds (ddof 0: 2.83, not 3.16)
    assert "| ce | 5 | 3 | 84.00 ± 2.83 | 5 folds | 89.19 ± 1.18 | 85.00 ± 2.83 |" in validation
    assert "| ce_dice | 5 | 3 | 86.00 ± 0.89 | 5 folds | 89.81 ± 1.16 | 87.00 ± 0.89 |" in validation
    assert "ce_dice +2.00 (his +0.62)" in validation


def test_galdran_ensemble_rows_name_the_last_epoch_models_they_averaged(tmp_path):
    """An ensemble of the last-epoch models (``evaluation_model final``, galdran_cpu) says so: his ensemble too."""
    galdran_five_fold_study(tmp_path, {"evaluation_model": "final"})
    ensemble = galdran_section(tmp_path).split("#### Test set, single models")[0]
    assert "`models/fold<k>/model_final.pt` (the last epoch), as his." in ensemble
    assert "best-validation" not in ensemble


def test_report_galdran_section_without_ensemble_says_these_are_single_models(tmp_path):
    """One fold, three seeds, no ensemble: the section says his test figures are of the ensemble, and the
    validation spread is over seeds, not folds; without lesion-free test images there is no section."""
    base = list(np.random.default_rng(3).uniform(0.6, 0.9, size=30))
    for seed, value in enumerate((0.70, 0.72, 0.74)):
        write_run(tmp_path, "polyp_ce", seed, 1, galdran_summary(0.7, 0.1, 0.2), per_image(base, [True, False]))
        write_curve(tmp_path, "polyp_ce", seed, 1, [0.4, value])
    write_report(tmp_path, ["polyp_ce"], [1], status={}, settings={}, dataset="polyp", seeds=[0, 1, 2])
    section = galdran_section(tmp_path)
    assert "**His test figures are of the five-fold ensemble; these rows are single models**" in section
    assert "#### Test set, fold ensemble" not in section
    assert "| ce | 3 | 70.00 ± 0.00 | 87.333 |" in section
    assert "| ce | 3 | 2 | 72.00 ± 1.63 | 3 seeds of fold 1, not folds | 89.19 ± 1.18 |" in section

    write_report(tmp_path, ["polyp_ce"], [1], status={}, settings={}, dataset="footulcer", seeds=[0, 1, 2])
    section = galdran_section(tmp_path)
    assert "none are set beside study `footulcer`" in section and "87.33" not in section
    assert (
        "| loss | runs | Dice all | predicted empty (%) | lesion-free images with a false lesion, per run |" in section
    )
    assert "| ce | 3 | 2 | 72.00 ± 1.63 | 3 seeds of fold 1, not folds | 72.00 ± 1.63 |" in section  # no column of his

    lesion_only = tmp_path / "lesion_only"
    write_run(lesion_only, "polyp_ce", 0, 1, galdran_summary(0.7, 0.1, 0.2), per_image(base, []))
    write_report(lesion_only, ["polyp_ce"], [1], status={}, settings={}, dataset="polyp")
    assert "Galdran et al.'s comparison" not in (lesion_only / "results.md").read_text()


@pytest.fixture(scope="module")
def small_polyp_data(tmp_path_factory) -> Path:
    """13 frames of 32 px: a CE run's validation Dice peaks after a few epochs and falls (to 0 on this CPU)."""
    return write_prepared_polyp(
        tmp_path_factory.mktemp("small"), n_train=10, n_lesion=2, n_lesion_free=1, size=(40, 36), image_size=32
    )


SMALL = {"image_size": 32, "batch_size": 2, "val_batch_size": 4, "num_workers": 0, "device": "cpu"}


def study_command(data_dir: Path, out: Path, settings: dict, *options: str) -> list[str]:
    """The study of the CE bundle as a user starts it."""
    return [sys.executable, str(run_study.REPO / "scripts" / "run_study.py"), "polyp"] + [
        f"--data_dir={data_dir}",
        "--bundles=[ce]",
        f"--output_dir={out}",
        *options,
        *(f"--{key}={value}" for key, value in settings.items()),
    ]


def resume_epochs(models: Path) -> list[int]:
    return sorted(int(p.stem.rsplit("=", 1)[1]) for p in models.glob("resume_checkpoint_epoch=*.pt"))


def differing_tensors(first: Path, second: Path) -> list[str]:
    """Names of the tensors that differ between two checkpoints (a KeyError if their names differ)."""
    a, b = torch.load(first, weights_only=True), torch.load(second, weights_only=True)
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_killed_study_resumes_the_interrupted_run_to_the_same_weights(small_polyp_data, tmp_path):
    """Kill the study mid-training, run the same command again: the run continues from its last resume
    checkpoint (not epoch 0) and ends with exactly the final weights, the best model (``model.pt``, the one
    evaluated and exported) and the test metrics of an uninterrupted study (CPU, same seed). The kill comes
    after the best validation epoch, so a resumed run that forgot the best value would replace the model."""
    settings = {**SMALL, "epochs": 6, "resume_checkpoint_interval_s": 0}
    uninterrupted = tmp_path / "uninterrupted"
    straight = subprocess.run(
        study_command(small_polyp_data, uninterrupted, settings, "--examples=False"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert straight.returncode == 0, (straight.stdout + straight.stderr)[-3000:]
    curve = validation_curve(run_path(uninterrupted, "polyp_ce", 0), 1)
    best_epoch = max(curve, key=lambda point: point[1])[0]  # the first best, the one model.pt keeps
    assert best_epoch < settings["epochs"], f"validation Dice must peak before the last epoch: {curve}"

    interrupted = tmp_path / "interrupted"
    models = interrupted / "runs" / "polyp_ce" / "seed0" / "models" / "fold1"
    command = study_command(small_polyp_data, interrupted, settings, "--examples=False")
    with open(tmp_path / "first.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while not [e for e in resume_epochs(models) if e >= best_epoch] and time.time() < deadline:
            if child.poll() is not None:
                break
            time.sleep(0.02)
        os.killpg(child.pid, signal.SIGKILL)  # the study and its training child
        child.wait()
    saved = resume_epochs(models)
    assert saved and saved[-1] >= best_epoch, (tmp_path / "first.log").read_text()[-2000:]
    assert not (models / "model_final.pt").exists(), "killed too late: the run had finished"
    resumed_from = saved[-1]

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "(resumed)" in again.stdout
    log = (interrupted / "runs" / "polyp_ce" / "seed0" / "fold1.log").read_text()
    second = log.split("stage: train polyp_ce fold 1 (resumed)")[1]  # the log is appended to
    first_epoch = int(second.split("Epoch: ")[1].split("/")[0])
    assert first_epoch == resumed_from + 1  # continued after the checkpoint, not from epoch 1

    reference = uninterrupted / "runs" / "polyp_ce" / "seed0"
    assert not differing_tensors(models / "model_final.pt", reference / "models" / "fold1" / "model_final.pt")
    assert not differing_tensors(models / "model.pt", reference / "models" / "fold1" / "model.pt")
    per_image = Path("eval") / "fold1" / "per_image.csv"
    assert (interrupted / "runs" / "polyp_ce" / "seed0" / per_image).read_text() == (reference / per_image).read_text()


def child_pids(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def process_ended(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie no one has reaped yet has ended


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_study_ends_its_trainer_and_a_second_trainer_is_refused(small_polyp_data, tmp_path):
    """``kill -9`` of the study's own PID (not its group) ends its training child too, and the log keeps the
    child's output up to then; while a run trains, a second study on the folder refuses it in one line
    naming the trainer's PID; the rerun after the kill resumes the run."""
    settings = {**SMALL, "epochs": 4, "resume_checkpoint_interval_s": 0}
    out = tmp_path / "study"
    run_dir = out / "runs" / "polyp_ce" / "seed0"
    command = study_command(small_polyp_data, out, settings, "--examples=False")
    groups = []
    try:
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        groups.append(first.pid)
        deadline = time.time() + 300
        while not resume_epochs(run_dir / "models" / "fold1") and time.time() < deadline and first.poll() is None:
            time.sleep(0.02)
        (trainer,) = child_pids(first.pid)
        os.kill(trainer, signal.SIGSTOP)  # it holds the run while the second study tries
        checkpointed = resume_epochs(run_dir / "models" / "fold1")[-1]
        assert checkpointed < settings["epochs"]

        second = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        groups.append(second.pid)
        stdout, stderr = second.communicate(timeout=120)
        assert second.returncode == 1
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: {run_dir} fold1 is in use by process {trainer} "), stderr[-2000:]
        assert f"failed (exit 1): {last}" in stdout

        os.kill(first.pid, signal.SIGKILL)  # the study alone: its trainer must not go on as an orphan
        first.wait()
        deadline = time.time() + 15
        while not process_ended(trainer) and time.time() < deadline:
            time.sleep(0.1)
        assert process_ended(trainer), "the trainer outlived its study"
        log = (run_dir / "fold1.log").read_text()
        assert re.search(rf"Epoch: {checkpointed}/{settings['epochs']}, Iter: (\d+)/\1 ", log), log[-2000:]

        again = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
        assert "(resumed)" in again.stdout
    finally:
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_convergence_says_whether_the_curve_flattened():
    rising = [(e, 0.1 * e) for e in range(1, 11)]  # +0.1 per epoch to the end
    flat = [(e, min(0.1 * e, 0.6)) for e in range(1, 11)]  # at 0.6 from epoch 6
    result = convergence(rising)
    assert (result["best"], result["best_epoch"], result["tail_epochs"]) == (pytest.approx(1.0), 10, 2)
    assert result["tail_gain"] == pytest.approx(0.2) and not result["flattened"]
    result = convergence(flat)
    assert result["tail_gain"] == pytest.approx(0.0) and result["flattened"]
    noisy = [(1, 0.3), (2, 0.5), (3, 0.45), (4, 0.505), (5, 0.49)]  # last two: +0.005 over the best before
    assert convergence(noisy)["flattened"]
    assert not convergence([(1, 0.4), (2, 0.5)])["flattened"]  # too short to tell
    assert convergence_verdict(convergence([(1, 0.4), (2, 0.5)])) == "**no** (too few epochs to tell)"
    assert convergence_verdict(convergence(rising)) == "**no**: still rising"
    assert convergence_verdict(convergence(flat)) == "yes"
    peaked = [(e, v) for e, v in enumerate([0.3, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.65, 0.62], start=1)]
    assert not convergence(peaked)["flattened"]  # +0.05 in the last fifth, at epoch 9
    assert convergence_verdict(convergence(peaked)) == "**no**: peaked at epoch 9, then fell"


def test_publish_copies_the_report_but_no_data_images(tmp_path):
    from lesion_study.publish import bundle_results, publish

    study = tmp_path / "study"
    lesion_free = {"num_lesion_free": 10}
    write_run(study, "polyp_ce", 0, 1, fake_summary(0.8, 0.1, 0.1) | lesion_free, per_image([0.7, 0.8], [False, True]))
    write_run(study, "polyp_dice", 0, 1, fake_summary(0.7, 0.9, 0.3) | lesion_free, per_image([0.6, 0.8], [True, True]))
    write_run(study, "polyp_dice", 1, 1, fake_summary(0.7, 0.8, 0.3) | lesion_free, per_image([0.6, 0.8], [True, True]))
    ensemble = fake_summary(0.8, 0.1, 0.1) | lesion_free | {"folds": [1]}
    write_ensemble(study, "polyp_ce", 0, ensemble, per_image([0.7, 0.8], [False, True]))
    write_report(study, ["polyp_ce", "polyp_dice"], [1], status={}, settings={}, dataset="polyp", seeds=[0, 1])
    (study / "examples.png").write_bytes(b"an image of the data")
    page = publish(
        str(study), "polyp", "polyp_unit", "CPU reduced scale", "a 2-core CPU", "python x", "1 min",
        docs_dir=str(tmp_path / "docs"), bundle_results_dir=str(tmp_path / "results"),
    )  # fmt: skip
    published = tmp_path / "docs" / "polyp_unit"
    assert sorted(p.name for p in (published / "per_image").iterdir()) == [
        "polyp_ce_seed0_ensemble_per_image.csv",
        "polyp_ce_seed0_fold1_per_image.csv",
        "polyp_dice_seed0_fold1_per_image.csv",
        "polyp_dice_seed1_fold1_per_image.csv",
    ]
    assert (published / "dice_vs_lesion_free_fp.png").is_file() and not (published / "examples.png").exists()
    text = page.read_text()
    assert "`python x`" in text and "a 2-core CPU" in text and "### Paired differences to ce" in text
    # Galdran's figures come with the report, beside Dice over all images and the share predicted empty
    assert text.count("### Galdran et al.'s comparison, as he measured it") == 1
    assert "| ce | 1 | 80.00 | 87.333 | 1.00 | 6.364 | 1/10 |" in text
    assert "| dice | 2 | 70.00 ± 0.00 | 81.914 | 8.50 ± 0.71 | 1.818 | 9/10, 8/10 |" in text
    results = json.loads((tmp_path / "results" / "polyp.json").read_text())
    assert results["dice"]["dice_lesion"] == "0.700" and results["dice"]["lesion_free_fp_rate"] == "0.850"
    assert results["dice"]["dice_all"] == "0.700"  # Galdran's test measure
    assert results["ce"]["measured_with"] == "CPU reduced scale; a 2-core CPU; docs/results/polyp_unit.md"
    assert bundle_results(study / "results.csv", "x")["ce"]["runs"] == 1
    page = publish(
        str(study), "polyp", "polyp_level2", "another level", "a 2-core CPU", "python y", "1 min",
        docs_dir=str(tmp_path / "docs"), bundle_results_dir=str(tmp_path / "results"), bundle_docs=False,
    )  # fmt: skip
    assert "`python y`" in page.read_text() and json.loads((tmp_path / "results" / "polyp.json").read_text()) == results


CLASS_DICE = {"anterior": 0.84, "posterior": 0.82, "whole": 0.86}  # a different Dice per class


def per_volume(errors: dict[str, list[float]], expected_shift: float = 0.2, with_expected: bool = True) -> list[dict]:
    """Per-volume rows (3D evaluation): true volumes 1.0 ml per part; the expected volume ``expected_shift``
    above the true one per part; ``errors[kind]`` the whole-volume error against the expected volume per
    volume (split equally over the parts); Dice 0.8 everywhere."""
    rows = []
    for i, (hard, soft) in enumerate(zip(errors["hard"], errors["soft"], strict=True)):
        row = {"image": f"hippocampus_{i:03d}.nii.gz"}
        for name, share in (("anterior", 0.5), ("posterior", 0.5), ("whole", 1.0)):
            true = 2.0 if name == "whole" else 1.0
            expected = true + expected_shift * (2 if name == "whole" else 1)
            hard_ml, soft_ml = expected + share * hard, expected + share * soft
            row |= {f"{name}_dice": CLASS_DICE[name], f"{name}_true_ml": true, f"{name}_hard_ml": hard_ml}
            row |= {f"{name}_soft_ml": soft_ml, f"{name}_error_hard_ml": hard_ml - true}
            row |= {f"{name}_error_soft_ml": soft_ml - true, f"{name}_rel_error_hard": (hard_ml - true) / true}
            row |= {f"{name}_rel_error_soft": (soft_ml - true) / true}
            if with_expected:
                row |= {f"{name}_expected_ml": expected, f"{name}_error_hard_expected_ml": hard_ml - expected}
                row |= {f"{name}_error_soft_expected_ml": soft_ml - expected}
        rows.append(row)
    return rows


def write_volume_run(out: Path, bundle: str, seed: int, rows: list[dict]) -> None:
    evaluation = out / "runs" / bundle / f"seed{seed}" / "eval" / "fold1"
    evaluation.mkdir(parents=True)
    summary = {"num_volumes": len(rows), "whole_dice": 0.8, "anterior_dice": 0.8, "posterior_dice": 0.8}
    (evaluation / "summary.json").write_text(json.dumps(summary))
    with open(evaluation / "per_volume.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_report_compares_volumes_with_the_expected_volume_of_the_label_law(tmp_path):
    """Per class and whole, mask and probabilities: mean and median against the expected volume with
    intervals, paired differences to CE (seeds averaged first), Dice next to the bias, the calculation's
    prediction from label_law_theory.json, a Bland-Altman plot per loss."""
    rng = np.random.default_rng(0)
    ce = {"hard": list(rng.normal(-0.3, 0.05, 30)), "soft": list(rng.normal(0.0, 0.05, 30))}
    dice = {kind: [v - 0.4 for v in values] for kind, values in ce.items()}  # 0.4 ml smaller everywhere
    for seed, jitter in ((0, -0.02), (1, 0.02)):  # the seeds average back to the values above
        shifted = {kind: [v + jitter for v in values] for kind, values in dice.items()}
        write_volume_run(tmp_path, "hippocampus_ce", seed, per_volume(ce))
        write_volume_run(tmp_path, "hippocampus_dice", seed, per_volume(shifted))
    # a run evaluated before the expected volumes existed: its errors are against the label (width 0 then)
    write_volume_run(tmp_path, "hippocampus_ce_dice", 0, per_volume(ce, expected_shift=0.0, with_expected=False))
    theory = {
        "width": 2.0,
        "volumes": [
            {
                "image": f"hippocampus_{i:03d}.nii.gz",
                "expected": {"anterior": 1.2, "posterior": 1.2, "whole": 2.4},
                "bias": {
                    "ce": {"anterior": 0.0, "posterior": 0.0, "whole": 0.0},
                    "ce_hard": {"anterior": -0.1, "posterior": -0.12, "whole": -0.22},
                    "dice": {"anterior": -0.2, "posterior": -0.24, "whole": -0.44},
                    "batch_dice": {"anterior": 0.3, "posterior": 0.36, "whole": 0.66},
                },
            }
            for i in range(30)
        ],
    }
    (tmp_path / "label_law_theory.json").write_text(json.dumps(theory))
    names = ["hippocampus_ce", "hippocampus_dice", "hippocampus_ce_dice"]
    settings = {"label_uncertainty_width": 2}
    write_report(tmp_path, names, [1], status={}, settings=settings, dataset="unit", seeds=[0, 1])
    page = (tmp_path / "results.md").read_text()
    section = page.split("### Volume error against the expected volume (label law width 2 voxels)")[1]
    ce_soft = float(np.mean(ce["soft"]))
    whole_soft = [line for line in section.splitlines() if line.startswith("| whole | probabilities |")]
    assert whole_soft[0].startswith(f"| whole | probabilities | ce | {ce_soft:+.3f} [")
    dice_row = whole_soft[1].split(" | ")
    assert dice_row[2] == "dice" and dice_row[3].startswith(f"{ce_soft - 0.4:+.3f} [")
    assert dice_row[5] == "**-0.400 [-0.400, -0.400]**"  # paired mean difference, seeds averaged
    assert dice_row[6] == "-0.400 [-0.400, -0.400]"  # median of the paired differences
    posterior = next(line for line in section.splitlines() if line.startswith("| posterior | mask | dice |"))
    assert "**-0.200 [-0.200, -0.200]**" in posterior  # half of the whole error in each part
    # the run without expected volumes is compared against its label (which it was trained on)
    ce_dice = [line for line in section.splitlines() if line.startswith("| whole | probabilities | ce_dice |")]
    assert ce_dice[0].split(" | ")[5].startswith("+0.000")

    dice_table = section.split("### Dice next to the volume bias, and what the calculation predicts")[1]
    ce_line = next(line for line in dice_table.splitlines() if line.startswith("| ce |"))
    cells = ce_line.split(" | ")
    assert cells[1:4] == ["86.0", "84.0", "82.0"] and cells[5] == f"{ce_soft:+.3f}"  # whole, anterior, posterior
    assert cells[8:12] == ["-0.220 (-9.2%)", "+0.000 (+0.0%)", "+0.000 (+0.0%)", "+0.000 (+0.0%) |"]
    dice_line = next(line for line in dice_table.splitlines() if line.startswith("| dice |"))
    assert "-0.440 (-18.3%) | -0.440 (-18.3%) | -0.200 (-16.7%) | -0.240 (-20.0%) |" in dice_line
    assert next(line for line in dice_table.splitlines() if line.startswith("| ce_dice |")).endswith(
        "n/a | n/a | n/a | n/a |"
    )
    assert (tmp_path / "bland_altman_expected.png").stat().st_size > 10_000
    rows = {r["loss"]: r for r in read_csv(tmp_path / "results.csv")}
    assert "whole_error_soft_expected_ml_mean" in rows["ce"]

    # a theory file of another width is left out, and the page says so
    write_report(tmp_path, names, [1], status={}, settings={}, dataset="unit", seeds=[0, 1])
    page = (tmp_path / "results.md").read_text()
    assert "label law width 0 voxels" in page and "is of width 2.0, not the study's 0: left out" in page
    assert "theory: whole" not in page
    # nor is it of runs trained on the expected labels
    settings = {"label_uncertainty_width": 2, "label_uncertainty_targets": "expected"}
    write_report(tmp_path, names, [1], status={}, settings=settings, dataset="unit", seeds=[0, 1])
    page = (tmp_path / "results.md").read_text()
    assert "trained on the law's expected labels" in page and "-0.440 (-18.3%)" not in page
