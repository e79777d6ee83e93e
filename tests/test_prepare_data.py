"""Tests of scripts/prepare_data.py on tiny synthetic layouts (and on the real data when LESION_LOSS_DATA is set)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from PIL import Image

from lesion_study.prepare.common import DataPreparationError, pair_images_and_masks
from lesion_study.prepare.datasets import prepare_polyp
from lesion_study.synthetic import make_lesion_image, write_endotect_layout, write_kvasir_layout

REPO_ROOT = Path(__file__).resolve().parents[1]
N_KVASIR, N_ENDOTECT_LESION, N_ENDOTECT_LESION_FREE = 20, 6, 3


@pytest.fixture
def layouts(tmp_path: Path) -> tuple[Path, Path]:
    """Tiny Kvasir-SEG and EndoTect layouts in tmp_path."""
    kvasir = write_kvasir_layout(tmp_path / "kvasir-seg", n_images=N_KVASIR, size=(48, 40), seed=0)
    endotect = write_endotect_layout(
        tmp_path / "endotect-test", n_lesion=N_ENDOTECT_LESION, n_lesion_free=N_ENDOTECT_LESION_FREE, seed=1
    )
    return kvasir, endotect


def _prepare(layouts: tuple[Path, Path], output_dir: Path, **kwargs) -> dict:
    datalist_path = prepare_polyp(layouts[0], layouts[1], output_dir, **kwargs)
    assert datalist_path == output_dir / "datalist.json"
    return json.loads(datalist_path.read_text())


def _leftovers(parent: Path) -> list[str]:
    """Temporary folders left next to the output folder."""
    return sorted(path.name for path in parent.iterdir() if ".tmp-" in path.name or ".old-" in path.name)


def test_make_lesion_image_shapes_and_determinism() -> None:
    rgb, mask = make_lesion_image(np.random.default_rng(3), (50, 30))
    assert rgb.shape == (30, 50, 3) and rgb.dtype == np.uint8
    assert mask.shape == (30, 50) and mask.dtype == bool and mask.any()
    again_rgb, again_mask = make_lesion_image(np.random.default_rng(3), (50, 30))
    assert np.array_equal(rgb, again_rgb) and np.array_equal(mask, again_mask)
    assert rgb[mask].mean() > rgb[~mask].mean()  # the lesion stands out
    _, empty_mask = make_lesion_image(np.random.default_rng(3), (50, 30), with_lesion=False)
    assert not empty_mask.any()


def test_prepare_resized(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    output_dir = tmp_path / "prepared"
    datalist = _prepare(layouts, output_dir, size=32)
    assert datalist["name"] == "polyp" and datalist["num_folds"] == 5 and datalist["seed"] == 0
    assert datalist["size"] == 32

    training, test = datalist["training"], datalist["test"]
    assert len(training) == N_KVASIR and len(test) == N_ENDOTECT_LESION + N_ENDOTECT_LESION_FREE
    assert Counter(item["fold"] for item in training) == {fold: N_KVASIR // 5 for fold in range(1, 6)}
    assert not any(item["lesion_free"] for item in training)
    assert [item["lesion_free"] for item in test] == [False] * N_ENDOTECT_LESION + [True] * N_ENDOTECT_LESION_FREE
    assert {item["source"] for item in test} == {"endotect", "endotect-ulcerative-colitis"}

    for item in training + test:
        assert not Path(item["image"]).is_absolute() and item["image"].endswith(".png")
        image = Image.open(output_dir / item["image"])
        mask = Image.open(output_dir / item["label"])
        assert image.mode == "RGB" and image.size == (32, 32)
        assert mask.mode == "L" and mask.size == (32, 32)
        mask_values = set(np.unique(np.asarray(mask)).tolist())
        assert mask_values <= {0, 255}
        assert (255 in mask_values) != item["lesion_free"]

    loaded = load_decathlon_datalist(output_dir / "datalist.json", data_list_key="training", base_dir=output_dir)
    assert len(loaded) == N_KVASIR and all(Path(item["label"]).exists() for item in loaded)
    loaded_test = load_decathlon_datalist(output_dir / "datalist.json", data_list_key="test", base_dir=output_dir)
    assert all(Path(item["image"]).exists() for item in loaded_test)
    assert _leftovers(tmp_path) == []


def test_prepare_without_resizing_points_at_originals(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    output_dir = tmp_path / "prepared"
    datalist = _prepare(layouts, output_dir, size=None)
    assert sorted(path.name for path in output_dir.iterdir()) == ["datalist.json"]
    assert datalist["size"] is None
    for item in datalist["training"] + datalist["test"]:
        assert Path(item["image"]).is_absolute() and Path(item["image"]).exists()
        assert Path(item["label"]).is_relative_to(layouts[0] if item["source"] == "kvasir-seg" else layouts[1])
    loaded = load_decathlon_datalist(output_dir / "datalist.json", data_list_key="training", base_dir=output_dir)
    assert [item["image"] for item in loaded] == [item["image"] for item in datalist["training"]]


def test_folds_are_deterministic(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    def folds(name: str, seed: int) -> list[int]:
        datalist = _prepare(layouts, tmp_path / name, size=16, seed=seed)
        return [item["fold"] for item in datalist["training"]]

    first = folds("first", seed=0)
    assert folds("second", seed=0) == first
    assert folds("other-seed", seed=7) != first


def test_num_folds_balance(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    datalist = _prepare(layouts, tmp_path / "prepared", size=16, num_folds=3)
    assert sorted(Counter(item["fold"] for item in datalist["training"]).items()) == [(1, 7), (2, 7), (3, 6)]


def test_overwrite(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    output_dir = tmp_path / "prepared"
    _prepare(layouts, output_dir, size=16)
    with pytest.raises(DataPreparationError, match=r"already prepared: .*prepared.*--overwrite"):
        _prepare(layouts, output_dir, size=24)
    datalist = _prepare(layouts, output_dir, size=24, overwrite=True)
    assert datalist["size"] == 24
    assert Image.open(output_dir / datalist["training"][0]["image"]).size == (24, 24)
    assert _leftovers(tmp_path) == []


def test_refuses_to_replace_unrelated_folder(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    output_dir = tmp_path / "notes"
    output_dir.mkdir()
    (output_dir / "keep.txt").write_text("mine")
    with pytest.raises(DataPreparationError, match="not empty and has no datalist.json"):
        _prepare(layouts, output_dir, size=16, overwrite=True)
    assert (output_dir / "keep.txt").read_text() == "mine"


def test_pairing_accepts_jpg_jpeg_png(tmp_path: Path) -> None:
    rgb, mask = make_lesion_image(np.random.default_rng(0), (20, 16))
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for stem, image_suffix, mask_suffix in [("a", ".png", ".png"), ("b", ".jpeg", ".png"), ("c", ".JPG", ".jpg")]:
        Image.fromarray(rgb).save(tmp_path / "images" / f"{stem}{image_suffix}", format="PNG")
        Image.fromarray(mask).save(tmp_path / "labels" / f"{stem}{mask_suffix}", format="PNG")
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    pairs = pair_images_and_masks(tmp_path / "images", tmp_path / "labels")
    assert [(image.name, mask.name) for image, mask in pairs] == [
        ("a.png", "a.png"),
        ("b.jpeg", "b.png"),
        ("c.JPG", "c.jpg"),
    ]


def _remove_folder(root: Path, folder: str) -> Path:
    for path in (root / folder).iterdir():
        path.unlink()
    (root / folder).rmdir()
    return root / folder


def _first(root: Path, folder: str) -> Path:
    return sorted((root / folder).iterdir())[0]


def _missing_folder(kvasir: Path, endotect: Path) -> list[str]:
    return ["folder not found", str(_remove_folder(kvasir, "masks"))]


def _empty_folder(kvasir: Path, endotect: Path) -> list[str]:
    for path in (endotect / "ulcerative-colitis_images").iterdir():
        path.unlink()
    return ["no .jpg/.jpeg/.png files", str(endotect / "ulcerative-colitis_images")]


def _image_without_mask(kvasir: Path, endotect: Path) -> list[str]:
    mask = _first(endotect, "masks")
    mask.unlink()
    return ["image without mask", str(endotect / "images" / f"{mask.stem}.jpg")]


def _mask_without_image(kvasir: Path, endotect: Path) -> list[str]:
    image = _first(kvasir, "images")
    image.unlink()
    return ["mask without image", str(kvasir / "masks" / image.name)]


def _corrupt_image(kvasir: Path, endotect: Path) -> list[str]:
    image = sorted((kvasir / "images").iterdir())[5]
    image.write_bytes(b"not a jpeg at all")
    return ["cannot read image", "corrupt", str(image)]


def _truncated_mask(kvasir: Path, endotect: Path) -> list[str]:
    mask = _first(endotect, "masks")
    mask.write_bytes(mask.read_bytes()[:60])
    return ["cannot read mask", str(mask)]


def _size_mismatch(kvasir: Path, endotect: Path) -> list[str]:
    mask = sorted((kvasir / "masks").iterdir())[3]
    image = kvasir / "images" / mask.name
    width, height = Image.open(image).size
    Image.open(mask).resize((width + 3, height)).save(mask)
    return ["size mismatch", str(image), str(mask), f"{width}x{height}", f"{width + 3}x{height}"]


def _duplicate_stem(kvasir: Path, endotect: Path) -> list[str]:
    image = _first(kvasir, "images")
    Image.open(image).save(image.with_suffix(".png"))
    return ["duplicate image stem", str(image), str(image.with_suffix(".png"))]


def _duplicate_stem_across_test_folders(kvasir: Path, endotect: Path) -> list[str]:
    image, mask = _first(endotect, "images"), _first(endotect, "masks")
    (endotect / "ulcerative-colitis_images" / image.name).write_bytes(image.read_bytes())
    Image.new("L", Image.open(image).size).save(endotect / "ulcerative-colitis_masks" / mask.name)
    return ["duplicate image stem", str(image), str(endotect / "ulcerative-colitis_images" / image.name)]


def _lesion_in_lesion_free_frame(kvasir: Path, endotect: Path) -> list[str]:
    mask = _first(endotect, "ulcerative-colitis_masks")
    Image.new("L", Image.open(mask).size, color=255).save(mask)
    return ["lesion-free frame is not empty", str(mask)]


BAD_INPUTS = [
    _missing_folder,
    _empty_folder,
    _image_without_mask,
    _mask_without_image,
    _corrupt_image,
    _truncated_mask,
    _size_mismatch,
    _duplicate_stem,
    _duplicate_stem_across_test_folders,
    _lesion_in_lesion_free_frame,
]


def assert_named_and_nothing_written(prepare: Callable[[], object], expected_fragments: list[str], output_dir: Path):
    """``prepare()`` fails with a one-line DataPreparationError naming every fragment and writes nothing."""
    with pytest.raises(DataPreparationError) as raised:
        prepare()
    message = str(raised.value)
    assert "\n" not in message
    for fragment in expected_fragments:
        assert fragment in message
    assert not output_dir.exists() and not output_dir.parent.exists()


@pytest.mark.parametrize("break_input", BAD_INPUTS, ids=lambda function: function.__name__.strip("_"))
def test_bad_input_is_named_and_nothing_is_written(break_input, layouts: tuple[Path, Path], tmp_path: Path) -> None:
    expected_fragments = break_input(*layouts)
    output_dir = tmp_path / "out" / "prepared"
    assert_named_and_nothing_written(
        lambda: prepare_polyp(*layouts, output_dir, size=16), expected_fragments, output_dir
    )


def test_failure_while_writing_leaves_nothing(
    layouts: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("lesion_study.prepare.common.move_into_place", disk_full)
    with pytest.raises(OSError, match="No space left"):
        prepare_polyp(*layouts, tmp_path / "prepared", size=16)
    assert not (tmp_path / "prepared").exists() and _leftovers(tmp_path) == []


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "scripts" / "prepare_data.py"), "polyp", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)


def test_cli(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    kvasir, endotect = layouts
    output_dir = tmp_path / "prepared"
    common = [f"--kvasir_dir={kvasir}", f"--endotect_dir={endotect}", f"--output_dir={output_dir}", "--size=16"]
    finished = _run_cli(*common)
    assert finished.returncode == 0, finished.stderr
    assert "20 training and 9 test items" in finished.stdout
    assert len(json.loads((output_dir / "datalist.json").read_text())["training"]) == N_KVASIR

    corrupt_mask = sorted((kvasir / "masks").iterdir())[0]
    corrupt_mask.write_bytes(b"")
    failed = _run_cli(*common, "--overwrite")
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: cannot read mask") and str(corrupt_mask) in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr
    assert json.loads((output_dir / "datalist.json").read_text())["size"] == 16  # previous output untouched


def _real_data_dir() -> Path | None:
    root = os.environ.get("LESION_LOSS_DATA")
    if root and (Path(root) / "kvasir-seg").is_dir() and (Path(root) / "endotect-test").is_dir():
        return Path(root)
    return None


@pytest.mark.slow
@pytest.mark.skipif(
    _real_data_dir() is None, reason="set LESION_LOSS_DATA to a folder with kvasir-seg/, endotect-test/"
)
def test_real_kvasir_and_endotect(tmp_path: Path) -> None:
    data_dir = _real_data_dir()
    assert data_dir is not None
    datalist = json.loads(
        prepare_polyp(data_dir / "kvasir-seg", data_dir / "endotect-test", tmp_path / "polyp", size=64).read_text()
    )
    assert len(datalist["training"]) == 1000
    assert Counter(item["fold"] for item in datalist["training"]) == {fold: 200 for fold in range(1, 6)}
    assert not any(item["lesion_free"] for item in datalist["training"])
    assert len(datalist["test"]) == 220
    assert sum(item["lesion_free"] for item in datalist["test"]) == 20


def test_lesion_free_folders_are_optional_but_not_half_present(tmp_path):
    kvasir = write_kvasir_layout(tmp_path / "kvasir", n_images=10)
    endotect = write_endotect_layout(tmp_path / "endotect", n_lesion=3, n_lesion_free=2)
    for folder in ("ulcerative-colitis_images", "ulcerative-colitis_masks"):
        shutil.rmtree(endotect / folder)
    datalist = json.loads(prepare_polyp(kvasir, endotect, tmp_path / "out", size=32).read_text())
    assert len(datalist["test"]) == 3 and not any(item["lesion_free"] for item in datalist["test"])
    (endotect / "ulcerative-colitis_images").mkdir()
    with pytest.raises(DataPreparationError, match="ulcerative-colitis_images .and 1 more problem"):
        prepare_polyp(kvasir, endotect, tmp_path / "out2", size=32)
