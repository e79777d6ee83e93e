"""Cross-entropy losses: plain, class-balanced, and dilated balanced (DBCE).

All take logits (see ``custom_losses._shapes`` for the shape conventions) and compute in float32, so
they are safe under bf16/fp16 autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from ._shapes import check_input_target, compute_dtype, label_map
from .distributed import sum_over_ranks


def pixelwise_cross_entropy(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Unreduced CE per pixel, ``(B, *spatial)``: BCE-with-logits for 1 channel, softmax CE otherwise."""
    input = compute_dtype(input)
    if input.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(input, target.to(input.dtype), reduction="none")[:, 0]
    if target.shape[1] == 1:
        return F.cross_entropy(input, target[:, 0].long(), reduction="none")
    return F.cross_entropy(input, target.to(input.dtype), reduction="none")


class CrossEntropyLoss(_Loss):
    """Cross-entropy averaged over all pixels of the batch.

    1 output channel: binary cross-entropy with logits against a (possibly soft) foreground target.
    C channels: softmax cross-entropy against class indices ``(B, 1, ...)`` or class probabilities
    ``(B, C, ...)``. CE is a strictly proper scoring rule: the predicted probabilities estimate the label
    distribution, which is why the sum of probabilities is an unbiased volume estimate (Bertels et al.,
    "Optimization with soft Dice can lead to a volumetric bias in image segmentation", MedIA 2021).
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_input_target(input, target, type(self).__name__)
        return pixelwise_cross_entropy(input, target).mean()


def region_balanced_weights(regions: torch.Tensor, num_regions: int, per_image: bool = True) -> torch.Tensor:
    """Pixel weights that give every non-empty region the same total weight.

    ``regions``: ``(B, *spatial)`` long in ``[0, num_regions)``, or bool for two regions (False = 0,
    True = 1: the fast binary path). A region of area ``A`` gets weight ``N / (K * A)`` per pixel, ``N``
    the number of pixels and ``K`` the number of non-empty regions, counted per image (default) or over
    the whole batch (summed over DDP ranks in a distributed run). So the weights of an image (or batch)
    sum to ``N`` exactly and every present region carries ``N / K``.
    """
    batch = regions.shape[0]
    flat = regions.reshape(batch, -1)
    if regions.dtype == torch.bool:
        if num_regions != 2:
            raise ValueError(f"a bool region map has 2 regions, got num_regions={num_regions}")
        foreground = flat.sum(1, dtype=torch.float64)
        areas = torch.stack([flat.shape[1] - foreground, foreground], dim=1)
    else:
        offsets = torch.arange(batch, device=regions.device).unsqueeze(1) * num_regions
        areas = torch.bincount((flat + offsets).reshape(-1), minlength=batch * num_regions)
        areas = areas.view(batch, num_regions).double()
    num_pixels = torch.full((batch, 1), float(flat.shape[1]), dtype=torch.float64, device=regions.device)
    if not per_image:
        areas = sum_over_ranks(areas.sum(0, keepdim=True))
        num_pixels = sum_over_ranks(num_pixels.sum(0, keepdim=True))
    present = areas > 0
    num_present = present.sum(1, keepdim=True)
    weights = torch.where(present, num_pixels / (num_present * areas.clamp_min(1)), torch.zeros_like(areas))
    weights = weights.float().expand(batch, num_regions)
    if regions.dtype == torch.bool:
        view = (batch,) + (1,) * (regions.ndim - 1)
        return torch.where(regions, weights[:, 1].view(view), weights[:, 0].view(view))
    return weights.gather(1, flat).view_as(regions)


def balance_regions(target: torch.Tensor, num_channels: int, radius: int) -> tuple[torch.Tensor, int]:
    """The regions to balance and their number: the classes (``radius=0``) or the DBCE regions.

    A binary target gives a bool map (foreground region, dilated when ``radius > 0``).
    """
    if num_channels == 1:
        foreground = target[:, 0] > 0.5
        if radius > 0:
            foreground = dilate(foreground.unsqueeze(1), radius)[:, 0]
        return foreground, 2
    return dilated_regions(label_map(target, num_channels), num_channels, radius), num_channels


class BalancedCrossEntropyLoss(_Loss):
    """Class-balanced cross-entropy: inverse class-frequency weights computed per image.

    In an image of ``N`` pixels where class ``c`` covers ``n_c`` pixels and ``K`` classes are present,
    each pixel of class ``c`` gets weight ``N / (K * n_c)``; the loss is the mean over pixels of
    ``weight * CE``. Every present class carries the same total weight. Classic balanced CE, as the
    baseline of Hosseini & Soleymani Baghshah, "Dilated Balanced Cross Entropy Loss for Medical Image
    Segmentation", arXiv 2412.06045 (2024).

    Args:
        per_image: class areas per image (default) or summed over the batch.
    """

    def __init__(self, per_image: bool = True) -> None:
        super().__init__()
        self.per_image = per_image

    radius = 0

    def pixel_weights(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        regions, num_regions = balance_regions(target, input.shape[1], self.radius)
        return region_balanced_weights(regions, num_regions, self.per_image)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_input_target(input, target, type(self).__name__)
        with torch.no_grad():
            weights = self.pixel_weights(input, target)
        return (weights * pixelwise_cross_entropy(input, target)).mean()


def _or_shifted(out: torch.Tensor, src: torch.Tensor, offsets: dict[int, int]) -> None:
    """In place: ``out[i] |= src[i + offset]`` along each ``dim: offset``, nothing from outside ``src``."""
    out_view, src_view = out, src
    for dim, offset in offsets.items():
        length = src.shape[dim] - abs(offset)
        if length <= 0:
            return
        out_view = out_view.narrow(dim, max(-offset, 0), length)
        src_view = src_view.narrow(dim, max(offset, 0), length)
    out_view |= src_view


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``(B, C, *spatial)`` masks by a disk (2D) or ball (3D) of ``radius`` pixels.

    The disk is every offset with ``dy**2 + dx**2 <= radius**2`` (``skimage.morphology.disk``). It is the
    union of horizontal segments, one per row offset (and slice offset in 3D): the dilation is the OR of the
    mask dilated by each segment, shifted by its offset. Segments of every half-width are built
    incrementally, so the cost is ``O(radius)`` boolean tensor operations in 2D (``O(radius**2)`` in 3D),
    on the tensor's device, with no NumPy round trip. Returns a bool tensor.
    """
    if int(radius) != radius or radius < 0:
        raise ValueError(f"dilation radius must be a non-negative integer, got {radius!r}")
    spatial_dims = mask.ndim - 2
    if spatial_dims not in (2, 3):
        raise ValueError(f"dilate expects (B, C, H, W) or (B, C, D, H, W), got shape {tuple(mask.shape)}")
    mask = mask.bool() if mask.dtype == torch.bool else mask > 0
    if radius == 0:
        return mask
    x_dim, y_dim, z_dim = mask.ndim - 1, mask.ndim - 2, mask.ndim - 3
    segments = [mask]  # segments[w]: the mask dilated by the horizontal segment [-w, w]
    for half_width in range(1, radius + 1):
        segment = segments[-1].clone()
        _or_shifted(segment, mask, {x_dim: half_width})
        _or_shifted(segment, mask, {x_dim: -half_width})
        segments.append(segment)
    out = torch.zeros_like(mask)
    slice_offsets = range(-radius, radius + 1) if spatial_dims == 3 else [0]
    for dz in slice_offsets:
        for dy in range(-radius, radius + 1):
            remaining = radius**2 - dz**2 - dy**2
            if remaining >= 0:
                offsets = {y_dim: dy, z_dim: dz} if spatial_dims == 3 else {y_dim: dy}
                _or_shifted(out, segments[math.isqrt(remaining)], offsets)
    return out


