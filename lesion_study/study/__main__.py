"""``python -m lesion_study.study``: the study command (how a study starts its runs)."""

import sys

from lesion_study.study.cli import main

sys.exit(main())
