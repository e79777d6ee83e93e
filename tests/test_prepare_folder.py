"""`prepare_data.py folder`: any 2D binary lesion dataset in the common file formats and layouts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from custom_losses.data import fold_split
from lesion_study.prepare.common import DataPreparationError
from lesion_study.prepare.folder import binary_mask, prepare_folder
from tests.test_prepare_data import assert_named_and_nothing_written

REPO = Path(__file__).resolve().parents[1]


def frame(rng: np.random.Generator, lesion: bool, shape=(48, 56)) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 255, size=(*shape, 3), dtype=np.uint8)
    mask = np.zeros(shape, dtype=bool)
    if lesion:
        top, left = rng.integers(4, 20, size=2)
        mask[top : top + 16, left : left + 20] = True
        image[mask] = [200, 40, 40]
    return image, mask


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array, rowsperstrip=8)  # several strips, as CVC-ClinicDB's frames
    else:
        Image.fromarray(array).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


def tiff_dataset(root: Path) -> dict[str, Path]:
    """images/ + masks/ layout: multi-strip TIFF frames, BMP 0/1 masks; lesion-free frames without masks."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for i in range(count):
            image, mask = frame(rng, lesion=True)
            write(root / split / "images" / f"{i}.tif", image)
            write(root / split / "masks" / f"{i}.bmp", mask.astype(np.uint8))
    for i in range(3):
        write(root / "normal" / f"n{i}.tif", frame(rng, lesion=False)[0][..., 0])  # grayscale
    return {"train_dir": root / "train", "test_dir": root / "test", "lesion_free_dir": root / "normal"}


def suffix_dataset(root: Path) -> dict[str, Path]:
    """Side by side, masks named <stem>_mask: JPEG frames, PNG 0/255 masks; lesion-free frames with empty masks."""
    rng = np.random.default_rng(1)
    for split, count in (("train", 11), ("test", 3)):
        for i in range(count):
            image, mask = frame(rng, lesion=True)
            write(root / split / f"case{i}.jpg", image)
            write(root / split / f"case{i}_mask.png", mask.astype(np.uint8) * 255)
    image, mask = frame(rng, lesion=False)
    write(root / "train" / "empty.jpg", image)  # an empty training mask: tested as lesion-free instead
    write(root / "train" / "empty_mask.png", mask.astype(np.uint8))
    for i in range(2):
        image, mask = frame(rng, lesion=False)
        write(root / "free" / f"f{i}.png", image)
        write(root / "free" / f"f{i}_mask.png", mask.astype(np.uint8))
    return {"train_dir": root / "train", "test_dir": root / "test", "lesion_free_dir": root / "free"}


def test_tiff_frames_bmp_01_masks_and_lesion_free_images_without_masks(tmp_path):
    folders = tiff_dataset(tmp_path / "raw")
    datalist_path = prepare_folder(**folders, output_dir=tmp_path / "prepared", size=32, name="tiffs")
    datalist = json.loads(datalist_path.read_text())
    assert datalist["name"] == "tiffs" and datalist["mask_rule"] == "auto" and datalist["size"] == 32
    assert len(datalist["training"]) == 12 and sorted({i["fold"] for i in datalist["training"]}) == [1, 2, 3, 4, 5]
    test = datalist["test"]
    assert [i["lesion_free"] for i in test] == [False] * 4 + [True] * 3
    assert [i["source"] for i in test[-3:]] == ["lesion-free"] * 3
    first = Image.open(tmp_path / "prepared" / datalist["training"][0]["label"])
    assert first.size == (32, 32) and set(np.unique(np.asarray(first))) == {0, 255}  # 0/1 read as binary
    free = np.asarray(Image.open(tmp_path / "prepared" / test[-1]["label"]))
    assert not free.any()
    assert Image.open(tmp_path / "prepared" / test[-1]["image"]).mode == "RGB"  # grayscale made RGB
    # the bundles' own checks accept it
    assert len(fold_split(datalist_path, tmp_path / "prepared", 1, "train")) > 0


def test_suffix_paired_jpeg_frames_and_empty_training_masks(tmp_path):
    folders = suffix_dataset(tmp_path / "raw")
    datalist = json.loads(
        prepare_folder(**folders, output_dir=tmp_path / "prepared", mask_suffix="_mask", size=32).read_text()
    )
    assert len(datalist["training"]) == 11
    sources = [(i["source"], i["lesion_free"]) for i in datalist["test"]]
    assert sources == [("test", False)] * 3 + [("lesion-free", True)] * 2 + [("train-lesion-free", True)]


