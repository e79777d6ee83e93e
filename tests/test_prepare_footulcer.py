"""Tests of `prepare_data.py footulcer` on tiny synthetic FUSeg layouts (and on the real data with LESION_LOSS_DATA)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from PIL import Image

from lesion_study.prepare.common import DataPreparationError
from lesion_study.prepare.datasets import prepare_footulcer
from lesion_study.synthetic import write_fuseg_layout
from tests.test_prepare_data import assert_named_and_nothing_written

REPO_ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TRAIN_EMPTY, N_VALIDATION, N_VALIDATION_EMPTY = 12, 2, 6, 2
N_TRAINING_ITEMS = N_TRAIN - N_TRAIN_EMPTY  # only train images with a wound
N_TEST_ITEMS = N_VALIDATION + N_TRAIN_EMPTY


@pytest.fixture
def fuseg(tmp_path: Path) -> Path:
    """A tiny FUSeg layout with JPEG images, like the shared copy."""
    return write_fuseg_layout(tmp_path / "fuseg")


def _prepare(fuseg_dir: Path, output_dir: Path, **kwargs) -> dict:
    datalist_path = prepare_footulcer(fuseg_dir, output_dir, **kwargs)
    assert datalist_path == output_dir / "datalist.json"
    return json.loads(datalist_path.read_text())


def _wound_free_stems(fuseg_dir: Path, split: str) -> set[str]:
    """Stems of the images of `split` whose mask is empty."""
    return {
        path.stem
        for path in (fuseg_dir / split / "labels").iterdir()
        if not (np.asarray(Image.open(path).convert("L")) > 127).any()
    }


def _leftovers(parent: Path) -> list[str]:
    """Temporary folders left next to the output folder."""
    return sorted(path.name for path in parent.iterdir() if ".tmp-" in path.name or ".old-" in path.name)


@pytest.mark.parametrize("image_ext", [".jpg", ".png"])
def test_protocol_split_folds_and_flags(image_ext: str, tmp_path: Path) -> None:
    fuseg_dir = write_fuseg_layout(tmp_path / "fuseg", image_ext=image_ext)
    output_dir = tmp_path / "prepared"
    datalist = _prepare(fuseg_dir, output_dir, size=32)
    assert datalist["name"] == "footulcer" and datalist["size"] == 32
    assert datalist["num_folds"] == 5 and datalist["seed"] == 0

    training, test = datalist["training"], datalist["test"]
    assert len(training) == N_TRAINING_ITEMS and len(test) == N_TEST_ITEMS
    assert Counter(item["fold"] for item in training) == {fold: N_TRAINING_ITEMS // 5 for fold in range(1, 6)}
    assert {(item["source"], item["lesion_free"]) for item in training} == {("fuseg-train", False)}
    assert Counter((item["source"], item["lesion_free"]) for item in test) == {
        ("fuseg-validation", False): N_VALIDATION - N_VALIDATION_EMPTY,
        ("fuseg-validation", True): N_VALIDATION_EMPTY,
        ("fuseg-train-wound-free", True): N_TRAIN_EMPTY,
    }
    assert all(set(item) == {"image", "label", "lesion_free", "source"} for item in test)

    training_stems = {Path(item["image"]).stem for item in training}
    assert not training_stems & _wound_free_stems(fuseg_dir, "train")
    moved_stems = {Path(item["image"]).stem for item in test if item["source"] == "fuseg-train-wound-free"}
    assert moved_stems == _wound_free_stems(fuseg_dir, "train")

    for item in training + test:
        assert not Path(item["image"]).is_absolute() and item["image"].endswith(".png")
        image, mask = Image.open(output_dir / item["image"]), Image.open(output_dir / item["label"])
        assert image.mode == "RGB" and image.size == (32, 32) and mask.mode == "L" and mask.size == (32, 32)
        mask_values = set(np.unique(np.asarray(mask)).tolist())
        assert mask_values <= {0, 255} and (255 in mask_values) != item["lesion_free"]

    loaded = load_decathlon_datalist(output_dir / "datalist.json", data_list_key="test", base_dir=output_dir)
    assert len(loaded) == N_TEST_ITEMS and all(Path(item["label"]).exists() for item in loaded)
    assert _leftovers(tmp_path) == []


def test_without_resizing_points_at_originals(fuseg: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "prepared"
    datalist = _prepare(fuseg, output_dir, size=None)
    assert sorted(path.name for path in output_dir.iterdir()) == ["datalist.json"]
    assert datalist["size"] is None
    assert len(datalist["training"]) == N_TRAINING_ITEMS and len(datalist["test"]) == N_TEST_ITEMS
    for item in datalist["training"] + datalist["test"]:
        image, label = Path(item["image"]), Path(item["label"])
        assert image.is_absolute() and image.suffix == ".jpg" and label.suffix == ".png"
        expected_split = "validation" if item["source"] == "fuseg-validation" else "train"
        assert image.parent == fuseg / expected_split / "images" and label.parent == fuseg / expected_split / "labels"


def test_deterministic_and_seeded(fuseg: Path, tmp_path: Path) -> None:
    first = _prepare(fuseg, tmp_path / "first", size=16)
    assert _prepare(fuseg, tmp_path / "second", size=16) == first
    other = _prepare(fuseg, tmp_path / "other-seed", size=16, seed=7)
    assert [item["fold"] for item in other["training"]] != [item["fold"] for item in first["training"]]
    assert other["test"] == first["test"]


def test_num_folds_balance(fuseg: Path, tmp_path: Path) -> None:
    datalist = _prepare(fuseg, tmp_path / "prepared", size=16, num_folds=3)
    assert sorted(Counter(item["fold"] for item in datalist["training"]).items()) == [(1, 4), (2, 3), (3, 3)]


def test_wounds_are_judged_on_the_original_masks(
    fuseg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tiny wound that vanishes when resized keeps its image in training, flagged as having a wound."""
    wound_stems = sorted(
        {path.stem for path in (fuseg / "train" / "labels").iterdir()} - _wound_free_stems(fuseg, "train")
    )
    tiny_wound = np.zeros((64, 64), dtype=np.uint8)
    tiny_wound[10, 10] = 255
    Image.fromarray(tiny_wound).save(fuseg / "train" / "labels" / f"{wound_stems[0]}.png")
    datalist = _prepare(fuseg, tmp_path / "prepared", size=8)
    item = next(item for item in datalist["training"] if Path(item["image"]).stem == wound_stems[0])
    assert item["lesion_free"] is False
    assert not np.asarray(Image.open(tmp_path / "prepared" / item["label"])).any()
    assert len(datalist["training"]) == N_TRAINING_ITEMS
    assert "warning: 1 mask(s) with a lesion are empty at size 8" in capsys.readouterr().err


