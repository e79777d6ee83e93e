"""How much lesion survives a smaller training size? Wound pixels and whole wounds lost when masks are resized.

    python benchmarks/mask_resize_loss.py --mask_dir=FUSEG/train/labels --sizes=[128,192,256,384]

Each mask is resized as the 2D bundles resize labels (MONAI ``Resize``, nearest neighbour, from the mask
thresholded at 127.5) and compared with the mask at its own size: the share of the lesion area kept
(area at the small size scaled back by the pixel ratio), the share of lesions (8-connected components)
that vanish entirely, and of images whose whole lesion vanishes. Prints one JSON line per size.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire
import numpy as np
import torch
from monai.transforms import Resize
from PIL import Image
from scipy import ndimage

MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def resize_loss(masks: list[np.ndarray], size: int) -> dict:
    """Lesion area kept and lesions lost at ``size`` x ``size`` over binary masks (H, W)."""
    resize = Resize((size, size), mode="nearest")
    kept_area = full_area = lost_components = components = lost_images = images_with_lesion = 0.0
    for mask in masks:
        if not mask.any():
            continue
        small = resize(torch.from_numpy(mask[None].astype(np.float32)))[0].numpy() > 0.5
        full_area += mask.sum()
        kept_area += small.sum() * mask.size / small.size
        images_with_lesion += 1
        lost_images += not small.any()
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        components += count
        # a lesion vanishes when no pixel of the small mask maps back into it
        back = resize_back(small, mask.shape)
        lost_components += count - len(set(np.unique(labels[back])) - {0})
    return {
        "size": size,
        "images_with_lesion": int(images_with_lesion),
        "area_kept": kept_area / full_area if full_area else None,
        "lesions": int(components),
        "lesions_lost": int(lost_components),
        "lesions_lost_share": lost_components / components if components else None,
        "images_lost": int(lost_images),
    }


def resize_back(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return Resize(shape, mode="nearest")(torch.from_numpy(small[None].astype(np.float32)))[0].numpy() > 0.5


def main(mask_dir: str, sizes: list[int] | int = (128, 192, 256, 384)) -> None:
    """Measure lesion loss of the masks in ``mask_dir`` (PNG/JPEG/BMP/TIFF, thresholded at 127.5)."""
    paths = sorted(p for p in Path(mask_dir).iterdir() if p.suffix.lower() in MASK_SUFFIXES)
    if not paths:
        sys.exit(f"error: {mask_dir} holds no mask files ({', '.join(MASK_SUFFIXES)})")
    masks = [np.asarray(Image.open(p).convert("L")) > 127.5 for p in paths]
    shapes = sorted({m.shape for m in masks})
    print(json.dumps({"mask_dir": str(mask_dir), "masks": len(masks), "shapes": [list(s) for s in shapes[:5]]}))
    for size in [sizes] if isinstance(sizes, int) else sizes:
        print(json.dumps(resize_loss(masks, int(size))), flush=True)


if __name__ == "__main__":
    fire.Fire(main)
