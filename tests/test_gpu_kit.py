"""The GPU kit and benchmarks/gpu_checks.sh, dry-run on the CPU with tiny sizes (figures are not checked)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from lesion_study.synthetic import write_prepared_polyp

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_kit", REPO / "benchmarks" / "gpu_kit.py")
gpu_kit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_kit)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kit_data")
    for name, seed in (("polyp", 0), ("footulcer", 1)):
        prepared = write_prepared_polyp(root / f"raw_{name}", n_train=10, n_lesion=3, n_lesion_free=2, seed=seed)
        shutil.copytree(prepared, root / "data" / name)
    return root / "data"


def test_pack_compacts_the_data_and_refuses_when_over_budget(data_root, tmp_path):
    kit = gpu_kit.make_kit(str(data_root), str(tmp_path / "kit"), wheels=False)
    manifest = gpu_kit.check_kit(str(kit))
    assert manifest["datasets"] == ["polyp", "footulcer"] and manifest["left_out_mib"] == {}
    datalist = json.loads((kit / "data" / "polyp" / "datalist.json").read_text())
    first = datalist["training"][0]
    assert first["image"].endswith(".jpg") and first["label"].endswith(".png") and "fold" in first
    assert (kit / "data" / "polyp" / first["image"]).is_file()
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())

    polyp_mib = gpu_kit._folder_size(kit / "data" / "polyp") / gpu_kit.MIB
    second = gpu_kit.make_kit(str(data_root), str(tmp_path / "kit2"), wheels=False, budget_mib=polyp_mib * 1.5)
    assert gpu_kit.check_kit(str(second))["left_out_mib"].keys() == {"footulcer"}  # for a second kit

    with pytest.raises(gpu_kit.KitError, match=r"polyp needs .* MiB .* over the 0.001 MiB budget"):
        gpu_kit.make_kit(str(data_root), str(tmp_path / "kit3"), wheels=False, budget_mib=0.001)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kit", "kit2"]  # nothing half-written

    victim = kit / "data" / "polyp" / first["label"]
    victim.write_bytes(victim.read_bytes()[:-1])
    with pytest.raises(gpu_kit.KitError, match=f"kit file {victim} differs from the manifest"):
        gpu_kit.check_kit(str(kit))


@pytest.mark.slow
def test_gpu_checks_dry_run_on_cpu(data_root, tmp_path):
    kit = gpu_kit.make_kit(str(data_root), str(tmp_path / "kit"), datasets=["polyp"], wheels=False)
    out = tmp_path / "out"
    env = {**os.environ, "KIT": str(kit), "OUT": str(out), "DEVICE": "cpu", "TINY": "1"}
    for phase in ("1", "2a", "3"):
        result = subprocess.run(
            ["bash", "benchmarks/gpu_checks.sh", phase], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stdout[-3000:]
        log = (out / f"phase{phase}.log").read_text()
        assert "FAILED" not in log, log[-3000:]
        assert f"phase {phase} finished" in log and "done: verify the kit" in log
    assert sorted(p.name for p in out.iterdir()) == [
        "bench_losses.json",
        "dbce_sweep.tar.gz",
        "phase1.log",
        "phase2a.log",
        "phase3.log",
        "study_polyp_2a.tar.gz",
        "throughput.json",
    ]
    assert "polyp_dbce" in json.loads((out / "throughput.json").read_text())["bundles"]  # TINY: one bundle
    with tarfile.open(out / "study_polyp_2a.tar.gz") as archive:
        names = archive.getnames()
    assert "./results.md" in names and not any(name.endswith(".pt") for name in names)
    with tarfile.open(out / "dbce_sweep.tar.gz") as archive:  # the radii ran side by side, each to its report
        names = archive.getnames()
    assert {"sweep_r1/results.md", "sweep_r5/results.md"} <= set(names), names
