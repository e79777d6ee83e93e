"""Where the repository's own folders are: the package is installed editable from the checkout (README)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO / "bundles"
DOCS_DIR = REPO / "docs"
