"""Generate every bundle of the collection from one source: the losses x the datasets below.

    python scripts/make_bundles.py                # (re)write bundles/<dataset>_<loss>/
    python scripts/make_bundles.py --check        # exit 1 if a generated file differs from the repo's

Bundles differ only in their loss (and its schedule handler); everything else comes from the dataset
spec. Adding a loss is one entry in ``LOSSES``; adding a 2D dataset is one ``DatasetSpec``.
The measured results in each bundle's docs come from ``bundles/results/<dataset>.json`` when present.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script: make `scripts` importable
    sys.path.insert(0, str(REPO))

from scripts.bundlegen.docs import index_readme  # noqa: E402
from scripts.bundlegen.files import all_bundles, bundle_files  # noqa: E402
from scripts.bundlegen.specs import (  # noqa: E402
    BUNDLES_DIR,
    DATASETS,
    LOSSES,
    RANK0_TRAIN_HANDLERS,
    SCHEMA_FILE,
    DatasetSpec,
    LossSpec,
)

__all__ = [
    "BUNDLES_DIR",
    "DATASETS",
    "LOSSES",
    "RANK0_TRAIN_HANDLERS",
    "SCHEMA_FILE",
    "DatasetSpec",
    "LossSpec",
    "all_bundles",
    "bundle_files",
    "index_readme",
]


def main(check: bool = False, output_dir: str | None = None) -> None:
    """Write (or with ``--check`` compare) every bundle under ``bundles/`` (or ``output_dir``)."""
    root = Path(output_dir) if output_dir else BUNDLES_DIR
    stale = []
    for bundle, files in all_bundles().items():
        for relative, text in files.items():
            path = root / bundle / relative
            if check:
                if not path.is_file() or path.read_text() != text:
                    stale.append(str(path))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    index = root / "README.md"
    if check:
        if not index.is_file() or index.read_text() != index_readme():
            stale.append(str(index))
    else:
        index.write_text(index_readme())
    if check and stale:
        print("out of date (run python scripts/make_bundles.py):\n  " + "\n  ".join(stale), file=sys.stderr)
        sys.exit(1)
    if not check:
        print(f"wrote {len(all_bundles())} bundles to {root}")


if __name__ == "__main__":
    fire.Fire(main)
