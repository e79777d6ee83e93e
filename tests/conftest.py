"""Fixtures shared by the study tests."""

from __future__ import annotations

import os
from pathlib import Path

# pytest-xdist runs the tests on every core side by side (pyproject.toml): one thread each, for the runs
# they start too, or OpenMP's threads of one test would spin against another's
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from lesion_study.demo_data import write_demo_layouts
from lesion_study.prepare.datasets import prepare_polyp

# bundle overrides for runs of seconds: one epoch of tiny images on the CPU
TINY = {"epochs": 1, "batch_size": 4, "val_batch_size": 4, "num_workers": 0, "image_size": 64, "device": "cpu"}


@pytest.fixture(scope="session")
def tiny_demo_data(tmp_path_factory) -> Path:
    """A prepared demo dataset: 10 training frames, 4 test frames with a lesion, 2 lesion-free."""
    root = tmp_path_factory.mktemp("demo")
    kvasir, endotect = write_demo_layouts(root / "raw", num_train=10, num_test_lesion=4, num_test_lesion_free=2)
    return Path(prepare_polyp(kvasir, endotect, root / "prepared", size=64)).parent
