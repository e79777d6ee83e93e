"""A study's kept record (``run_study.py keep``): the finished runs without their weights, which a later
study command on another machine skips, and from which the report rebuilds the same tables."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from lesion_study.study import cli as run_study
from lesion_study.study.report import validation_curve
from tests.conftest import TINY
from tests.test_study import last_error_line


def test_a_kept_record_resumes_a_study_without_its_weights(tiny_demo_data, tmp_path, capsys):
    out, record = tmp_path / "study", tmp_path / "record"
    common = {"data_dir": str(tiny_demo_data), **TINY}
    assert run_study.study("demo", bundles=["ce"], output_dir=str(out), **common) == 0
    assert run_study.main(["keep", str(out), str(record)]) == 0
    assert f"kept 1 run(s) in {record}" in capsys.readouterr().out

    files = {p.relative_to(record).as_posix() for p in record.rglob("*") if p.is_file()}
    run = "runs/polyp_ce/seed0"
    assert files == {
        "kept.json",
        "study.json",
        f"{run}/fold1_settings.json",
        f"{run}/eval/fold1/summary.json",
        f"{run}/eval/fold1/per_image.csv",
        f"{run}/logs/fold1/validation.csv",
        f"{run}/models/fold1/weights_not_kept.json",
    }  # no checkpoint, prediction, TensorBoard log or data image
    original_curve = validation_curve(out / run, 1)
    assert original_curve and validation_curve(record / run, 1) == original_curve

    # the report rebuilds the same tables from the record alone
    shutil.copy(out / "results.csv", tmp_path / "results_before.csv")
    run_study.report(str(record))
    assert (record / "results.csv").read_text() == (tmp_path / "results_before.csv").read_text()
    assert "| ce | seed 0 fold 1 | 1 |" in (record / "results.md").read_text()  # its convergence row

    # copied back as a study folder on a machine without the weights: the kept run is skipped (examples
    # too: no weights to predict them with), the new one trained, both reported
    restored = Path(shutil.copytree(record, tmp_path / "restored"))
    assert run_study.study("demo", bundles=["ce", "dice"], output_dir=str(restored), **common) == 0
    output = capsys.readouterr().out
    assert "polyp_ce seed 0 fold 1: finished earlier, skipped" in output
    assert not (restored / run / "fold1.log").exists()  # never launched
    assert not list((restored / run).rglob("*.pt"))
    assert (restored / "runs/polyp_dice/seed0/models/fold1/model_final.pt").is_file()
    with open(restored / "results.csv") as handle:
        rows = {row["loss"]: row for row in csv.DictReader(handle)}
    with open(tmp_path / "results_before.csv") as handle:
        before = next(csv.DictReader(handle))
    assert set(rows) == {"ce", "dice"} and rows["ce"]["dice_lesion_mean"] == before["dice_lesion_mean"]
    status = json.loads((restored / "study.json").read_text())["status"]["polyp_ce/seed0/fold1"]
    assert status["status"] == "ok (an earlier command)"

    # keeping again replaces the record whole; the earlier note of the kept run stays as written
    note = (record / run / "models/fold1/weights_not_kept.json").read_text()
    run_study.keep(str(restored), str(record))
    assert (record / run / "models/fold1/weights_not_kept.json").read_text() == note
    assert json.loads((record / "kept.json").read_text())["runs"] == [
        "polyp_ce/seed0/fold1",
        "polyp_dice/seed0/fold1",
    ]

    # a fold ensemble needs the fold models: refused before anything trains
    folds = ["demo", "--bundles=[ce]", "--folds=[1,2]", "--ensemble=True", f"--output_dir={restored}"]
    assert run_study.main(folds + [f"--{k}={v}" for k, v in common.items()]) == 1
    assert last_error_line(capsys).startswith(
        "error: the fold ensemble of polyp_ce seed 0 needs every fold's model, and the weights of fold(s) [1] were "
        "not kept ("
    )
    assert not (restored / run / "models" / "fold2").exists()


@pytest.mark.parametrize("case", ["not a study", "not a record", "nothing finished"])
def test_keep_refuses_what_it_cannot_keep(tmp_path, capsys, case):
    out, record = tmp_path / "study", tmp_path / "record"
    (out / "runs/polyp_ce/seed0/models/fold1").mkdir(parents=True)  # a training that has not finished
    if case == "not a study":
        out = tmp_path / "elsewhere"
        out.mkdir()
    if case == "not a record":
        record.mkdir()
        (record / "notes.txt").write_text("mine")
    assert run_study.main(["keep", str(out), str(record)]) == 1
    expected = {
        "not a study": f"error: {out} is not a study folder: it has no runs/",
        "not a record": f"error: {record} is not empty and not a kept study record (no kept.json): choose another",
        "nothing finished": f"error: {out / 'runs'} holds no finished run (trained and evaluated) to keep",
    }[case]
    assert last_error_line(capsys) == expected
    assert not (tmp_path / "record.partial").exists()
    if case == "not a record":
        assert (record / "notes.txt").read_text() == "mine"
