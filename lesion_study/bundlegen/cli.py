"""Generate every bundle of the collection from one source: the losses x the dataset specs.

    python scripts/make_bundles.py                # (re)write bundles/<dataset>_<loss>/ from bundles/specs/*.yaml
    python scripts/make_bundles.py --check        # exit 1 if a generated file differs from the repo's
    python scripts/make_bundles.py --dataset_spec=my_lesions.yaml --output_dir=my_bundles   # your dataset

Bundles differ only in their loss (and its schedule handler); everything else comes from the dataset
spec, a small YAML file (bundles/specs/polyp.yaml is one; the fields are ``DatasetSpec``'s in
scripts/bundlegen/specs.py). Adding a loss is one entry in ``LOSSES``. The code that writes each kind of
file is in scripts/bundlegen/. The measured results in each bundle's docs come from
``bundles/results/<dataset>.json`` when present (scripts/publish_results.py writes it).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from lesion_study.bundlegen.docs import index_readme
from lesion_study.bundlegen.files import all_bundles, bundle_files
from lesion_study.bundlegen.specs import (
    BUNDLES_DIR,
    DATASETS,
    LOSSES,
    RESULTS_DIR,
    SCHEMA_FILE,
    DatasetSpec,
    LossSpec,
    SpecError,
    load_dataset_spec,
)
from lesion_study.command import run_fire

__all__ = [
    "BUNDLES_DIR",
    "DATASETS",
    "LOSSES",
    "SCHEMA_FILE",
    "DatasetSpec",
    "LossSpec",
    "all_bundles",
    "bundle_files",
    "index_readme",
    "load_dataset_spec",
]


def make_bundles(check: bool = False, output_dir: str | None = None, dataset_spec: str | None = None) -> None:
    """Write (or with ``--check`` compare) the bundles of the built-in datasets under ``bundles/``, or with
    ``--dataset_spec=my_lesions.yaml`` those of your dataset under ``--output_dir`` (its own README index,
    the metadata schema, and results from ``<output_dir>/results/<name>.json`` when you publish some).
    """
    if dataset_spec is not None and output_dir is None:
        raise SpecError("--dataset_spec needs --output_dir: the folder to write the new bundles into")
    specs = [load_dataset_spec(dataset_spec)] if dataset_spec else None
    root = Path(output_dir) if output_dir else BUNDLES_DIR
    results_dir = root / "results" if dataset_spec else RESULTS_DIR
    if dataset_spec and specs[0].name in DATASETS and root.resolve() == BUNDLES_DIR.resolve():
        raise SpecError(f"{dataset_spec}: name {specs[0].name!r} is a built-in dataset; choose another name")
    bundles = all_bundles(specs, results_dir)
    index_text = index_readme(specs, results_dir)
    stale = []
    for bundle, files in bundles.items():
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
        if not index.is_file() or index.read_text() != index_text:
            stale.append(str(index))
    else:
        index.write_text(index_text)
        if root.resolve() != BUNDLES_DIR.resolve():  # verify_metadata cannot download the schema offline
            shutil.copy(BUNDLES_DIR / SCHEMA_FILE, root / SCHEMA_FILE)
    if check and stale:
        print("out of date (run python scripts/make_bundles.py):\n  " + "\n  ".join(stale), file=sys.stderr)
        sys.exit(1)
    if not check:
        print(f"wrote {len(bundles)} bundles to {root}")


def main(argv: list[str] | None = None) -> int:
    return run_fire(make_bundles, argv, "make_bundles.py", (SpecError,))


if __name__ == "__main__":
    sys.exit(main())
