"""``lesion-prepare`` (``python scripts/prepare_data.py``): prepare a dataset for the bundles.

lesion-prepare polyp --kvasir_dir=DIR --endotect_dir=DIR --output_dir=DIR [--size=352]
lesion-prepare footulcer --fuseg_dir=DIR --output_dir=DIR [--size=512]
lesion-prepare hippocampus --hippocampus_dir=DIR --output_dir=DIR [--copy=False]
lesion-prepare folder --train_dir=DIR --test_dir=DIR [--lesion_free_dir=DIR] --output_dir=DIR
    [--mask_suffix=_mask] [--mask_rule=auto|nonzero|threshold] [--size=352]   # any 2D lesion dataset
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lesion_study.command import run_fire
from lesion_study.prepare.common import DataPreparationError
from lesion_study.prepare.datasets import prepare_footulcer, prepare_hippocampus, prepare_polyp
from lesion_study.prepare.folder import prepare_folder

COMMANDS = {
    "polyp": prepare_polyp,
    "footulcer": prepare_footulcer,
    "hippocampus": prepare_hippocampus,
    "folder": prepare_folder,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: one-line ``error: ...`` and exit status 1 on bad input."""
    return run_fire(COMMANDS, argv, "prepare_data.py", (DataPreparationError,))


if __name__ == "__main__":
    sys.exit(main())
