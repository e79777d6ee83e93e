"""The bundles' optimizer and learning-rate schedule, chosen by config ids (checked first by ``settings``).

- ``optimizer_name``: ``adamw`` (the bundles' default, ``torch.optim.AdamW``) or ``nadam``
  (``torch.optim.NAdam``, Galdran et al.'s choice, with ``weight_decay`` 0 in their recipe); ``weight_decay``
  is passed to either (NAdam: L2 added to the gradient, as torch does by default).
- ``lr_schedule``: cosine annealing from ``learning_rate`` to ``lr_min``, one half cycle over the training:
  ``cosine_epoch`` (the default: stepped at the end of every epoch, ``T_max = epochs``) or
  ``cosine_iteration`` (stepped after every iteration, ``T_max = epochs x iterations per epoch``, as
  Galdran et al.; the last iteration ends at ``lr_min``). Either is a ``CosineAnnealingLR``, saved in the resume
  checkpoints with its step count, so a resumed run continues the same curve.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

OPTIMIZERS = {"adamw": torch.optim.AdamW, "nadam": torch.optim.NAdam}
LR_SCHEDULES = ("cosine_epoch", "cosine_iteration")


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` or ``torch.optim.NAdam`` (``name``: ``adamw``, ``nadam``) with ``lr`` and
    ``weight_decay``, the other arguments torch's defaults."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer_name must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay)


def make_lr_scheduler(
    schedule: str, optimizer: torch.optim.Optimizer, epochs: int, iterations_per_epoch: int, lr_min: float = 0.0
) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """Cosine annealing to ``lr_min`` over ``epochs`` (``cosine_epoch``) or over ``epochs x
    iterations_per_epoch`` steps (``cosine_iteration``); step it with MONAI's ``LrScheduleHandler`` with
    ``epoch_level`` true for the first, false for the second (:func:`epoch_level`)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    steps = epochs if schedule == "cosine_epoch" else epochs * max(1, int(iterations_per_epoch))
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr_min)


def epoch_level(schedule: str) -> bool:
    """Whether ``LrScheduleHandler`` steps the schedule per epoch (else per iteration)."""
    return schedule == "cosine_epoch"
