"""Input errors a user can fix, reported as one line at the end of the output of ``monai.bundle run``.

MONAI wraps an exception raised inside a config expression into ``RuntimeError: Failed to evaluate
ConfigExpression ...``, so the reason a user needs sits in the middle of a long traceback. The bundles
call :func:`install_error_report` first thing in ``initialize``: an uncaught exception whose chain holds
an :class:`InputError` then ends the process with ``error: <one line naming the file and the problem>``
as the last line, the full traceback kept in a file (or printed, with ``LESION_LOSS_DEBUG=1``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

DEBUG_ENV = "LESION_LOSS_DEBUG"
TRACEBACK_FILE = "error_traceback.txt"


class InputError(ValueError):
    """Bad input the user can fix (a dataset, an input folder, a checkpoint path); one-line message naming it."""


class InputNotFoundError(InputError, FileNotFoundError):
    """A file or folder the run needs does not exist."""


def find_input_error(error: BaseException | None) -> InputError | None:
    """The first :class:`InputError` in an exception's chain of causes and contexts."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, InputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def report_lines(error: BaseException, traceback_file: Path | None) -> list[str]:
    """What the user sees for ``error``: a pointer to the traceback, then the one-line reason (last)."""
    found = find_input_error(error)
    if found is None:
        return []
    where = f"full traceback in {traceback_file}" if traceback_file else "no traceback file"
    return [f"({where}; {DEBUG_ENV}=1 prints it)", error_line(found)]


def error_line(error: InputError) -> str:
    """``error: <the message on one line>``."""
    return "error: " + " ".join(str(error).split())


def install_error_report(output_dir: str | os.PathLike | None = None) -> None:
    """Make an uncaught :class:`InputError` end the process with its one line last (exit status 1).

    The full traceback goes to ``<output_dir>/logs/error_traceback.txt`` (printed instead with
    ``LESION_LOSS_DEBUG=1``). Under torchrun the line also becomes the rank's root cause in torchrun's
    summary. Other exceptions keep Python's usual report. Installing twice is harmless.
    """
    previous = sys.excepthook
    if getattr(previous, "lesion_loss_report", False):
        return

    def report(exc_type, exc, tb) -> None:
        found = find_input_error(exc)
        if found is None or os.environ.get(DEBUG_ENV):
            previous(exc_type, exc, tb)
            return
        line = error_line(found)
        traceback_file = None
        if output_dir is not None:
            try:
                traceback_file = Path(output_dir) / "logs" / TRACEBACK_FILE
                traceback_file.parent.mkdir(parents=True, exist_ok=True)
                # the one line first, then the whole story
                traceback_file.write_text(line + "\n\n" + "".join(traceback.format_exception(exc_type, exc, tb)))
            except OSError:
                traceback_file = None
        sys.stdout.flush()
        print("\n".join(report_lines(exc, traceback_file)), file=sys.stderr, flush=True)
        _tell_torchrun(line)

    report.lesion_loss_report = True  # type: ignore[attr-defined]
    sys.excepthook = report


def _tell_torchrun(line: str) -> None:
    """Under torchrun, put the line into the rank's error file: torchrun's failure summary, printed after
    every rank's output, then shows it as the root cause instead of a pointer to its docs."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not error_file:
        return
    try:
        with open(error_file, "w") as handle:
            json.dump({"message": line, "timestamp": int(time.time())}, handle)
    except OSError:
        pass
