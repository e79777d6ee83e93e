"""``run_study.py levels``: the volume error of each loss across label-uncertainty widths, paired over volumes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lesion_study.study import cli as run_study
from lesion_study.study.layout import ReportInputError
from lesion_study.study.levels import level_lines

VOLUMES = ("anterior", "posterior", "whole")


def write_run(
    out: Path, loss: str, width: float | None, bias: float, seed: int = 0, rising: bool = False, targets: str = ""
) -> None:
    """One evaluated hippocampus run whose errors against the expected volume are ``bias`` plus noise."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir = out / "runs" / f"hippocampus_{loss}" / f"seed{seed}"
    (run_dir / "eval" / "fold1").mkdir(parents=True)
    (run_dir / "eval" / "fold1" / "summary.json").write_text(json.dumps({"whole_dice": 0.85}))
    settings = {"epochs": 4, "seed": seed} | ({"label_uncertainty_width": width} if width is not None else {})
    settings |= {"label_uncertainty_targets": targets} if targets else {}
    (run_dir / "fold1_settings.json").write_text(json.dumps({"settings": settings}))
    volumes = 20
    noise = np.random.default_rng(seed).normal(0, 0.02, size=(volumes, len(VOLUMES), 2))
    fields = ["image", "whole_dice"] + [f"{n}_error_{k}_expected_ml" for n in VOLUMES for k in ("hard", "soft")]
    with open(run_dir / "eval" / "fold1" / "per_volume.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for i in range(volumes):
            errors = [bias + noise[i, j, k] for j in range(len(VOLUMES)) for k in range(2)]
            writer.writerow([f"hippocampus_{i:03d}.nii.gz", 0.85 + 0.01 * bias] + errors)
    with SummaryWriter(str(run_dir / "logs" / "fold1")) as writer:
        curve = [0.5, 0.7, 0.8, 0.85, 0.9, 0.95] if rising else [0.5, 0.8, 0.85, 0.85, 0.85, 0.85]
        for epoch, value in enumerate(curve, start=1):
            writer.add_scalar("val_mean_dice", value, epoch)


@pytest.fixture
def levels_folders(tmp_path: Path) -> list[Path]:
    w0, w2 = tmp_path / "w0", tmp_path / "w2"
    write_run(w0, "ce", None, 0.0)  # trained before the option existed: width 0
    write_run(w0, "dice", 0, 0.0)
    write_run(w2, "ce", 2, 0.0)
    write_run(w2, "dice", 2, -0.3)
    write_run(w2, "dice", 2, -0.3, seed=1, rising=True)
    return [w2, w0]  # in any order: the page sorts by width


def test_levels_pairs_the_change_of_the_difference_to_ce_over_volumes(levels_folders):
    lines = level_lines(levels_folders)
    assert "| ce | 1 (1) | 1 (1) |" in lines and "| dice | 1 (1) | 2 (1) |" in lines
    dice_whole = next(line for line in lines if line.startswith("| whole | probabilities | dice |"))
    cells = [c.strip() for c in dice_whole.strip("|").split("|")]
    # width 0 and its difference to ce are noise; width 2's -0.3 is the change, and the change of the difference
    change, relative = float(cells[7].strip("*").split()[0]), float(cells[8].strip("*").split()[0])
    assert abs(float(cells[3].split()[0])) < 0.02 and abs(change + 0.3) < 0.02 and abs(relative + 0.3) < 0.03
    assert cells[7].startswith("**") and cells[8].startswith("**") and cells[9] == "< 0.001"
    ce_whole = next(line for line in lines if line.startswith("| whole | probabilities | ce |"))
    assert not ce_whole.split("|")[8].strip().startswith("**")  # CE's own change is noise
    assert any(line.startswith("| dice | 85.0 | 84.7 | **-0.3") for line in lines)


def test_levels_lists_the_losses_in_the_datasets_order_as_the_report_does(tmp_path):
    w0, w2 = tmp_path / "w0", tmp_path / "w2"
    for loss in ("dbce", "ce", "batch_dice"):
        write_run(w2, loss, 2, 0.0)
    write_run(w0, "ce_dice", 0, 0.0)
    write_run(w0, "ce", 0, 0.0)
    table = [line.split("|")[1].strip() for line in level_lines([w0, w2]) if line.endswith(")|") or "(1)" in line]
    assert table[:4] == ["ce", "batch_dice", "ce_dice", "dbce"]  # hippocampus.yaml's order, not the polyp one


def test_expected_labels_are_a_level_of_their_own_after_the_drawn_annotations_of_their_width(levels_folders, tmp_path):
    w2e = tmp_path / "w2e"
    write_run(w2e, "ce", 2, 0.0, targets="expected")
    write_run(w2e, "dice", 2, -0.05, targets="expected")
    lines = level_lines([w2e, *levels_folders])
    assert lines[0] == (
        "| loss | width 0: runs (flattened) | width 2: runs (flattened) | width 2 (expected labels): runs (flattened) |"
    )
    head = next(line for line in lines if line.startswith("| volume |"))
    assert "change 0 to 2 |" in head and "change 0 to 2 (expected labels) |" in head
    dice_whole = next(line for line in lines if line.startswith("| whole | probabilities | dice |"))
    cells = [c.strip() for c in dice_whole.strip("|").split("|")]
    assert abs(float(cells[12].strip("*").split()[0]) + 0.05) < 0.02  # the change from width 0 to expected labels
    write_run(w2e, "batch_dice", 2, 0.0)  # drawn annotations in the expected-labels folder
    with pytest.raises(ReportInputError, match=r"w2e: its runs were trained at different .*2 \(expected labels\)"):
        level_lines([w2e, *levels_folders])


def test_levels_refuses_two_folders_of_one_width_and_a_folder_of_mixed_widths(tmp_path):
    write_run(tmp_path / "a", "ce", 2, 0.0)
    write_run(tmp_path / "b", "ce", 2, 0.0)
    with pytest.raises(ReportInputError, match="were both trained at label_uncertainty_width 2"):
        level_lines([tmp_path / "a", tmp_path / "b"])
    write_run(tmp_path / "b", "dice", 0, 0.0)
    with pytest.raises(ReportInputError, match=r"b: its runs were trained at different label_uncertainty_widths"):
        level_lines([tmp_path / "a", tmp_path / "b"])


def test_levels_command_writes_its_page_and_names_what_is_missing(levels_folders, tmp_path, capsys):
    target = tmp_path / "page"
    assert run_study.main(["levels", *map(str, levels_folders), f"--output_dir={target}"]) == 0
    page = (target / "levels.md").read_text()
    assert page.startswith("# Label-uncertainty levels: `w2`, `w0`") and "change 0 to 2" in page
    capsys.readouterr()
    assert run_study.main(["levels", str(levels_folders[0]), "--reference=batch_dice"]) == 1
    assert capsys.readouterr().err.strip() == "error: name 2 or more study folders, e.g. levels study/w0 study/w2"
    assert run_study.main(["levels", *map(str, levels_folders), "--reference=batch_dice"]) == 1
    assert "the reference loss 'batch_dice' has no evaluated run" in capsys.readouterr().err


def test_levels_lists_each_runs_whole_volume_error_so_a_bias_can_be_checked_seed_by_seed(levels_folders):
    lines = level_lines(levels_folders)
    start = lines.index("### Each run's whole-volume error against the expected volume (ml)")
    dice = next(line for line in lines[start:] if line.startswith("| probabilities | dice |"))
    width0, width2 = [cell.strip() for cell in dice.strip("|").split("|")][2:]
    assert width0.endswith("(seed 0)") and abs(float(width0.split()[0])) < 0.02
    runs = width2.split(", ")  # both width-2 runs, each near its own -0.3
    assert [run.split()[1:] for run in runs] == [["(seed", "0)"], ["(seed", "1)"]]
    assert all(abs(float(run.split()[0]) + 0.3) < 0.02 for run in runs)
    assert next(line for line in lines[start:] if line.startswith("| mask | ce |"))
