"""The demo's synthetic lesion dataset, written in the Kvasir-SEG and EndoTect layouts.

Harder than the test fixtures on purpose, so the losses can differ:

- lesions of random size and random contrast (some barely differ from the background);
- uncertain borders: the image fades from lesion to background over a wide band and the annotated
  border is drawn at a random place inside that band (annotators disagree on the same image);
- lesion-free test frames that hold lesion-like "mimics" (reddish low-contrast patches without a label),
  like the ulcerative-colitis frames of EndoTect: a model trained only on frames with a lesion has to
  learn that a frame may hold none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lesion_study.synthetic import _ellipse_distance, _smooth_noise, _textured_background


def make_demo_image(
    rng: np.random.Generator, size: tuple[int, int], with_lesion: bool, mimic_probability: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """One RGB frame (height, width, 3) uint8 and its bool mask; ``size`` is (width, height)."""
    width, height = size
    rgb = _textured_background(rng, size)
    mask = np.zeros((height, width), dtype=bool)
    num_lesions = int(rng.integers(1, 3)) if with_lesion else 0
    num_mimics = int(rng.random() < mimic_probability) if not with_lesion else 0
    for index in range(num_lesions + num_mimics):
        distance = _ellipse_distance(rng, size)
        is_lesion = index < num_lesions
        contrast = rng.uniform(0.35, 1.0) if is_lesion else rng.uniform(0.2, 0.45)
        band = rng.uniform(0.15, 0.45)  # width of the fading border, in units of the semi-axis
        weight = contrast * np.clip((1.0 + band / 2 - distance) / band, 0.0, 1.0)[..., None]
        colour = np.array([225, 140, 115], dtype=np.float32) + rng.uniform(-25, 25, 3).astype(np.float32)
        texture = 25.0 * (_smooth_noise(rng, size, cells=4)[..., None] - 0.5)
        rgb = (1.0 - weight) * rgb + weight * (colour + texture)
        if is_lesion:
            mask |= distance < rng.uniform(1.0 - band / 2, 1.0 + band / 2)  # where this annotator drew it
    if with_lesion and not mask.any():
        mask[height // 2, width // 2] = True
    return np.clip(rgb, 0, 255).astype(np.uint8), mask


def _write_pair(rgb: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    Image.fromarray(rgb).save(image_path, quality=95)
    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)


def write_demo_layouts(
    root: str | Path,
    num_train: int = 150,
    num_test_lesion: int = 60,
    num_test_lesion_free: int = 20,
    size: tuple[int, int] = (80, 72),
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``root/kvasir`` (training frames, all with a lesion) and ``root/endotect`` (test frames, with a
    lesion or lesion-free); returns the two folders, ready for ``prepare_data.prepare_polyp``."""
    root = Path(root)
    kvasir, endotect = root / "kvasir", root / "endotect"
    folders = [kvasir / "images", kvasir / "masks"]
    folders += [endotect / f for f in ("images", "masks", "ulcerative-colitis_images", "ulcerative-colitis_masks")]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(num_train):
        rgb, mask = make_demo_image(rng, size, with_lesion=True)
        _write_pair(rgb, mask, kvasir / "images" / f"train{index:04d}.jpg", kvasir / "masks" / f"train{index:04d}.png")
    for index in range(num_test_lesion):
        rgb, mask = make_demo_image(rng, size, with_lesion=True)
        _write_pair(
            rgb, mask, endotect / "images" / f"test{index:04d}.jpg", endotect / "masks" / f"test{index:04d}.png"
        )
    for index in range(num_test_lesion_free):
        rgb, mask = make_demo_image(rng, size, with_lesion=False, mimic_probability=0.7)
        name = f"free{index:04d}"
        _write_pair(
            rgb,
            mask,
            endotect / "ulcerative-colitis_images" / f"{name}.jpg",
            endotect / "ulcerative-colitis_masks" / f"{name}.png",
        )
    return kvasir, endotect
