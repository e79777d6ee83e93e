"""Synthetic datasets written in the official on-disk layouts of Kvasir-SEG, EndoTect, FUSeg and Decathlon Task04.

Used by the tests and by demos that must run without the real data. Everything is deterministic given `seed`
and needs only numpy, pillow and (for the 3D volumes) nibabel. Sizes are `(width, height)` as in PIL; arrays are
`height x width`.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "make_lesion_image",
    "write_endotect_layout",
    "write_fuseg_layout",
    "write_hippocampus_layout",
    "write_kvasir_layout",
]


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], shape (height, width): a coarse random grid upsampled bicubically."""
    width, height = size
    coarse = rng.random((cells, cells)).astype(np.float32)
    upsampled = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(upsampled), 0.0, 1.0)


def _textured_background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Pinkish mucosa-like texture, float32 (height, width, 3) in [0, 255]."""
    width, height = size
    base_colour = np.array([170, 80, 70], dtype=np.float32) + rng.uniform(-20, 20, size=3).astype(np.float32)
    shading = 0.75 + 0.5 * _smooth_noise(rng, size, cells=3)  # slow illumination changes
    texture = _smooth_noise(rng, size, cells=max(4, min(width, height) // 6)) - 0.5  # vessels / folds
    fine_grain = rng.normal(0.0, 6.0, size=(height, width, 1)).astype(np.float32)
    return base_colour * shading[..., None] + 40.0 * texture[..., None] + fine_grain


def _ellipse_distance(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Normalised elliptic distance (< 1 inside) of a random rotated ellipse lying mostly inside the image."""
    width, height = size
    short_side = min(width, height)
    centre_x = rng.uniform(0.25, 0.75) * width
    centre_y = rng.uniform(0.25, 0.75) * height
    semi_axis_a = max(2.0, rng.uniform(0.10, 0.25) * short_side)
    semi_axis_b = max(2.0, semi_axis_a * rng.uniform(0.6, 1.0))
    angle = rng.uniform(0.0, np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = xs + 0.5 - centre_x, ys + 0.5 - centre_y
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / semi_axis_a
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / semi_axis_b
    return np.sqrt(u * u + v * v)


def make_lesion_image(
    rng: np.random.Generator, size: tuple[int, int], with_lesion: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Make one synthetic frame: a textured background with one or two elliptic lesions (or none).

    Args:
        rng: numpy random generator (the only source of randomness).
        size: (width, height) in pixels.
        with_lesion: if False, the frame is background only and the mask is all False.

    Returns:
        (rgb, mask): uint8 array (height, width, 3) and bool array (height, width), True on the lesion.
    """
    width, height = size
    rgb = _textured_background(rng, size)
    mask = np.zeros((height, width), dtype=bool)
    if with_lesion:
        num_lesions = 1 if rng.random() < 0.75 else 2
        for _ in range(num_lesions):
            distance = _ellipse_distance(rng, size)
            # blurred border: full lesion colour inside 0.85, fading to background by 1.15
            weight = np.clip((1.15 - distance) / 0.3, 0.0, 1.0)[..., None]
            lesion_colour = np.array([225, 150, 120], dtype=np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)
            lesion_texture = 25.0 * (_smooth_noise(rng, size, cells=4)[..., None] - 0.5)
            rgb = (1.0 - weight) * rgb + weight * (lesion_colour + lesion_texture)
            mask |= distance < 1.0
        if not mask.any():  # tiny images: make sure the lesion covers at least one pixel
            mask[height // 2, width // 2] = True
    return np.clip(rgb, 0, 255).astype(np.uint8), mask


def _frame_size(rng: np.random.Generator, size: tuple[int, int], vary_size: bool) -> tuple[int, int]:
    """`size`, or up to about 15% larger/smaller on each side when `vary_size`."""
    if not vary_size:
        return size
    width, height = size
    return (
        max(8, int(round(width * rng.uniform(0.85, 1.15)))),
        max(8, int(round(height * rng.uniform(0.85, 1.15)))),
    )


def _jpeg_mask(mask: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Mask as an RGB image with a slightly blurred edge, to be saved as JPEG like the real Kvasir-SEG masks."""
    grey = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(0.6))
    return Image.merge("RGB", [grey, grey, grey]) if rng.random() < 0.8 else grey


def write_kvasir_layout(
    root: str | Path,
    n_images: int = 20,
    size: tuple[int, int] = (48, 40),
    seed: int = 0,
    vary_size: bool = True,
) -> Path:
    """Write a Kvasir-SEG-like dataset: `root/images/<name>.jpg` and `root/masks/<name>.jpg`, every frame a lesion.

    Masks are JPEG (mostly RGB), so like the real ones their values are not strictly 0/255. With `vary_size`
    the frame sizes vary a little around `size` (width, height). Returns `root`.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(n_images):
        name = f"kvasir{seed:02d}_{index:04d}"
        rgb, mask = make_lesion_image(rng, _frame_size(rng, size, vary_size), with_lesion=True)
        Image.fromarray(rgb).save(root / "images" / f"{name}.jpg", quality=90)
        _jpeg_mask(mask, rng).save(root / "masks" / f"{name}.jpg", quality=90)
    return root


def write_endotect_layout(
    root: str | Path,
    n_lesion: int = 8,
    n_lesion_free: int = 4,
    size: tuple[int, int] = (48, 40),
    seed: int = 1,
    vary_size: bool = False,
) -> Path:
    """Write an EndoTect-test-like dataset and return `root`.

    `root/images/*.jpg` + `root/masks/*.png` (RGB, 0/255) hold frames with lesions;
    `root/ulcerative-colitis_images/*.jpg` + `root/ulcerative-colitis_masks/*.png` (L, all zero) hold lesion-free
    frames. Sizes are (width, height), varying a little when `vary_size`.
    """
    root = Path(root)
    folders = ["images", "masks", "ulcerative-colitis_images", "ulcerative-colitis_masks"]
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(n_lesion):
        name = f"endotect{seed:02d}_{index:04d}"
        rgb, mask = make_lesion_image(rng, _frame_size(rng, size, vary_size), with_lesion=True)
        Image.fromarray(rgb).save(root / "images" / f"{name}.jpg", quality=90)
        mask_rgb = np.repeat(mask[..., None], 3, axis=2).astype(np.uint8) * 255  # RGB like the real release
        Image.fromarray(mask_rgb).save(root / "masks" / f"{name}.png")
    for index in range(n_lesion_free):
        name = f"colitis{seed:02d}_{index:04d}"
        rgb, mask = make_lesion_image(rng, _frame_size(rng, size, vary_size), with_lesion=False)
        Image.fromarray(rgb).save(root / "ulcerative-colitis_images" / f"{name}.jpg", quality=90)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "ulcerative-colitis_masks" / f"{name}.png")
    return root


def _write_fuseg_split(
    folder: Path, numbers: list[int], n_empty: int, size: tuple[int, int], rng: np.random.Generator, image_ext: str
) -> None:
    """Write `folder/images/NNNN<image_ext>` and `folder/labels/NNNN.png` (L, 0/255); `n_empty` masks are empty."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    empty_indices = set(rng.choice(len(numbers), size=n_empty, replace=False).tolist())
    image_options = {"quality": 95} if image_ext.lower() in (".jpg", ".jpeg") else {}
    for index, number in enumerate(numbers):
        rgb, mask = make_lesion_image(rng, size, with_lesion=index not in empty_indices)
        Image.fromarray(rgb).save(folder / "images" / f"{number:04d}{image_ext}", **image_options)
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "labels" / f"{number:04d}.png")


