"""The study runner end to end on a tiny demo, its resume and failure handling, and the report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from scripts import run_study
from scripts.demo_data import write_demo_layouts
from scripts.prepare_data import prepare_polyp
from scripts.study_report import write_report

TINY = {"epochs": 1, "batch_size": 4, "val_batch_size": 4, "num_workers": 0, "image_size": 64, "device": "cpu"}


@pytest.fixture(scope="module")
def tiny_demo_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    kvasir, endotect = write_demo_layouts(root / "raw", num_train=10, num_test_lesion=4, num_test_lesion_free=2)
    return Path(prepare_polyp(kvasir, endotect, root / "prepared", size=64)).parent


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_demo_study_runs_resumes_and_reports_failures(tiny_demo_data, tmp_path, capsys):
    out = tmp_path / "study"
    code = run_study.study("demo", data_dir=str(tiny_demo_data), bundles=["ce", "dice"], output_dir=str(out), **TINY)
    assert code == 0
    for name in ("polyp_ce", "polyp_dice"):
        assert (out / "runs" / name / "models" / "fold1" / "model_final.pt").is_file()
        assert (out / "runs" / name / "eval" / "fold1" / "summary.json").is_file()
        assert (out / "runs" / name / "fold1.log").is_file()
    rows = read_csv(out / "results.csv")
    assert [(r["loss"], r["kind"], r["n"]) for r in rows] == [("ce", "folds", "1"), ("dice", "folds", "1")]
    summary = json.loads((out / "runs" / "polyp_ce" / "eval" / "fold1" / "summary.json").read_text())
    assert float(rows[0]["dice_lesion_mean"]) == pytest.approx(summary["dice_lesion"])
    table = (out / "results.md").read_text()
    assert "| ce | 1 |" in table and "| dice | 1 |" in table
    for plot in ("dice_vs_lesion_free_fp.png", "area_errors.png", "reliability.png", "examples.png"):
        assert (out / plot).stat().st_size > 1000, plot
    assert "epoch 1/1" in capsys.readouterr().out  # progress a person can follow

    # resume: finished runs are skipped, their checkpoints untouched
    checkpoint = out / "runs" / "polyp_ce" / "models" / "fold1" / "model_final.pt"
    modified = checkpoint.stat().st_mtime_ns
    assert (
        run_study.study("demo", data_dir=str(tiny_demo_data), bundles=["ce", "dice"], output_dir=str(out), **TINY) == 0
    )
    assert checkpoint.stat().st_mtime_ns == modified
    assert "finished earlier, skipped" in capsys.readouterr().out

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
    assert "1 run(s) failed: polyp_broken/fold1" in capsys.readouterr().err
    table = (out / "results.md").read_text()
    assert "| polyp_broken/fold1 | failed (exit 1)" in table
    assert [r["loss"] for r in read_csv(out / "results.csv")] == ["ce", "dice"]
    assert "NoSuchLoss" in (out / "runs" / "polyp_broken" / "fold1.log").read_text()


def test_study_refuses_bad_arguments(tmp_path):
    with pytest.raises(run_study.StudyError, match="dataset must be one of"):
        run_study.study("kidney", output_dir=str(tmp_path))
    with pytest.raises(run_study.StudyError, match="--data_dir is required"):
        run_study.study("polyp", output_dir=str(tmp_path))
    with pytest.raises(run_study.StudyError, match="no bundle polyp_focal"):
        run_study.study("polyp", bundles=["focal"], data_dir=str(tmp_path), output_dir=str(tmp_path))
    with pytest.raises(run_study.StudyError, match="no test set to ensemble on"):
        run_study.study("hippocampus", ensemble=True, data_dir=str(tmp_path), output_dir=str(tmp_path))
    assert run_study.bundle_names("hippocampus", None, run_study.REPO / "bundles") == [
        f"hippocampus_{loss}" for loss in ("ce", "dice", "batch_dice", "ce_dice", "ce_finetune_dice", "dbce")
    ]
    with pytest.raises(run_study.StudyError, match="datalist.json does not exist"):
        run_study.study("polyp", bundles=["ce"], data_dir=str(tmp_path), output_dir=str(tmp_path))
    assert run_study.main(["polyp", f"--output_dir={tmp_path}"]) == 1


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


def test_report_means_stds_and_best_marks(tmp_path):
    runs = {
        "polyp_ce": [fake_summary(0.80, 0.1, -0.05), fake_summary(0.84, 0.3, 0.05)],
        "polyp_dice": [fake_summary(0.85, 0.9, 0.20), fake_summary(0.87, 0.7, 0.30)],
    }
    for name, summaries in runs.items():
        for fold, summary in enumerate(summaries, start=1):
            path = tmp_path / "runs" / name / "eval" / f"fold{fold}" / "summary.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(summary))
    (tmp_path / "runs" / "polyp_ce" / "eval" / "ensemble").mkdir()
    (tmp_path / "runs" / "polyp_ce" / "eval" / "ensemble" / "summary.json").write_text(
        json.dumps(fake_summary(0.9, 0.0, 0.0))
    )
    write_report(tmp_path, ["polyp_ce", "polyp_dice"], [1, 2], status={}, settings={}, dataset="unit")
    rows = read_csv(tmp_path / "results.csv")
    assert [(r["loss"], r["kind"]) for r in rows] == [("ce", "folds"), ("ce", "ensemble"), ("dice", "folds")]
    assert float(rows[0]["dice_lesion_mean"]) == pytest.approx(0.82)
    assert float(rows[0]["dice_lesion_std"]) == pytest.approx(0.0282843, rel=1e-4)  # sample std of 0.80, 0.84
    assert float(rows[2]["lesion_free_fp_rate_mean"]) == pytest.approx(0.8)
    table = (tmp_path / "results.md").read_text()
    assert "**0.860 ± 0.014**" in table  # dice has the best Dice
    assert "**0.200 ± 0.141**" in table  # ce has the lowest lesion-free FP rate
    assert "**0.000 ± 0.071**" in table  # ce's signed area error is closest to 0
    assert "### Fold ensemble" in table
