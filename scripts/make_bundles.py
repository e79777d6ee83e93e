"""Thin wrapper kept so that README and bundle-doc commands work: see the module it runs."""

import sys

from lesion_study.bundlegen.cli import main

if __name__ == "__main__":
    sys.exit(main())
