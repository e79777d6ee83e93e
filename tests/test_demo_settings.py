"""The demo's settings stay within the budget they were measured at, and they still run.

The demo table and wall time of docs/demo.md (9 min 40 s on the 2-core CPU) were measured with these settings;
more training steps, larger frames or a wider network would push the demo past its 10-minute budget, so
a change here must come with a new measurement (docs/demo.md). Not a timed test.
"""

from __future__ import annotations

import inspect
import json
import math

from lesion_study.demo_data import write_demo_layouts
from lesion_study.study import cli as run_study
from tests.conftest import TINY

# measured: 30 epochs x 15 steps of 8 frames of 64x64 through ResNet-10 + decoder 128-8 took 9.7 minutes
MEASURED_STEPS = 30 * 15
MEASURED_PIXELS = 64 * 64
NARROW_DECODER = [128, 64, 32, 16, 8]


def test_demo_settings_stay_within_the_measured_budget():
    settings = run_study.DEMO_SETTINGS
    num_train = inspect.signature(write_demo_layouts).parameters["num_train"].default
    assert num_train == 150
    training_frames = num_train - num_train // 5  # fold 1 holds out one fifth for validation
    steps = settings["epochs"] * math.ceil(training_frames / settings["batch_size"])
    assert steps <= MEASURED_STEPS, f"{steps} training steps: re-measure the demo's wall time first"
    assert settings["image_size"] ** 2 <= MEASURED_PIXELS
    assert settings["network_def#backbone"] in ("resnet10",)  # the measured encoder (or a smaller one)
    assert all(c <= m for c, m in zip(settings["network_def#decoder_channels"], NARROW_DECODER, strict=True))
    assert settings["num_workers"] == 0 and settings["batch_size"] == 8  # per-step cost as measured


def test_demo_settings_train_evaluate_and_report(tiny_demo_data, tmp_path):
    """One epoch with the demo's network overrides through train, evaluate and the example predictions
    (the inference config must get the same network as training, or loading model.pt fails)."""
    out = tmp_path / "study"
    overrides = {k: v for k, v in run_study.DEMO_SETTINGS.items() if k.startswith("network_def#")}
    code = run_study.study(
        "demo",
        data_dir=str(tiny_demo_data),
        bundles=["ce", "ce_finetune_dice"],
        output_dir=str(out),
        **TINY,
        **overrides,
    )
    assert code == 0
    run = out / "runs" / "polyp_ce" / "seed0"
    log = (run / "fold1.log").read_text()
    assert "resnet10" in log and "128" in log
    assert (run / "examples" / "fold1" / "done").is_file()
    summary = json.loads((run / "eval" / "fold1" / "summary.json").read_text())
    assert 0.0 <= summary["dice_lesion"] <= 1.0
    results = (out / "results.md").read_text()
    assert "polyp_ce_finetune_dice/seed0/fold1 | ok" in results
    assert (out / "examples.png").is_file() and (out / "validation_curves.png").is_file()


def test_a_misspelt_option_is_an_error_not_a_silent_override(tmp_path, capsys):
    assert run_study.main(["demo", "--learning_rat=1e-3", f"--output_dir={tmp_path / 'out'}"]) == 1
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--learning_rat" in last_line and "polyp_ce" in last_line
    assert not (tmp_path / "out").exists()  # nothing started


def test_help_shows_the_options_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        run_study.main(["demo", "--help"])
    except SystemExit as exit_:  # fire ends its help with an exit
        assert exit_.code in (0, None)
    shown = capsys.readouterr()
    assert "--max_parallel" in shown.out + shown.err and "setting" in shown.out + shown.err
    assert "study demo:" not in shown.out  # it did not start the demo (fire once took --help for an override)