def test_too_few_wound_images_for_the_folds(tmp_path: Path) -> None:
    fuseg_dir = write_fuseg_layout(tmp_path / "fuseg", n_train=5, n_train_empty=2)
    with pytest.raises(DataPreparationError, match=r"^3 training images with a wound in .*train cannot fill 5 folds"):
        prepare_footulcer(fuseg_dir, tmp_path / "prepared", size=16)
    assert not (tmp_path / "prepared").exists()


def _first(fuseg: Path, folder: str) -> Path:
    return sorted((fuseg / folder).iterdir())[0]


def _missing_folder(fuseg: Path) -> list[str]:
    folder = fuseg / "validation" / "labels"
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    return ["mask folder not found", str(folder)]


def _empty_folder(fuseg: Path) -> list[str]:
    for path in (fuseg / "train" / "images").iterdir():
        path.unlink()
    return ["image folder has no .jpg/.jpeg/.png files", str(fuseg / "train" / "images")]


def _image_without_label(fuseg: Path) -> list[str]:
    label = _first(fuseg, "validation/labels")
    label.unlink()
    return ["image without mask", str(fuseg / "validation" / "images" / f"{label.stem}.jpg")]


def _label_without_image(fuseg: Path) -> list[str]:
    image = _first(fuseg, "train/images")
    image.unlink()
    return ["mask without image", str(fuseg / "train" / "labels" / f"{image.stem}.png")]


def _corrupt_image(fuseg: Path) -> list[str]:
    image = sorted((fuseg / "train" / "images").iterdir())[4]
    image.write_bytes(b"not a jpeg")
    return ["cannot read image", "corrupt", str(image)]


def _truncated_label(fuseg: Path) -> list[str]:
    label = _first(fuseg, "validation/labels")
    label.write_bytes(label.read_bytes()[:50])
    return ["cannot read mask", str(label)]


