"""The GPU kit: what a short-lived GPU machine needs to run benchmarks/gpu_checks.sh, in one ignored folder.

    python benchmarks/gpu_kit.py pack --data_dir=DATA --output=.gpu          # here, with the prepared data
    python benchmarks/gpu_kit.py verify --kit=.gpu                           # there, before anything runs

The machine has the repository (tracked and untracked files, plus up to 8 carried ignored paths, 64 MiB in
all), Python 3.12 and PyTorch with CUDA, and no network. The kit holds:

- ``data/<dataset>/``: the prepared datasets (scripts/prepare_data.py) re-encoded compactly, images as
  JPEG (quality 90) and masks as PNG, with their ``datalist.json``: the bundles read them as they are;
- ``wheels/``: the packages that machine lacks (monai, pytorch-ignite, nibabel, fire, ...), downloaded for
  CPython 3.12 on manylinux x86_64, installed there with ``pip install --no-index --no-deps --target``;
- ``manifest.json``: every file with its size and sha256, and the totals.

Datasets are added in the order given while the kit stays within the budget; one that does not fit is
left for a second kit (``--datasets=[footulcer]``), and a kit whose first dataset does not fit is refused,
with the sizes.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import fire
from PIL import Image

MIB = 1024 * 1024
# what the GPU machine may lack (it has torch and numpy): the bundles' imports (TensorBoard's writer needs only
# tensorboard and protobuf), fire, and pytest for the CUDA tests. Not SciPy or matplotlib (tens of MiB): without
# them the study's runs still complete there and the report is built here (run_study.py report).
WHEELS = (
    "monai==1.6.1",
    "pytorch-ignite==0.5.5",
    "nibabel",
    "fire",
    "termcolor",
    "tensorboard",
    "protobuf",
    "pyyaml",
    "pillow",
    "pytest",
    "pluggy",
    "iniconfig",
)
JPEG_QUALITY = 90


class KitError(ValueError):
    """A kit that cannot be made or is broken: the message says which file or size."""


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def compact_dataset(prepared: Path, destination: Path) -> int:
    """Copy a prepared 2D dataset with JPEG images and PNG masks; returns its size in bytes."""
    datalist_path = prepared / "datalist.json"
    if not datalist_path.is_file():
        raise KitError(f"{datalist_path} does not exist (prepare the dataset with scripts/prepare_data.py)")
    datalist = json.loads(datalist_path.read_text())
    for split in ("training", "test"):
        for item in datalist.get(split, []):
            for key in ("image", "label"):
                source = Path(item[key]) if Path(item[key]).is_absolute() else prepared / item[key]
                if not source.is_file():
                    raise KitError(f"{datalist_path}: {split} {key} {source} does not exist")
                relative = Path(split) / key / source.name
                if key == "image":
                    relative = relative.with_suffix(".jpg")
                target = destination / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(source) as image:
                    if key == "image":
                        image.convert("RGB").save(target, quality=JPEG_QUALITY)
                    else:
                        buffer = io.BytesIO()
                        image.convert("L").save(buffer, format="PNG", optimize=True)
                        target.write_bytes(buffer.getvalue())
                item[key] = str(relative)
    (destination / "datalist.json").write_text(json.dumps(datalist, indent=1) + "\n")
    return _folder_size(destination)


def download_wheels(destination: Path, packages: tuple[str, ...] = WHEELS) -> int:
    """Wheels for CPython 3.12 / manylinux x86_64 without dependencies; returns their size in bytes."""
    destination.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--platform", "manylinux2014_x86_64", "--dest", str(destination)]
    result = subprocess.run(command + list(packages), capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise KitError(f"cannot download the wheels ({', '.join(packages)}): {reason}")
    return _folder_size(destination)


def make_kit(
    data_dir: str,
    output: str = ".gpu",
    datasets: list[str] | tuple[str, ...] = ("polyp", "footulcer"),
    budget_mib: float = 56.0,
    wheels: bool = True,
) -> Path:
    """Write the kit into ``output`` (replaced): the datasets of ``data_dir/<dataset>/`` that fit, the wheels
    and the manifest. Prints what went in and the sizes; refuses when even the first dataset does not fit."""
    data_root, kit = Path(data_dir), Path(output)
    datasets = [datasets] if isinstance(datasets, str) else list(datasets)
    staging = Path(tempfile.mkdtemp(prefix=f".{kit.name}.tmp-", dir=kit.absolute().parent))
    try:
        used = download_wheels(staging / "wheels") if wheels else 0
        print(f"wheels: {used / MIB:.1f} MiB", flush=True)
        included, left_out = [], {}
        for index, name in enumerate(datasets):
            if not (data_root / name).is_dir():
                if index == 0:
                    raise KitError(f"{data_root / name} does not exist (a prepared dataset folder)")
                print(f"{name}: no {data_root / name}, not in this kit", flush=True)
                continue
            size = compact_dataset(data_root / name, staging / "data" / name)
            if used + size > budget_mib * MIB:
                shutil.rmtree(staging / "data" / name)
                if index == 0:
                    raise KitError(
                        f"{name} needs {size / MIB:.1f} MiB and the wheels {used / MIB:.1f} MiB: over the "
                        f"{budget_mib:g} MiB budget"
                    )
                left_out[name] = round(size / MIB, 2)
                print(f"{name}: {size / MIB:.1f} MiB does not fit (a second kit: --datasets=[{name}])", flush=True)
                continue
            used += size
            included.append(name)
            print(f"{name}: {size / MIB:.1f} MiB (kit now {used / MIB:.1f} MiB)", flush=True)
        files = {
            str(p.relative_to(staging)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        manifest = {
            "datasets": included,
            "left_out_mib": left_out,
            "wheels": sorted(p.name for p in (staging / "wheels").glob("*.whl")),
            "total_mib": round(used / MIB, 2),
            "budget_mib": budget_mib,
            "files": files,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if kit.exists():
            shutil.rmtree(kit)
        staging.rename(kit)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"kit {kit}: {manifest['total_mib']} MiB, datasets {included}, {len(manifest['wheels'])} wheels")
    return kit


def check_kit(kit: str = ".gpu") -> dict:
    """Check every file of the kit against its manifest (size and sha256); returns the manifest."""
    root = Path(kit)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise KitError(f"{manifest_path} does not exist (make the kit with: python benchmarks/gpu_kit.py pack)")
    manifest = json.loads(manifest_path.read_text())
    for relative, expected in manifest["files"].items():
        path = root / relative
        if not path.is_file():
            raise KitError(f"kit file {path} is missing")
        if path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise KitError(f"kit file {path} differs from the manifest (size or sha256)")
    print(f"kit {root}: {len(manifest['files'])} files verified, datasets {manifest['datasets']}")
    return manifest


def pack(
    data_dir: str,
    output: str = ".gpu",
    datasets: list[str] | tuple[str, ...] = ("polyp", "footulcer"),
    budget_mib: float = 56.0,
    wheels: bool = True,
) -> None:
    """Write the kit into ``output`` (replaced): the prepared datasets ``data_dir/<dataset>/`` that fit in
    ``budget_mib`` with the wheels (JPEG images, PNG masks), the wheels and ``manifest.json``."""
    make_kit(data_dir, output, datasets, budget_mib, wheels)


def verify(kit: str = ".gpu") -> None:
    """Check every file of the kit against its manifest (size and sha256)."""
    check_kit(kit)


def main(argv: list[str] | None = None) -> int:
    try:
        fire.Fire({"pack": pack, "verify": verify}, command=argv, name="gpu_kit.py")
    except KitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
