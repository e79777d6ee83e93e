"""Every command README.md and docs/*.md show names a command that exists and options it takes.

The commands are read from the pages' bash blocks and inline code (``python scripts/X.py ...`` or the
console name ``lesion-X ...``); each option must be a parameter of the function the command runs, and a
study option that is not one must be a config id of the dataset's bundles (as the study checks).
Running them is for the tests of each command (the own-data walkthrough, the study, export, ...)."""

from __future__ import annotations

import inspect
import re
import shlex
from pathlib import Path

import pytest

from lesion_study.bundlegen.cli import make_bundles
from lesion_study.export import export_bundle
from lesion_study.paths import BUNDLES_DIR, REPO
from lesion_study.prepare.cli import COMMANDS as PREPARE_COMMANDS
from lesion_study.publish import publish
from lesion_study.study import cli as study_cli
from lesion_study.study.plan import StudyError, bundle_names, check_overrides
from lesion_study.volume_bias import label_law, run, theory

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
WRAPPERS = {
    "prepare_data": "lesion-prepare",
    "run_study": "lesion-study",
    "make_bundles": "lesion-bundles",
    "export_bundle": "lesion-export",
    "publish_results": "lesion-publish",
    "volume_bias_study": "lesion-volume-bias",
    "check_json_format": "lesion-check-json",
}
SUBCOMMANDS = {
    "lesion-prepare": PREPARE_COMMANDS,
    "lesion-volume-bias": {"run": run, "theory": theory, "label_law": label_law},
}
FUNCTIONS = {"lesion-bundles": make_bundles, "lesion-export": export_bundle, "lesion-publish": publish}
COMMAND = re.compile(r"(?:python scripts/(\w+)\.py|\b(lesion-[a-z-]+))((?: [^`\n|#]*)?)")


def page_commands(page: Path) -> list[tuple[str, list[str]]]:
    """(console name, arguments) of every command on the page, continuation lines joined."""
    text = page.read_text().replace("\\\n", " ")
    found = []
    for wrapper, console, args in COMMAND.findall(text):
        name = WRAPPERS.get(wrapper, console) if wrapper else console
        if name not in WRAPPERS.values():
            continue
        try:
            tokens = shlex.split(args.split(";")[0].split("&&")[0])
        except ValueError:  # an unbalanced quote in prose
            tokens = args.split()
        found.append((name, [t for t in tokens if t not in ("...", "[--reference=dice]")]))
    return found


def options(tokens: list[str]) -> list[str]:
    return [t[2:].split("=", 1)[0] for t in tokens if t.startswith("--") and len(t) > 2]


def parameters(function) -> set[str]:
    return set(inspect.signature(function).parameters)


def check_study(tokens: list[str]) -> None:
    positional = [t for t in tokens if not t.startswith("-")]
    if positional and positional[0] in study_cli.SUBCOMMANDS:
        assert set(options(tokens)) <= parameters(study_cli.SUBCOMMANDS[positional[0]]), tokens
        return
    unknown = {key: None for key in options(tokens) if key not in parameters(study_cli.study)}
    dataset = positional[0] if positional else "demo"
    if dataset.startswith("<") or dataset.isupper() or not unknown:  # a placeholder such as DATASET
        return
    try:
        names = bundle_names(dataset, None, BUNDLES_DIR)
    except KeyError:  # a dataset of your own spec: its bundles are not in the repository
        return
    check_overrides(unknown, names, BUNDLES_DIR)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_on_the_page_takes_its_options(page):
    commands = page_commands(page)
    for name, tokens in commands:
        try:
            if name == "lesion-study":
                check_study(tokens)
            elif name in SUBCOMMANDS:
                positional = [t for t in tokens if not t.startswith("-")]
                if not positional or positional[0].isupper():  # none, or a placeholder such as DATASET
                    continue
                assert positional[0] in SUBCOMMANDS[name], (page.name, name, tokens)
                assert set(options(tokens)) <= parameters(SUBCOMMANDS[name][positional[0]]), (page.name, tokens)
            elif name in FUNCTIONS:
                assert set(options(tokens)) <= parameters(FUNCTIONS[name]) | {"help"}, (page.name, name, tokens)
            else:  # lesion-check-json
                assert set(options(tokens)) <= {"fix"}, (page.name, tokens)
        except StudyError as error:
            pytest.fail(f"{page.name}: {name} {' '.join(tokens)}: {error}")


def test_the_pages_show_commands_and_the_wrappers_exist():
    assert sum(len(page_commands(page)) for page in PAGES) > 20
    for wrapper in WRAPPERS:
        assert (REPO / "scripts" / f"{wrapper}.py").is_file(), wrapper


def test_a_wrong_option_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\npython scripts/run_study.py polyp --data_dir=d --learning_rat=1\n```\n")
    ((name, tokens),) = page_commands(page)
    with pytest.raises(StudyError, match="learning_rat"):
        check_study(tokens)
    page.write_text("```bash\npython scripts/run_study.py sweep s/a s/c \\\n  --parameters=dbce_radius\n```\n")
    ((name, tokens),) = page_commands(page)
    with pytest.raises(AssertionError, match="parameters"):  # a subcommand's options are its function's
        check_study(tokens)
    page.write_text("`python scripts/prepare_data.py polyp --kvasir=K`\n")
    ((name, tokens),) = page_commands(page)
    assert "kvasir" not in parameters(PREPARE_COMMANDS["polyp"]) and options(tokens) == ["kvasir"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_on_the_page_resolves(page):
    targets = [m.split("#")[0] for m in re.findall(r"\]\(([^)\s]+)\)", page.read_text())]
    local = [t for t in targets if t and not t.startswith(("http://", "https://", "mailto:"))]
    missing = [t for t in local if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to missing {missing}"
