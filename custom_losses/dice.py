"""Soft Dice loss with the options the loss studies compare."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

from ._shapes import check_input_target, compute_dtype, one_hot_target
from .distributed import sum_over_ranks


class SoftDiceLoss(_Loss):
    """Soft Dice loss on sigmoid (1 channel) or softmax (C channels) probabilities.

    ``dice = (2 * sum(p * g) + smooth_nr) / max(sum(p) + sum(g) + smooth_dr, eps)`` per channel, summed
    over the pixels of each image (``batch=False``, the default: Dice per image, then the mean over images
    and channels, as Galdran et al. "On the Optimal Combination of Cross-Entropy and Soft Dice Losses for
    Lesion Segmentation with Out-of-Distribution Robustness", DFUC 2022) or over the whole batch
    (``batch=True``, as nnU-Net's 2D "batch Dice"; summed over DDP ranks in a distributed run). The loss is
    ``1 - dice`` or, with ``log_loss=True``, ``-log(max(dice, eps))``.

    Defaults follow Galdran: no smoothing, denominator clamped at ``eps=1e-7``. On an image with an empty
    target and ``smooth_nr=0`` the per-image Dice is 0 whatever the prediction, so such an image gives no
    gradient (Bertels et al., MedIA 2021, discuss what smoothing then does to the predicted volume).
    With ``smooth_nr = smooth_dr`` and ``eps`` inactive it equals ``monai.losses.DiceLoss``.

    Soft labels (class probabilities, e.g. the expected label of a known label law): ``2 * sum(p * g)`` is not
    largest at ``p = g`` when ``g`` is soft, so the usual soft Dice drives the prediction towards hard
    values. ``soft_label=True`` takes ``sum(p) + sum(g) - sum(|p - g|)`` instead (Wang, Blaschko et al.,
    "Dice Semimetric Losses: Optimizing the Dice Score with Soft Labels", MICCAI 2023; MONAI's
    ``DiceLoss(soft_label=True)``): the same value and gradient on hard labels, and a loss of 0 exactly at
    ``p = g`` on soft ones.

    Args:
        batch: sum over the batch before the ratio (batch Dice) instead of per image.
        log_loss: use ``-log(dice)`` instead of ``1 - dice``.
        smooth_nr: added to the numerator.
        smooth_dr: added to the denominator.
        eps: lower clamp of the denominator (and of the Dice inside the log).
        include_background: for C channels, whether channel 0 takes part (ignored for 1 channel).
        soft_label: the Dice semimetric form of the intersection, for soft labels.
    """

    def __init__(
        self,
        batch: bool = False,
        log_loss: bool = False,
        smooth_nr: float = 0.0,
        smooth_dr: float = 0.0,
        eps: float = 1e-7,
        include_background: bool = False,
        soft_label: bool = False,
    ) -> None:
        super().__init__()
        if smooth_nr < 0 or smooth_dr < 0 or eps <= 0:
            raise ValueError(f"need smooth_nr >= 0, smooth_dr >= 0 and eps > 0, got {smooth_nr}, {smooth_dr}, {eps}")
        self.batch = batch
        self.log_loss = log_loss
        self.smooth_nr = smooth_nr
        self.smooth_dr = smooth_dr
        self.eps = eps
        self.include_background = include_background
        self.soft_label = soft_label

    def dice(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Soft Dice per image and channel ``(B, C')``, or per channel ``(1, C')`` with ``batch=True``."""
        check_input_target(input, target, type(self).__name__)
        input = compute_dtype(input)
        num_channels = input.shape[1]
        probs = torch.sigmoid(input) if num_channels == 1 else torch.softmax(input, dim=1)
        target = one_hot_target(target, num_channels, probs.dtype)
        if num_channels > 1 and not self.include_background:
            probs, target = probs[:, 1:], target[:, 1:]
        reduce_dims = list(range(2, input.ndim))
        total = probs.sum(reduce_dims) + target.sum(reduce_dims)
        if self.soft_label:  # |p| + |g| - |p - g| = 2 sum(p g) for g in {0, 1}
            intersection = (total - (probs - target).abs().sum(reduce_dims)) / 2
        else:
            intersection = (probs * target).sum(reduce_dims)
        if self.batch:
            intersection = sum_over_ranks(intersection.sum(0, keepdim=True))
            total = sum_over_ranks(total.sum(0, keepdim=True))
        return (2 * intersection + self.smooth_nr) / (total + self.smooth_dr).clamp_min(self.eps)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice = self.dice(input, target)
        loss = -torch.log(dice.clamp_min(self.eps)) if self.log_loss else 1 - dice
        return loss.mean()