def test_command_line_same_as_python(tmp_path):
    folders = suffix_dataset(tmp_path / "raw")
    command = [sys.executable, str(REPO / "scripts" / "prepare_data.py"), "folder", "--mask_suffix=_mask"]
    command += [f"--{key}={value}" for key, value in folders.items()] + [f"--output_dir={tmp_path / 'cli'}"]
    result = subprocess.run(command + ["--size=32"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    again = subprocess.run(command + ["--size=32"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1].startswith("error: output folder already prepared:")


def test_mask_rules():
    path = Path("m.png")
    assert binary_mask(np.array([[0, 255]], dtype=np.uint8), path, "auto").tolist() == [[False, True]]
    assert binary_mask(np.array([[0, 1]], dtype=np.uint8), path, "auto").tolist() == [[False, True]]
    jpeg = np.array([[0, 3, 130, 250]], dtype=np.uint8)
    assert binary_mask(jpeg, Path("m.jpg"), "auto").tolist() == [[False, False, True, True]]
    with pytest.raises(DataPreparationError, match=r"m.png has values \{0, 1, 255\}: .* ambiguous"):
        binary_mask(np.array([[0, 1, 255]], dtype=np.uint8), path, "auto")
    labels = np.array([[0, 1, 2, 200]], dtype=np.uint8)
    assert binary_mask(labels, path, "nonzero").tolist() == [[False, True, True, True]]
    assert binary_mask(labels, path, "threshold").tolist() == [[False, False, False, True]]
    rgb = np.stack([np.array([[0, 255]], dtype=np.uint8)] * 3, axis=-1)
    assert binary_mask(rgb, path, "auto").tolist() == [[False, True]]  # RGB with equal channels


def _mask_of_another_size(folders):
    write(folders["train_dir"] / "masks" / "3.bmp", np.zeros((20, 20), dtype=np.uint8))
    return ["size mismatch", "3.bmp is 20x20"]


def _truncated_image(folders):
    path = folders["train_dir"] / "images" / "2.tif"
    path.write_bytes(path.read_bytes()[:300])
    return ["2.tif", "corrupt"]


def _ambiguous_mask(folders):
    mask = np.zeros((48, 56), dtype=np.uint8)
    mask[:4, :4], mask[10:20, 10:20] = 1, 255
    write(folders["test_dir"] / "masks" / "1.bmp", mask)
    return ["1.bmp has values {0, 1, 255}", "--mask_rule"]


def _image_without_mask(folders):
    (folders["train_dir"] / "masks" / "5.bmp").unlink()
    return ["image without mask", "5.tif"]


def _lesion_free_mask_with_a_lesion(folders):
    mask = np.zeros((48, 56), dtype=np.uint8)
    mask[5:9, 5:9] = 255
    write(folders["lesion_free_dir"] / "masks" / "n0.png", mask)
    (folders["lesion_free_dir"] / "images").mkdir()
    for path in folders["lesion_free_dir"].glob("*.tif"):
        path.rename(folders["lesion_free_dir"] / "images" / path.name)
    return ["mask of a lesion-free image is not empty", "n0.png"]


def _sixteen_bit_image(folders):
    tifffile.imwrite(folders["test_dir"] / "images" / "0.tif", np.zeros((48, 56), dtype=np.uint16))
    return ["0.tif has uint16 pixels"]


def _duplicate_stem(folders):
    write(folders["train_dir"] / "images" / "4.png", np.zeros((48, 56, 3), dtype=np.uint8))
    return ["duplicate image stem '4'", "4.png"]


def _side_by_side_without_suffix(folders):
    for path in (folders["test_dir"] / "masks").iterdir():
        path.unlink()
    (folders["test_dir"] / "masks").rmdir()
    for path in (folders["test_dir"] / "images").iterdir():
        path.rename(folders["test_dir"] / path.name)
    (folders["test_dir"] / "images").rmdir()
    return ["has no images/ subfolder", "--mask_suffix"]


@pytest.mark.parametrize(
    "break_input",
    [
        _mask_of_another_size,
        _truncated_image,
        _ambiguous_mask,
        _image_without_mask,
        _lesion_free_mask_with_a_lesion,
        _sixteen_bit_image,
        _side_by_side_without_suffix,
        _duplicate_stem,
    ],
    ids=lambda function: function.__name__.strip("_"),
)
def test_bad_input_is_named_and_nothing_is_written(break_input, tmp_path):
    folders = tiff_dataset(tmp_path / "raw")
    fragments = break_input(folders)
    output_dir = tmp_path / "out" / "prepared"
    assert_named_and_nothing_written(
        lambda: prepare_folder(**folders, output_dir=output_dir, size=32), fragments, output_dir
    )


@pytest.mark.slow
def test_readme_walkthrough_from_folders_to_a_report(tmp_path):
    """docs/own_data.md's "your own 2D dataset" commands, as written, on a tiny dataset (tiny training settings)."""
    folders = suffix_dataset(tmp_path / "raw")
    prepare = [sys.executable, str(REPO / "scripts" / "prepare_data.py"), "folder", "--mask_suffix=_mask"]
    prepare += [f"--{key}={value}" for key, value in folders.items()]
    prepare += [f"--output_dir={tmp_path / 'data'}", "--size=64"]
    assert subprocess.run(prepare, capture_output=True, text=True, timeout=120).returncode == 0
    study = [sys.executable, str(REPO / "scripts" / "run_study.py"), "polyp", f"--data_dir={tmp_path / 'data'}"]
    study += [f"--output_dir={tmp_path / 'study'}", "--device=cpu", "--bundles=[ce,dice]", "--epochs=1"]
    study += ["--batch_size=4", "--val_batch_size=4", "--num_workers=0", "--image_size=64"]
    result = subprocess.run(study, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = (tmp_path / "study" / "results.md").read_text()
    assert "### Paired differences to ce" in report and "| dice | 1 |" in report