def _size_mismatch(fuseg: Path) -> list[str]:
    label = sorted((fuseg / "train" / "labels").iterdir())[2]
    Image.open(label).resize((64, 60)).save(label)
    return ["size mismatch", str(fuseg / "train" / "images" / f"{label.stem}.jpg"), str(label), "64x64", "64x60"]


def _wound_free_train_stem_also_in_validation(fuseg: Path) -> list[str]:
    """Both would be copied to test/images/<stem>.png."""
    stem = sorted(_wound_free_stems(fuseg, "train"))[0]
    validation_image = fuseg / "validation" / "images" / f"{stem}.jpg"
    validation_image.write_bytes((fuseg / "train" / "images" / f"{stem}.jpg").read_bytes())
    (fuseg / "validation" / "labels" / f"{stem}.png").write_bytes(
        (fuseg / "train" / "labels" / f"{stem}.png").read_bytes()
    )
    return ["duplicate image stem", str(fuseg / "train" / "images" / f"{stem}.jpg"), str(validation_image)]


BAD_INPUTS = [
    _missing_folder,
    _empty_folder,
    _image_without_label,
    _label_without_image,
    _corrupt_image,
    _truncated_label,
    _size_mismatch,
    _wound_free_train_stem_also_in_validation,
]


@pytest.mark.parametrize("break_input", BAD_INPUTS, ids=lambda function: function.__name__.strip("_"))
def test_bad_input_is_named_and_nothing_is_written(break_input, fuseg: Path, tmp_path: Path) -> None:
    expected_fragments = break_input(fuseg)
    output_dir = tmp_path / "out" / "prepared"
    assert_named_and_nothing_written(
        lambda: prepare_footulcer(fuseg, output_dir, size=16), expected_fragments, output_dir
    )


def test_validation_stems_may_repeat_train_stems_with_wounds(fuseg: Path, tmp_path: Path) -> None:
    """Copies go to train/ and test/ respectively, so only a clash inside one split is an error."""
    stem = Path(_prepare(fuseg, tmp_path / "before", size=16)["training"][0]["image"]).stem
    for folder, suffix in (("images", ".jpg"), ("labels", ".png")):
        source = fuseg / "train" / folder / f"{stem}{suffix}"
        (fuseg / "validation" / folder / source.name).write_bytes(source.read_bytes())
    datalist = _prepare(fuseg, tmp_path / "after", size=16)
    assert len(datalist["training"]) == N_TRAINING_ITEMS and len(datalist["test"]) == N_TEST_ITEMS + 1


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "scripts" / "prepare_data.py"), "footulcer", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)


def test_cli(fuseg: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "prepared"
    common = [f"--fuseg_dir={fuseg}", f"--output_dir={output_dir}", "--size=16"]
    finished = _run_cli(*common)
    assert finished.returncode == 0, finished.stderr
    assert f"{N_TRAINING_ITEMS} training and {N_TEST_ITEMS} test items" in finished.stdout
    assert json.loads((output_dir / "datalist.json").read_text())["name"] == "footulcer"

    corrupt_label = _first(fuseg, "train/labels")
    corrupt_label.write_bytes(b"")
    failed = _run_cli(*common, "--overwrite")
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: cannot read mask") and str(corrupt_label) in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr
    assert json.loads((output_dir / "datalist.json").read_text())["size"] == 16  # previous output untouched


def _real_fuseg_dir() -> Path | None:
    root = os.environ.get("LESION_LOSS_DATA")
    return Path(root) / "fuseg" if root and (Path(root) / "fuseg").is_dir() else None


@pytest.mark.slow
@pytest.mark.skipif(_real_fuseg_dir() is None, reason="set LESION_LOSS_DATA to a folder with fuseg/")
def test_real_fuseg(tmp_path: Path) -> None:
    fuseg_dir = _real_fuseg_dir()
    assert fuseg_dir is not None
    datalist = _prepare(fuseg_dir, tmp_path / "footulcer", size=64)
    training, test = datalist["training"], datalist["test"]
    assert len(training) == 791 and not any(item["lesion_free"] for item in training)
    assert sorted(Counter(item["fold"] for item in training).values()) == [158, 158, 158, 158, 159]
    assert len(test) == 219 and sum(item["lesion_free"] for item in test) == 24
    assert Counter(item["source"] for item in test if item["lesion_free"]) == {
        "fuseg-train-wound-free": 19,
        "fuseg-validation": 5,
    }
