"""Atomic file writes: a killed run never leaves a file that looks complete."""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new hidden file beside ``path``, opened for writing. Created with mode 0666 so that the umask sets
    its permissions, as for any other file (``tempfile.mkstemp`` always makes 0600: private results)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name beside {path}")


@contextmanager
def replace_atomically(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """A handle to a temporary file beside ``path``, renamed over ``path`` when the block ends cleanly
    (after an fsync) and deleted when it raises. The file gets the permissions the umask gives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    with replace_atomically(path) as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, data: object) -> None:
    write_text_atomic(path, json.dumps(data, indent=4, allow_nan=False) + "\n")


def write_csv_atomic(path: str | os.PathLike, rows: Sequence[dict], fieldnames: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