def dilated_regions(labels: torch.Tensor, num_classes: int, radius: int) -> torch.Tensor:
    """Partition of each image into DBCE regions, ``(B, *spatial)`` long.

    A pixel labelled ``c >= 1`` belongs to region ``c``. An unlabelled pixel inside one or more dilated
    class masks ``D_c`` belongs to the region of the smallest such ``D_c`` (by its area in that image;
    ties go to the lower class index). Every other pixel is background (region 0).
    """
    if radius == 0 or num_classes < 2:
        return labels
    classes = torch.arange(1, num_classes, device=labels.device).view(1, -1, *([1] * (labels.ndim - 1)))
    dilated = dilate(labels.unsqueeze(1) == classes, radius)  # (B, C-1, *spatial)
    if num_classes == 2:  # a single foreground class: no choice to make
        return torch.where(labels > 0, labels, dilated[:, 0].long())
    areas = dilated.flatten(2).sum(-1).float()
    area_per_pixel = torch.where(dilated, areas.view(*areas.shape, *([1] * (labels.ndim - 1))), math.inf)
    nearest = area_per_pixel.argmin(dim=1) + 1
    in_any = dilated.any(dim=1)
    return torch.where(labels > 0, labels, torch.where(in_any, nearest, torch.zeros_like(labels)))


class DilatedBalancedCrossEntropyLoss(BalancedCrossEntropyLoss):
    """Dilated balanced cross-entropy (DBCE), Hosseini & Soleymani Baghshah, arXiv 2412.06045 (2024).

    Balanced CE whose class areas come from dilated class masks: each foreground class is dilated by a
    disk (ball in 3D) of ``radius`` pixels, the image is partitioned into regions (see
    :func:`dilated_regions`), and each pixel of a region of area ``A`` gets weight ``N / (K * A)``
    (``N`` pixels, ``K`` non-empty regions). The high foreground weight thus also covers a band of
    background around each lesion, which is what curbs the false positives of plain balanced CE.
    ``radius=0`` is exactly :class:`BalancedCrossEntropyLoss`. Weights are computed without gradient.

    Args:
        radius: dilation radius in pixels. The default 5 is a starting point at 352 px; pick it by a
            validation sweep per dataset (the paper sweeps it too).
        per_image: region areas per image (default) or summed over the batch.
    """

    def __init__(self, radius: int = 5, per_image: bool = True) -> None:
        super().__init__(per_image=per_image)
        if int(radius) != radius or radius < 0:
            raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
        self.radius = int(radius)
