"""Thin wrapper kept so that README and bundle-doc commands work: see the module it runs."""

import sys

from lesion_study.json_format import main

if __name__ == "__main__":
    sys.exit(main())
