"""Fail when a tracked JSON file is not formatted with a 4-space indent (``--fix`` rewrites them).

python scripts/check_json_format.py        # check
python scripts/check_json_format.py --fix  # rewrite in place
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lesion_study.paths import REPO


def formatted(text: str) -> str:
    return json.dumps(json.loads(text), indent=4, ensure_ascii=False) + "\n"


def json_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [REPO / name for name in listed if (REPO / name).is_file()]


def main(argv: list[str] | None = None) -> int:
    fix = "--fix" in (sys.argv[1:] if argv is None else argv)
    bad = []
    for path in json_files():
        text = path.read_text()
        try:
            expected = formatted(text)
        except json.JSONDecodeError as error:
            print(f"{path.relative_to(REPO)}: invalid JSON: {error}", file=sys.stderr)
            return 1
        if text != expected:
            if fix:
                path.write_text(expected)
            else:
                bad.append(path.relative_to(REPO))
    for path in bad:
        print(f"{path}: not formatted with a 4-space indent (run scripts/check_json_format.py --fix)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
