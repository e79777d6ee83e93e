"""Tests of `prepare_data.py hippocampus` on tiny synthetic NIfTI layouts (and the real data with LESION_LOSS_DATA)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImaged

from lesion_study.prepare.datasets import prepare_hippocampus
from lesion_study.synthetic import write_hippocampus_layout
from tests.test_prepare_data import assert_named_and_nothing_written

REPO_ROOT = Path(__file__).resolve().parents[1]
N_VOLUMES, SHAPE = 10, (12, 16, 12)


@pytest.fixture
def hippocampus(tmp_path: Path) -> Path:
    """A tiny hippocampus dataset in the shared layout (images/ + labels/)."""
    return write_hippocampus_layout(tmp_path / "hippocampus", n_volumes=N_VOLUMES, shape=SHAPE)


def _prepare(hippocampus_dir: Path, output_dir: Path, **kwargs) -> dict:
    datalist_path = prepare_hippocampus(hippocampus_dir, output_dir, **kwargs)
    assert datalist_path == output_dir / "datalist.json"
    return json.loads(datalist_path.read_text())


def _resave(path: Path, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    """Rewrite a NIfTI file with new data and/or affine."""
    volume = nib.load(path)
    new_data = np.asanyarray(volume.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(new_data, volume.affine if affine is None else affine), path)


def test_shared_layout_copied(hippocampus: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "prepared"
    datalist = _prepare(hippocampus, output_dir)
    assert datalist["name"] == "hippocampus"
    assert datalist["labels"] == {"0": "background", "1": "anterior", "2": "posterior"}
    assert datalist["num_folds"] == 5 and datalist["seed"] == 0 and datalist["test"] == []

    training = datalist["training"]
    assert len(training) == N_VOLUMES
    assert Counter(item["fold"] for item in training) == {fold: N_VOLUMES // 5 for fold in range(1, 6)}
    names = sorted(path.name for path in (hippocampus / "images").iterdir())
    assert [Path(item["image"]).name for item in training] == names
    for item in training:
        assert set(item) == {"image", "label", "fold", "spacing"} and item["spacing"] == [1.0, 1.0, 1.0]
        assert item["image"] == f"images/{Path(item['image']).name}"
        assert item["label"] == f"labels/{Path(item['image']).name}"
        for key, folder in (("image", "images"), ("label", "labels")):
            copied = (output_dir / item[key]).read_bytes()
            assert copied == (hippocampus / folder / Path(item[key]).name).read_bytes()

    loaded = load_decathlon_datalist(output_dir / "datalist.json", data_list_key="training", base_dir=output_dir)
    sample = LoadImaged(keys=["image", "label"])(loaded[0])
    assert tuple(sample["label"].shape) == SHAPE and set(np.unique(sample["label"]).tolist()) == {0, 1, 2}


def test_decathlon_layout(tmp_path: Path) -> None:
    """imagesTr/ + labelsTr/ + dataset.json are read; imagesTs/ and macOS ._ files are ignored."""
    root = write_hippocampus_layout(tmp_path / "Task04_Hippocampus", n_volumes=N_VOLUMES, decathlon=True)
    assert (root / "dataset.json").is_file() and any((root / "imagesTs").iterdir())
    for folder in ("imagesTr", "labelsTr"):
        (root / folder / "._hippocampus_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    datalist = _prepare(root, tmp_path / "prepared")
    names = sorted(path.name for path in (root / "imagesTr").iterdir() if not path.name.startswith("."))
    assert [Path(item["image"]).name for item in datalist["training"]] == names
    assert sorted(path.name for path in (tmp_path / "prepared" / "labels").iterdir()) == names


def test_without_copying_points_at_originals(hippocampus: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "prepared"
    datalist = _prepare(hippocampus, output_dir, copy=False)
    assert sorted(path.name for path in output_dir.iterdir()) == ["datalist.json"]
    for item in datalist["training"]:
        image, label = Path(item["image"]), Path(item["label"])
        assert image.is_absolute() and image.parent == hippocampus / "images"
        assert label.is_absolute() and label == hippocampus / "labels" / image.name


def test_spacing_comes_from_the_header(hippocampus: Path, tmp_path: Path) -> None:
    name = sorted(path.name for path in (hippocampus / "images").iterdir())[3]
    anisotropic = np.diag([0.5, 1.0, 2.5, 1.0])
    for folder in ("images", "labels"):
        _resave(hippocampus / folder / name, affine=anisotropic)
    datalist = _prepare(hippocampus, tmp_path / "prepared")
    spacing = {Path(item["image"]).name: item["spacing"] for item in datalist["training"]}
    assert spacing[name] == [0.5, 1.0, 2.5]
    assert Counter(map(tuple, spacing.values())) == {(1.0, 1.0, 1.0): N_VOLUMES - 1, (0.5, 1.0, 2.5): 1}


def test_deterministic_and_seeded(hippocampus: Path, tmp_path: Path) -> None:
    first = _prepare(hippocampus, tmp_path / "first")
    assert _prepare(hippocampus, tmp_path / "second") == first
    other = _prepare(hippocampus, tmp_path / "other-seed", seed=5)
    assert [item["fold"] for item in other["training"]] != [item["fold"] for item in first["training"]]


def test_synthetic_labels_split_into_anterior_and_posterior(hippocampus: Path) -> None:
    label_path = sorted((hippocampus / "labels").iterdir())[0]
    label = np.asanyarray(nib.load(label_path).dataobj)
    assert label.dtype == np.uint8 and label.shape == SHAPE
    anterior, posterior = np.nonzero(label == 1)[1], np.nonzero(label == 2)[1]
    assert anterior.size and posterior.size and anterior.max() < posterior.min()
    image = nib.load(hippocampus / "images" / label_path.name)
    assert image.get_data_dtype() == np.float32 and image.header.get_zooms() == (1.0, 1.0, 1.0)


def _nth(root: Path, folder: str, index: int = 0) -> Path:
    return sorted((root / folder).iterdir())[index]


def _missing_folder(root: Path) -> list[str]:
    for path in (root / "labels").iterdir():
        path.unlink()
    (root / "labels").rmdir()
    return ["label folder not found", str(root / "labels")]


def _empty_folder(root: Path) -> list[str]:
    for path in (root / "images").iterdir():
        path.unlink()
    return ["image folder has no .nii.gz/.nii files", str(root / "images")]


def _image_without_label(root: Path) -> list[str]:
    label = _nth(root, "labels", 2)
    label.unlink()
    return ["image without label", str(root / "images" / label.name)]


def _label_without_image(root: Path) -> list[str]:
    image = _nth(root, "images", 1)
    image.unlink()
    return ["label without image", str(root / "labels" / image.name)]


def _corrupt_image(root: Path) -> list[str]:
    image = _nth(root, "images", 4)
    image.write_bytes(b"not a nifti file")
    return ["cannot read image", "corrupt or not NIfTI", str(image)]


def _truncated_label(root: Path) -> list[str]:
    label = _nth(root, "labels", 5)
    label.write_bytes(label.read_bytes()[: label.stat().st_size // 2])
    return ["cannot read label", str(label)]


def _shape_mismatch(root: Path) -> list[str]:
    label = _nth(root, "labels", 3)
    _resave(label, data=np.zeros((12, 16, 11), dtype=np.uint8))
    return ["shape mismatch", str(root / "images" / label.name), str(label), "12x16x12", "12x16x11"]


def _affine_mismatch(root: Path) -> list[str]:
    label = _nth(root, "labels", 6)
    shifted = np.eye(4)
    shifted[:3, 3] = [0.0, 2.0, 0.0]
    _resave(label, affine=shifted)
    return ["affine mismatch", str(root / "images" / label.name), str(label)]


def _unknown_label_class(root: Path) -> list[str]:
    label = _nth(root, "labels", 7)
    data = np.asanyarray(nib.load(label).dataobj).copy()
    data[0, 0, 0] = 3
    _resave(label, data=data)
    return ["values other than 0 (background), 1 (anterior), 2 (posterior)", str(label), ": 3"]


def _four_dimensional_image(root: Path) -> list[str]:
    image = _nth(root, "images", 8)
    _resave(image, data=np.zeros((*SHAPE, 2), dtype=np.float32))
    return ["image is not 3D", str(image), "12x16x12x2"]


BAD_INPUTS = [
    _missing_folder,
    _empty_folder,
    _image_without_label,
    _label_without_image,
    _corrupt_image,
    _truncated_label,
    _shape_mismatch,
    _affine_mismatch,
    _unknown_label_class,
    _four_dimensional_image,
]


@pytest.mark.parametrize("break_input", BAD_INPUTS, ids=lambda function: function.__name__.strip("_"))
def test_bad_input_is_named_and_nothing_is_written(break_input, hippocampus: Path, tmp_path: Path) -> None:
    expected_fragments = break_input(hippocampus)
    output_dir = tmp_path / "out" / "prepared"
    assert_named_and_nothing_written(
        lambda: prepare_hippocampus(hippocampus, output_dir), expected_fragments, output_dir
    )


def test_failure_while_copying_leaves_nothing(
    hippocampus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("lesion_study.prepare.datasets.shutil.copyfile", disk_full)
    with pytest.raises(OSError, match="No space left"):
        prepare_hippocampus(hippocampus, tmp_path / "prepared")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hippocampus"]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "scripts" / "prepare_data.py"), "hippocampus", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)


def test_cli(hippocampus: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "prepared"
    common = [f"--hippocampus_dir={hippocampus}", f"--output_dir={output_dir}"]
    finished = _run_cli(*common, "--copy=False")
    assert finished.returncode == 0, finished.stderr
    assert f"{N_VOLUMES} training and 0 test items" in finished.stdout
    assert Path(json.loads((output_dir / "datalist.json").read_text())["training"][0]["image"]).is_absolute()

    bad_label = _nth(hippocampus, "labels", 0)
    _resave(bad_label, data=np.full(SHAPE, 7, dtype=np.uint8))
    failed = _run_cli(*common, "--overwrite")
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"error: label {bad_label} has values other than")
    assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr
    assert sorted(path.name for path in output_dir.iterdir()) == ["datalist.json"]  # previous output untouched


def _real_hippocampus_dir() -> Path | None:
    root = os.environ.get("LESION_LOSS_DATA")
    return Path(root) / "hippocampus" if root and (Path(root) / "hippocampus").is_dir() else None


@pytest.mark.slow
@pytest.mark.skipif(_real_hippocampus_dir() is None, reason="set LESION_LOSS_DATA to a folder with hippocampus/")
def test_real_hippocampus(tmp_path: Path) -> None:
    hippocampus_dir = _real_hippocampus_dir()
    assert hippocampus_dir is not None
    datalist = _prepare(hippocampus_dir, tmp_path / "hippocampus", copy=False)
    training = datalist["training"]
    assert len(training) == 260 and datalist["test"] == []
    assert Counter(item["fold"] for item in training) == {fold: 52 for fold in range(1, 6)}
    assert all(len(item["spacing"]) == 3 and all(value > 0 for value in item["spacing"]) for item in training)