def write_fuseg_layout(
    root: str | Path,
    n_train: int = 12,
    n_train_empty: int = 2,
    n_validation: int = 6,
    n_validation_empty: int = 2,
    size: tuple[int, int] = (64, 64),
    seed: int = 2,
    image_ext: str = ".jpg",
) -> Path:
    """Write a FUSeg-2021-like dataset and return `root`.

    `root/train/images/NNNN<image_ext>` + `root/train/labels/NNNN.png` hold `n_train` pairs, of which
    `n_train_empty` have an empty (wound-free) mask; likewise `root/validation/`. Masks are L PNG, 0/255.
    The numbers NNNN interleave between the splits but never repeat, as in the real release. `image_ext` is
    ".jpg" (the shared copy) or ".png" (the official release).
    """
    if not (0 <= n_train_empty <= n_train and 0 <= n_validation_empty <= n_validation):
        raise ValueError("the empty counts must lie between 0 and the split sizes")
    root = Path(root)
    rng = np.random.default_rng(seed)
    numbers = (rng.permutation(n_train + n_validation) + 1).tolist()
    _write_fuseg_split(root / "train", sorted(numbers[:n_train]), n_train_empty, size, rng, image_ext)
    _write_fuseg_split(root / "validation", sorted(numbers[n_train:]), n_validation_empty, size, rng, image_ext)
    return root


