"""The shared ending of the command-line entry points: an error the user can fix is one ``error: ...`` line."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

import fire

USAGE_ERROR = 2  # as fire's own usage errors


def run_fire(component: Any, argv: Sequence[str] | None, name: str, errors: tuple[type[BaseException], ...]) -> int:
    """Run ``component`` with fire on ``argv`` (``sys.argv[1:]`` when None); an exception of ``errors``
    ends it with ``error: <message>`` on stderr and status 1, anything else keeps its traceback.

    An option the function does not take is refused before it runs (fire would run it first and complain
    after, so a misspelt option could cost a whole training)."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    unknown = unknown_options(component, argv)
    if unknown:
        options, command = unknown
        called = f"{name} {command}" if command else name
        print(f"error: {called} takes no option {', '.join(options)}; see {called} --help", file=sys.stderr)
        return USAGE_ERROR
    try:
        fire.Fire(component, command=argv, name=name)
    except errors as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def unknown_options(component: Any, argv: Sequence[str]) -> tuple[list[str], str | None] | None:
    """The ``--options`` in ``argv`` that the called function does not take, and the subcommand's name
    (None for a single function); None when all are taken or the function accepts ``**kwargs``."""
    args, command = list(argv), None
    if isinstance(component, dict):
        if not args or args[0] not in component:
            return None  # fire lists the commands
        command, args = args[0], args[1:]
        component = component[command]
    if not callable(component):
        return None
    if "--" in args:  # fire's own flags follow the separator
        args = args[: args.index("--")]
    taken = _parameter_names(component)
    if taken is None:
        return None
    unknown = []
    for arg in args:
        if not arg.startswith("--") or arg == "--help":
            continue
        option = arg[2:].split("=", 1)[0].replace("-", "_")
        if option not in taken and not (option.startswith("no") and option[2:] in taken):  # fire's --noflag
            unknown.append(f"--{option}")
    return (unknown, command) if unknown else None


def _parameter_names(function: Callable) -> set[str] | None:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}
