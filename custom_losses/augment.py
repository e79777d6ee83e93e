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

Galdran et al.'s recipe (``utils/get_loaders.py`` of agaldran/lesion_losses_ood: torchvision transforms) needs
three more, off by default:

- ``affine_choice="one_of"``: one of rotation, scaling and translation per image, each with probability 1/3
  (torchvision's ``RandomChoice``), instead of rotation and scaling together;
- ``zoom_range=(low, high)``: one magnification factor for both axes drawn from U(low, high) (torchvision's
  ``RandomAffine(scale=...)``: above 1 enlarges the content), instead of MONAI's per-axis
  ``1 + U(-scale_range, scale_range)`` of the sampling grid;
- ``translate_range=(rows, cols)``: a shift by U(-rows, rows) of the height and U(-cols, cols) of the width
  (torchvision's ``translate=(cols, rows)``, which it rounds to whole pixels; here it is not rounded);
- ``colour_jitter=(brightness, contrast, saturation, hue)``: torchvision's ``ColorJitter`` on every image, the
  four changes in a random order per image, each factor drawn as torchvision draws it (brightness, contrast
  and saturation from U(1 - b, 1 + b), the hue shift from U(-h, h) of a turn), results clipped to [0, 1].

:data:`PRESETS` names the bundles' two parameter sets (``augmentation`` id): ``monai``, the default, and
``galdran``: flips, one of rotation within +-15 degrees, magnification 0.95 to 1.2, or a horizontal shift up to
5% of the width, and colour jitter (0.1, 0.1, 0.1, 0.01); no MONAI intensity changes. Flips come before the
affine change here and after it in torchvision: with symmetric angles and shifts and a scale common to both
axes, the distribution of the result is the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines.utils import PrepareBatch, default_prepare_batch
from monai.utils import convert_to_tensor

__all__ = ["PRESETS", "BatchAugmentation", "colour_jitter", "preset_augmentation", "sampling_matrices"]

_CONTRAST_EPSILON = 1e-7  # monai.transforms.AdjustContrast
AFFINE_CHOICES = ("all", "one_of")
# torchvision.transforms.functional.rgb_to_grayscale
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def sampling_matrices(
    flips: torch.Tensor,
    angles: torch.Tensor,
    scales: torch.Tensor,
    height: int,
    width: int,
    shifts: torch.Tensor | None = None,
) -> torch.Tensor:
    """``torch.nn.functional.affine_grid`` matrices (B, 2, 3) for flip, then rotation, scaling and shift.

    Parameters are in MONAI's convention, axis 0 the rows and axis 1 the columns: ``flips`` (B, 2) booleans,
    ``angles`` (B,) radians, ``scales`` (B, 2), ``shifts`` (B, 2) fractions of the height and width by which the
    content moves (down, right). The result maps an output pixel to the input pixel it samples, like
    ``Compose([Flip(0), Flip(1), Affine(rotate_params, scale_params, translate_params)])``.
    """
    cos, sin = torch.cos(angles), torch.sin(angles)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    flip_signs = 1.0 - 2.0 * flips.to(angles.dtype)
    # grid point p in centred pixel units samples the flipped image at R S p, i.e. the input at F R S p
    rows_cols = flip_signs[:, :, None] * rotation * scales[:, None, :]
    # affine_grid orders coordinates (x = column, y = row) and normalises each by its own size
    # (align_corners=False); built from the batch's own tensors, so nothing is copied to the device
    if shifts is None:
        offsets = torch.zeros_like(flip_signs)
    else:  # content moved by s of the size: the output samples s earlier, in the flipped image's axes
        offsets = -2.0 * flip_signs * shifts.to(angles.dtype)
    x_row = torch.stack([rows_cols[:, 1, 1], rows_cols[:, 1, 0] * (height / width), offsets[:, 1]], -1)
    y_row = torch.stack([rows_cols[:, 0, 1] * (width / height), rows_cols[:, 0, 0], offsets[:, 0]], -1)
    return torch.stack([x_row, y_row], 1)


def _grayscale(image: torch.Tensor) -> torch.Tensor:
    weights = image.new_tensor(_GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (image * weights).sum(1, keepdim=True)


def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_rgb2hsv`` for (B, 3, H, W) in [0, 1]."""
    r, g, b = image.unbind(1)
    maxc, _ = image.max(1)
    minc, _ = image.min(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), 1)


def _hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_hsv2rgb`` for (B, 3, H, W)."""
    h, s, v = image.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int32)
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    i = i % 6
    mask = i.unsqueeze(1) == torch.arange(6, device=i.device).view(1, -1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), 1)
    a2 = torch.stack((t, v, v, q, p, p), 1)
    a3 = torch.stack((p, p, t, v, v, q), 1)
    a4 = torch.stack((a1, a2, a3), 1)
    return torch.einsum("...ijk, ...xijk -> ...xjk", mask.to(image.dtype), a4)


def colour_jitter(image: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """torchvision's ``ColorJitter`` on a (B, 3, H, W) batch in [0, 1], per image: ``factors`` (B, 4) are the
    brightness, contrast and saturation factors and the hue shift (fraction of a turn); ``order`` (B, 4) is the
    permutation of (0: brightness, 1: contrast, 2: saturation, 3: hue) each image gets them in. Each step is
    torchvision's tensor function (``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation``,
    ``adjust_hue``), results clipped to [0, 1]."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"colour_jitter takes RGB batches (B, 3, H, W), got {tuple(image.shape)}")
    view = (-1, 1, 1, 1)
    for step in range(4):
        which = order[:, step].view(view)
        brightness = (image * factors[:, 0].view(view)).clamp(0.0, 1.0)
        mean = _grayscale(image).mean(dim=(1, 2, 3), keepdim=True)
        contrast_factor = factors[:, 1].view(view)
        contrast = (contrast_factor * image + (1.0 - contrast_factor) * mean).clamp(0.0, 1.0)
        saturation_factor = factors[:, 2].view(view)
        saturation = (saturation_factor * image + (1.0 - saturation_factor) * _grayscale(image)).clamp(0.0, 1.0)
        hsv = _rgb_to_hsv(image)
        hue = torch.remainder(hsv[:, :1] + factors[:, 3].view(view), 1.0)
        hue = _hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], 1))
        image = torch.where(
            which == 0, brightness, torch.where(which == 1, contrast, torch.where(which == 2, saturation, hue))
        )
    return image


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
        affine_choice: ``all`` (rotation, scaling and shift together) or ``one_of`` (one of them per image,
            each with probability 1/3), when the affine change applies (``affine_prob``).
        zoom_range: (low, high) of a magnification common to both axes (above 1 enlarges), replacing
            ``scale_range``; None: ``scale_range``.
        translate_range: (rows, cols): the content moves by U(-rows, rows) of the height and U(-cols, cols) of
            the width.
        colour_jitter: (brightness, contrast, saturation, hue) of torchvision's ``ColorJitter``, applied to
            every image after the geometric changes; None: no jitter.
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
        affine_choice: str = "all",
        zoom_range: Sequence[float] | None = None,
        translate_range: Sequence[float] = (0.0, 0.0),
        colour_jitter: Sequence[float] | None = None,
    ) -> None:
        for name, prob in (("flip_prob", flip_prob), ("affine_prob", affine_prob), ("intensity_prob", intensity_prob)):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {prob}")
        if len(gamma) != 2 or not 0.0 < gamma[0] <= gamma[1]:
            raise ValueError(f"gamma must be (low, high) with 0 < low <= high, got {gamma}")
        if affine_choice not in AFFINE_CHOICES:
            raise ValueError(f"affine_choice must be one of {', '.join(AFFINE_CHOICES)}, got {affine_choice!r}")
        if zoom_range is not None and (len(zoom_range) != 2 or not 0.0 < zoom_range[0] <= zoom_range[1]):
            raise ValueError(f"zoom_range must be (low, high) with 0 < low <= high, got {zoom_range}")
        if len(translate_range) != 2 or not all(0.0 <= t <= 1.0 for t in translate_range):
            raise ValueError(f"translate_range must be (rows, cols), fractions in [0, 1], got {translate_range}")
        if colour_jitter is not None and (
            len(colour_jitter) != 4
            or not all(0.0 <= j <= 1.0 for j in colour_jitter[:3])
            or not 0.0 <= colour_jitter[3] <= 0.5
        ):
            raise ValueError(
                "colour_jitter must be (brightness, contrast, saturation, hue) with the first three in [0, 1] and "
                f"hue in [0, 0.5], got {colour_jitter}"
            )
        self.flip_prob, self.affine_prob, self.intensity_prob = flip_prob, affine_prob, intensity_prob
        self.rotate_range, self.scale_range = rotate_range, scale_range
        self.scale_intensity, self.shift_intensity = scale_intensity, shift_intensity
        self.gamma = (float(gamma[0]), float(gamma[1]))
        self.affine_choice = affine_choice
        self.zoom_range = None if zoom_range is None else (float(zoom_range[0]), float(zoom_range[1]))
        self.translate_range = (float(translate_range[0]), float(translate_range[1]))
        self.colour_jitter = None if colour_jitter is None else tuple(float(j) for j in colour_jitter)

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
        parameters = {
            "flips": applied(self.flip_prob, batch_size, 2),
            "angles": torch.where(affine, angles, 0.0),
            "scales": torch.where(affine[:, None], scales, 1.0),
            "intensity_factors": torch.where(applied(self.intensity_prob, batch_size)[:, None], factors, 1.0),
            "offsets": torch.where(applied(self.intensity_prob, batch_size), offsets, 0.0),
            "gammas": torch.where(applied(self.intensity_prob, batch_size), gammas, 1.0),
        }
        # Galdran's additions draw after the default ones: the default parameters keep their random stream
        if self.zoom_range is not None:  # the sampling grid shrinks by the magnification
            zoom = uniform(batch_size, low=self.zoom_range[0], high=self.zoom_range[1])
            parameters["scales"] = torch.where(affine[:, None], 1.0 / zoom[:, None].expand(-1, 2), 1.0)
        if self.translate_range != (0.0, 0.0):
            limits = torch.tensor(self.translate_range, device=device)
            shifts = (2.0 * torch.rand(batch_size, 2, device=device) - 1.0) * limits
            parameters["shifts"] = torch.where(affine[:, None], shifts, 0.0)
        if self.affine_choice == "one_of":  # 0 rotation, 1 scaling, 2 shift
            choice = torch.randint(0, 3, (batch_size,), device=device)
            parameters["angles"] = torch.where(choice == 0, parameters["angles"], 0.0)
            parameters["scales"] = torch.where((choice == 1)[:, None], parameters["scales"], 1.0)
            if "shifts" in parameters:
                parameters["shifts"] = torch.where((choice == 2)[:, None], parameters["shifts"], 0.0)
        if self.colour_jitter is not None:
            brightness, contrast, saturation, hue = self.colour_jitter
            parameters["jitter_factors"] = torch.stack(
                [
                    uniform(batch_size, low=max(0.0, 1.0 - brightness), high=1.0 + brightness),
                    uniform(batch_size, low=max(0.0, 1.0 - contrast), high=1.0 + contrast),
                    uniform(batch_size, low=max(0.0, 1.0 - saturation), high=1.0 + saturation),
                    uniform(batch_size, low=-hue, high=hue),
                ],
                -1,
            )
            parameters["jitter_order"] = torch.argsort(torch.rand(batch_size, 4, device=device), dim=1)
        return parameters

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
        theta = sampling_matrices(
            parameters["flips"], parameters["angles"], parameters["scales"], height, width, parameters.get("shifts")
        )
        grid = F.affine_grid(theta, [batch, channels, height, width], align_corners=False)
        image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        label = F.grid_sample(label, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        if "jitter_factors" in parameters:
            image = colour_jitter(image, parameters["jitter_factors"], parameters["jitter_order"])

        image = image * parameters["intensity_factors"][:, :, None, None] + parameters["offsets"][:, None, None, None]
        lowest = image.amin(dim=(1, 2, 3), keepdim=True)
        spread = image.amax(dim=(1, 2, 3), keepdim=True) - lowest
        gammas = parameters["gammas"][:, None, None, None]
        contrast = ((image - lowest) / (spread + _CONTRAST_EPSILON)).clamp_min(0.0) ** gammas * spread + lowest
        image = torch.where(gammas != 1.0, contrast, image)
        return image, label


# The bundles' ``augmentation`` id: named parameter sets of BatchAugmentation
PRESETS: dict[str, dict[str, Any]] = {
    # the bundles' default: MONAI's RandFlipd, RandAffined (rotation +-0.5 rad, about 29 degrees; scale +-0.2),
    # RandScaleIntensityd, RandShiftIntensityd, RandAdjustContrastd
    "monai": {
        "flip_prob": 0.5,
        "affine_prob": 0.5,
        "rotate_range": 0.5,
        "scale_range": 0.2,
        "intensity_prob": 0.5,
        "scale_intensity": 0.15,
        "shift_intensity": 0.1,
        "gamma": (0.7, 1.5),
    },
    # Galdran et al. (utils/get_loaders.py): RandomChoice([RandomAffine(scale=(0.95, 1.2)), RandomAffine(
    # translate=(0.05, 0)), RandomRotation(15)]), ColorJitter(0.1, 0.1, 0.1, 0.01), horizontal and vertical flips
    "galdran": {
        "flip_prob": 0.5,
        "affine_prob": 1.0,
        "affine_choice": "one_of",
        "rotate_range": math.radians(15.0),
        "scale_range": 0.0,
        "zoom_range": (0.95, 1.2),
        "translate_range": (0.0, 0.05),
        "intensity_prob": 0.0,
        "colour_jitter": (0.1, 0.1, 0.1, 0.01),
    },
}


def preset_augmentation(name: str = "monai", **overrides: Any) -> BatchAugmentation:
    """``BatchAugmentation`` with the parameters of ``PRESETS[name]``, any of them replaced by ``overrides``
    (so ``--train#augmentation#rotate_range 0.3`` still works on the bundles' command line)."""
    if name not in PRESETS:
        raise ValueError(f"augmentation must be one of {', '.join(PRESETS)}, got {name!r}")
    return BatchAugmentation(**{**PRESETS[name], **overrides})
