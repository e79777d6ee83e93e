"""Random augmentation of a whole 2D batch on its device, as a MONAI ``prepare_batch``.

MONAI's random transforms work one image at a time in Python: the bundles' chain (two flips, rotation and
scaling, colour jitter) costs 11 to 16 ms per 352x352 image on one CPU core, so a GPU that trains 800
images/s would need about nine busy data-loader processes to keep up. ``BatchAugmentation`` draws the same
distributions per image but applies them to the batch at once, with one ``grid_sample`` and a few
element-wise operations on the GPU, after the cached batch is on the device.

The parameters follow MONAI's transforms, in the bundles' order:

- ``RandFlipd`` on each spatial axis with ``flip_prob``;
- ``RandAffined`` with ``affine_prob``: rotation by U(-rotate_range, rotate_range) radians about the centre,
  then per-axis scale 1 + U(-scale_range, scale_range); bilinear for the image, nearest for the label,
  zero padding;
- ``RandScaleIntensityd(channel_wise=True)``: each channel times 1 + U(-scale_intensity, scale_intensity);
- ``RandShiftIntensityd``: plus U(-shift_intensity, shift_intensity);
- ``RandAdjustContrastd``: gamma from U(*gamma) on the image's own min-max range.

Each of the last three applies with ``intensity_prob``. The random numbers come from torch's generator on the
batch's device, so ``monai.utils.set_determinism`` (or ``torch.manual_seed``) makes the augmentation
repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines.utils import PrepareBatch, default_prepare_batch
from monai.utils import convert_to_tensor

__all__ = ["BatchAugmentation", "sampling_matrices"]

_CONTRAST_EPSILON = 1e-7  # monai.transforms.AdjustContrast


def sampling_matrices(
    flips: torch.Tensor, angles: torch.Tensor, scales: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """``torch.nn.functional.affine_grid`` matrices (B, 2, 3) for flip, then rotation and scaling.

    Parameters are in MONAI's convention, axis 0 the rows and axis 1 the columns: ``flips`` (B, 2) booleans,
    ``angles`` (B,) radians, ``scales`` (B, 2). The result maps an output pixel to the input pixel it samples,
    like ``Compose([Flip(0), Flip(1), Affine(rotate_params, scale_params)])``.
    """
    cos, sin = torch.cos(angles), torch.sin(angles)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    flip_signs = 1.0 - 2.0 * flips.to(angles.dtype)
    # grid point p in centred pixel units samples the flipped image at R S p, i.e. the input at F R S p
    rows_cols = flip_signs[:, :, None] * rotation * scales[:, None, :]
    # affine_grid orders coordinates (x = column, y = row) and normalises each by its own size
    # (align_corners=False); built from the batch's own tensors, so nothing is copied to the device
    zeros = torch.zeros_like(angles)
    x_row = torch.stack([rows_cols[:, 1, 1], rows_cols[:, 1, 0] * (height / width), zeros], -1)
    y_row = torch.stack([rows_cols[:, 0, 1] * (width / height), rows_cols[:, 0, 0], zeros], -1)
    return torch.stack([x_row, y_row], 1)


class BatchAugmentation(PrepareBatch):
    """Move a batch to the device, then augment each image of it with its own random parameters.

    Use as ``SupervisedTrainer(prepare_batch=BatchAugmentation())`` on batches of (B, C, H, W) images and
    (B, 1, H, W) label maps; the label is resampled with nearest neighbour, so class indices stay exact.

    Args:
        flip_prob: probability of a flip, for each spatial axis independently.
        affine_prob: probability of a rotation and scaling.
        rotate_range: rotation angle drawn from U(-rotate_range, rotate_range), radians.
        scale_range: scale factor of each axis drawn from 1 + U(-scale_range, scale_range).
        intensity_prob: probability of each of the three intensity changes, independently.
        scale_intensity: channel-wise intensity factor drawn from 1 + U(-scale_intensity, scale_intensity).
        shift_intensity: intensity offset drawn from U(-shift_intensity, shift_intensity).
        gamma: (low, high) of the uniform contrast gamma.
    """

    def __init__(
        self,
        flip_prob: float = 0.5,
        affine_prob: float = 0.5,
        rotate_range: float = 0.5,
        scale_range: float = 0.2,
        intensity_prob: float = 0.5,
        scale_intensity: float = 0.15,
        shift_intensity: float = 0.1,
        gamma: Sequence[float] = (0.7, 1.5),
    ) -> None:
        for name, prob in (("flip_prob", flip_prob), ("affine_prob", affine_prob), ("intensity_prob", intensity_prob)):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {prob}")
        if len(gamma) != 2 or not 0.0 < gamma[0] <= gamma[1]:
            raise ValueError(f"gamma must be (low, high) with 0 < low <= high, got {gamma}")
        self.flip_prob, self.affine_prob, self.intensity_prob = flip_prob, affine_prob, intensity_prob
        self.rotate_range, self.scale_range = rotate_range, scale_range
        self.scale_intensity, self.shift_intensity = scale_intensity, shift_intensity
        self.gamma = (float(gamma[0]), float(gamma[1]))

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if label is None:
            raise ValueError("BatchAugmentation needs batches with a 'label'")
        return self.augment(image, label)

    def sample_parameters(self, batch_size: int, channels: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Per-image parameters, with identity values where a transform is not applied."""

        def uniform(*shape: int, low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(*shape, device=device)

        def applied(prob: float, *shape: int) -> torch.Tensor:
            return torch.rand(*shape, device=device) < prob

        affine = applied(self.affine_prob, batch_size)
        angles = uniform(batch_size, low=-self.rotate_range, high=self.rotate_range)
        scales = uniform(batch_size, 2, low=1.0 - self.scale_range, high=1.0 + self.scale_range)
        factors = uniform(batch_size, channels, low=1.0 - self.scale_intensity, high=1.0 + self.scale_intensity)
        offsets = uniform(batch_size, low=-self.shift_intensity, high=self.shift_intensity)
        gammas = uniform(batch_size, low=self.gamma[0], high=self.gamma[1])
        return {
            "flips": applied(self.flip_prob, batch_size, 2),
            "angles": torch.where(affine, angles, 0.0),
            "scales": torch.where(affine[:, None], scales, 1.0),
            "intensity_factors": torch.where(applied(self.intensity_prob, batch_size)[:, None], factors, 1.0),
            "offsets": torch.where(applied(self.intensity_prob, batch_size), offsets, 0.0),
            "gammas": torch.where(applied(self.intensity_prob, batch_size), gammas, 1.0),
        }

    def augment(
        self, image: torch.Tensor, label: torch.Tensor, parameters: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented (image, label); ``parameters`` as from :meth:`sample_parameters` (drawn when None)."""
        if image.ndim != 4 or label.ndim != 4 or image.shape[0] != label.shape[0] or image.shape[2:] != label.shape[2:]:
            raise ValueError(
                "BatchAugmentation takes 2D batches: image (B, C, H, W) and label (B, 1, H, W) of the same size, "
                f"got image {tuple(image.shape)} and label {tuple(label.shape)}"
            )
        # plain tensors: no metadata tracking in the training step
        image = convert_to_tensor(image, dtype=torch.float32, track_meta=False)
        label = convert_to_tensor(label, dtype=torch.float32, track_meta=False)
        batch, channels, height, width = image.shape
        if parameters is None:
            parameters = self.sample_parameters(batch, channels, image.device)
        theta = sampling_matrices(parameters["flips"], parameters["angles"], parameters["scales"], height, width)
        grid = F.affine_grid(theta, [batch, channels, height, width], align_corners=False)
        image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        label = F.grid_sample(label, grid, mode="nearest", padding_mode="zeros", align_corners=False)

        image = image * parameters["intensity_factors"][:, :, None, None] + parameters["offsets"][:, None, None, None]
        lowest = image.amin(dim=(1, 2, 3), keepdim=True)
        spread = image.amax(dim=(1, 2, 3), keepdim=True) - lowest
        gammas = parameters["gammas"][:, None, None, None]
        contrast = ((image - lowest) / (spread + _CONTRAST_EPSILON)).clamp_min(0.0) ** gammas * spread + lowest
        image = torch.where(gammas != 1.0, contrast, image)
        return image, label
