"""``run_study.py sweep``: one bundle setting across study folders, read from each run's own settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lesion_study.study import cli as run_study
from lesion_study.study.layout import ReportInputError
from lesion_study.study.sweep import sweep_lines, sweep_runs


def write_run(out: Path, radius: int | None, curve: list[float], dice_all: float, seed: int = 0) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run_dir = out / "runs" / "polyp_dbce" / f"seed{seed}"
    (run_dir / "eval" / "fold1").mkdir(parents=True)
    summary = {"dice_lesion": dice_all + 0.05, "dice_all": dice_all, "lesion_free_fp_rate": 0.5}
    (run_dir / "eval" / "fold1" / "summary.json").write_text(json.dumps(summary))
    settings = {"epochs": len(curve), "seed": seed} | ({"dbce_radius": radius} if radius is not None else {})
    (run_dir / "fold1_settings.json").write_text(json.dumps({"settings": settings}))
    with SummaryWriter(str(run_dir / "logs" / "fold1")) as writer:
        for epoch, value in enumerate(curve, start=1):
            writer.add_scalar("val_mean_dice", value, epoch)


@pytest.fixture
def studies(tmp_path: Path) -> list[Path]:
    r1, r3 = tmp_path / "r1", tmp_path / "r3"
    write_run(r1, 1, [0.5, 0.6, 0.70, 0.71, 0.71], 0.60)
    write_run(r3, 3, [0.5, 0.7, 0.74, 0.75, 0.75], 0.55)  # higher on validation, lower on the test set
    write_run(r3, 3, [0.5, 0.7, 0.73, 0.73, 0.73], 0.56, seed=1)
    return [r1, r3]


def test_sweep_names_the_value_of_the_highest_last_validation_dice(studies):
    rows = sweep_runs(studies, "dbce_radius")
    assert [(r["value"], r["seed"]) for r in rows] == [(1, 0), (3, 0), (3, 1)]
    lines = sweep_lines(rows, "dbce_radius")
    assert "| 1 | polyp_dbce | 0 | 1 | 5 | 0.7100 | 0.7100 (4) | yes | 0.6500 | 0.6000 |" in lines
    # the mean of R = 3's two seeds (0.75, 0.73) against R = 1's 0.71; the test set does not choose
    assert "Highest mean last validation Dice: dbce_radius = 3 (0.7400, 0.0300 above the next value)." in lines
    assert not any("level on this evidence" in line for line in lines)


def test_a_margin_within_the_flattening_tolerance_is_called_level(tmp_path):
    write_run(tmp_path / "a", 1, [0.5, 0.70, 0.700], 0.6)
    write_run(tmp_path / "b", 2, [0.5, 0.70, 0.705], 0.6)
    lines = sweep_lines(sweep_runs([tmp_path / "a", tmp_path / "b"], "dbce_radius"), "dbce_radius")
    assert any("level on this evidence" in line for line in lines)


def test_a_run_trained_without_the_setting_is_named(tmp_path):
    write_run(tmp_path / "a", None, [0.5, 0.7], 0.6)
    with pytest.raises(ReportInputError, match=r"fold1_settings.json: the run was not trained with dbce_radius set"):
        sweep_runs([tmp_path / "a"], "dbce_radius")


def test_sweep_command_writes_its_page_and_names_a_missing_folder(studies, tmp_path, capsys):
    target = tmp_path / "sweep"
    argv = ["sweep", *map(str, studies), "--parameter=dbce_radius", f"--output_dir={target}"]
    assert run_study.main(argv) == 0
    page = (target / "sweep.md").read_text()
    assert page.startswith("# Sweep of `dbce_radius` over `r1`, `r3`") and "dbce_radius = 3" in page
    assert (target / "validation_curves.png").stat().st_size > 5_000
    capsys.readouterr()
    assert run_study.main(["sweep", str(tmp_path / "nowhere"), "--parameter=dbce_radius"]) == 1
    assert capsys.readouterr().err.strip() == f"error: study folder {tmp_path / 'nowhere'} does not exist"


def test_the_convergence_note_names_the_epoch_whose_model_was_evaluated():
    from lesion_study.study.report import convergence_lines

    curves = {"dbce": [("seed 0 fold 1", [(1, 0.5), (2, 0.6), (3, 0.6)])]}
    assert "(the evaluated model is the last epoch's)" in " ".join(convergence_lines(curves, "final"))
    assert "(the evaluated model is the best epoch's)" in " ".join(convergence_lines(curves))
