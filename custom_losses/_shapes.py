"""Shape checks and target conversions shared by every loss.

Conventions (the same for all losses of this package):

- ``input``: logits ``(B, C, *spatial)`` with 2 or 3 spatial dims. ``C == 1`` means a binary task
  (sigmoid); ``C > 1`` means ``C`` mutually exclusive classes (softmax), class 0 is background.
- ``target``: ``(B, 1, *spatial)``. For ``C == 1`` it holds the foreground probability (0/1 for hard
  labels); for ``C > 1`` it holds class indices. ``C > 1`` also accepts a one-hot / class-probability
  target ``(B, C, *spatial)``.
"""

from __future__ import annotations

import torch


def check_input_target(input: torch.Tensor, target: torch.Tensor, loss_name: str) -> None:
    """Raise a ``ValueError`` saying what was expected when shapes do not fit the conventions above."""
    if input.ndim not in (4, 5):
        raise ValueError(
            f"{loss_name}: input must be (B, C, H, W) or (B, C, D, H, W) logits, got shape {tuple(input.shape)}"
        )
    if target.ndim != input.ndim:
        raise ValueError(
            f"{loss_name}: target must have the same number of dims as input {tuple(input.shape)}, "
            f"got shape {tuple(target.shape)}"
        )
    if target.shape[0] != input.shape[0] or target.shape[2:] != input.shape[2:]:
        raise ValueError(
            f"{loss_name}: target batch and spatial size must match input {tuple(input.shape)}, "
            f"got {tuple(target.shape)}"
        )
    num_channels = input.shape[1]
    allowed = {1} if num_channels == 1 else {1, num_channels}
    if target.shape[1] not in allowed:
        raise ValueError(
            f"{loss_name}: target must have 1 channel (labels) or {num_channels} (one-hot) for a "
            f"{num_channels}-channel input, got {target.shape[1]} channels"
        )


def label_map(target: torch.Tensor, num_channels: int) -> torch.Tensor:
    """Hard class index per pixel, ``(B, *spatial)`` long; a binary task has classes 0 and 1.

    Binary probabilities are thresholded at 0.5, one-hot targets are arg-maxed.
    """
    if num_channels == 1:
        return (target[:, 0] > 0.5).long()
    if target.shape[1] == 1:
        return target[:, 0].long()
    return target.argmax(dim=1)


def one_hot_target(target: torch.Tensor, num_channels: int, dtype: torch.dtype) -> torch.Tensor:
    """Target as per-channel probabilities ``(B, C, *spatial)``; a binary target is returned as is."""
    if num_channels == 1 or target.shape[1] == num_channels:
        return target.to(dtype)
    labels = target[:, 0].long()
    classes = torch.arange(num_channels, device=target.device).view(1, -1, *([1] * (target.ndim - 2)))
    return (labels.unsqueeze(1) == classes).to(dtype)


def compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """Losses compute in float32 (safe under bf16/fp16 autocast), or float64 when given float64."""
    return x if x.dtype == torch.float64 else x.float()
