"""The commands' shared ending: fire's run, a known error as one line, an unknown option refused before the run."""

from __future__ import annotations

import pytest

from lesion_study.command import USAGE_ERROR, run_fire


class Refused(ValueError):
    pass


def make_commands(calls: list) -> dict:
    def train(data_dir: str = "data", epochs: int = 3, resume: bool = True) -> None:
        calls.append(("train", data_dir, epochs, resume))

    def study(dataset: str, **overrides) -> None:
        calls.append(("study", dataset, overrides))

    def fail(path: str = "x.json") -> None:
        raise Refused(f"{path}: not JSON")

    return {"train": train, "study": study, "fail": fail}


def test_options_the_function_takes_run_it(capsys):
    calls: list = []
    status = run_fire(make_commands(calls), ["train", "--data-dir=d", "--epochs", "5", "--noresume"], "tool.py", ())
    assert status == 0 and calls == [("train", "d", 5, False)]


def test_an_unknown_option_is_refused_before_the_function_runs(capsys):
    calls: list = []
    status = run_fire(make_commands(calls), ["train", "--epoch=5", "--data_dir=d"], "tool.py", ())
    assert status == USAGE_ERROR and calls == []
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line == "error: tool.py train takes no option --epoch; see tool.py train --help"


def test_a_single_function_names_itself_and_kwargs_take_any_option(capsys):
    calls: list = []
    commands = make_commands(calls)
    assert run_fire(commands["train"], ["--seeds=[1]"], "train.py", ()) == USAGE_ERROR
    assert capsys.readouterr().err.strip() == "error: train.py takes no option --seeds; see train.py --help"
    assert run_fire(commands["study"], ["polyp", "--epochs=2"], "study.py", ()) == 0
    assert calls == [("study", "polyp", {"epochs": 2})]


def test_a_known_error_is_one_line_and_status_1_and_others_keep_their_traceback(capsys):
    commands = make_commands([])
    assert run_fire(commands, ["fail", "--path=a.json"], "tool.py", (Refused,)) == 1
    assert capsys.readouterr().err.strip() == "error: a.json: not JSON"
    with pytest.raises(Refused):
        run_fire(commands, ["fail"], "tool.py", (KeyError,))