def _hippocampus_volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An MRI-like float32 volume with a brighter ellipsoid, and its uint8 label: the ellipsoid's half with the
    smaller index along axis 1 is 1 (anterior), the other half 2 (posterior)."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) + 0.5 for n in shape], indexing="ij"))
    centre = np.array([rng.uniform(0.4, 0.6) * n for n in shape], dtype=np.float32)
    semi_axes = np.array([rng.uniform(0.2, 0.3) * n for n in shape], dtype=np.float32)
    offsets = (grid - centre[:, None, None, None]) / semi_axes[:, None, None, None]
    inside = (offsets**2).sum(axis=0) < 1.0
    label = np.zeros(shape, dtype=np.uint8)
    label[inside & (grid[1] < centre[1])] = 1
    label[inside & (grid[1] >= centre[1])] = 2
    image = rng.normal(100.0, 10.0, size=shape) + 60.0 * inside
    return image.astype(np.float32), label


def _save_nifti(data: np.ndarray, path: Path) -> None:
    """Save `data` as NIfTI with 1 mm isotropic voxels."""
    volume = nib.Nifti1Image(data, np.eye(4))
    volume.header.set_xyzt_units("mm", "sec")
    nib.save(volume, path)


def write_hippocampus_layout(
    root: str | Path,
    n_volumes: int = 10,
    shape: tuple[int, int, int] = (12, 16, 12),
    seed: int = 3,
    decathlon: bool = False,
) -> Path:
    """Write a hippocampus-like dataset of small NIfTI volumes (1 mm voxels) and return `root`.

    Shared layout: `root/images/hippocampus_NNN.nii.gz` + `root/labels/hippocampus_NNN.nii.gz` (same names; the
    numbers have gaps, as in the real data). With `decathlon`, the Decathlon Task04 release layout instead:
    `imagesTr/` + `labelsTr/`, two unlabelled volumes in `imagesTs/` and a minimal `dataset.json`.
    Images are float32, labels uint8 with 0 background, 1 anterior, 2 posterior.
    """
    root = Path(root)
    image_folder, label_folder = ("imagesTr", "labelsTr") if decathlon else ("images", "labels")
    for folder in (image_folder, label_folder):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    numbers = sorted(rng.choice(np.arange(1, 3 * n_volumes + 1), size=n_volumes, replace=False).tolist())
    names = [f"hippocampus_{number:03d}.nii.gz" for number in numbers]
    for name in names:
        image, label = _hippocampus_volume(rng, shape)
        _save_nifti(image, root / image_folder / name)
        _save_nifti(label, root / label_folder / name)
    if decathlon:
        (root / "imagesTs").mkdir(exist_ok=True)
        test_names = [f"hippocampus_{3 * n_volumes + offset:03d}.nii.gz" for offset in (1, 2)]
        for name in test_names:
            _save_nifti(_hippocampus_volume(rng, shape)[0], root / "imagesTs" / name)
        dataset = {
            "name": "Hippocampus",
            "tensorImageSize": "3D",
            "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
            "numTraining": len(names),
            "numTest": len(test_names),
            "training": [{"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"} for name in names],
            "test": [f"./imagesTs/{name}" for name in test_names],
        }
        (root / "dataset.json").write_text(json.dumps(dataset, indent=4) + "\n")
    return root


def write_prepared_polyp(
    root: str | Path,
    n_train: int = 20,
    n_lesion: int = 6,
    n_lesion_free: int = 4,
    size: tuple[int, int] = (80, 72),
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Kvasir/EndoTect-like layouts under ``root`` prepared by ``prepare_data.prepare_polyp``; returns the
    prepared folder (``datalist.json`` inside), ready as a bundle's ``dataset_dir``."""
    from lesion_study.prepare.datasets import prepare_polyp

    root = Path(root)
    write_kvasir_layout(root / "kvasir", n_images=n_train, size=size, seed=seed)
    write_endotect_layout(root / "endotect", n_lesion=n_lesion, n_lesion_free=n_lesion_free, size=size, seed=seed + 1)
    prepare_polyp(root / "kvasir", root / "endotect", root / "prepared", size=image_size)
    return root / "prepared"
