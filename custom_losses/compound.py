"""``alpha * CE + (1 - alpha) * Dice`` with an ``alpha`` that a schedule can change while training."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

from .cross_entropy import CrossEntropyLoss
from .dice import SoftDiceLoss


class CEDiceLoss(_Loss):
    """Convex combination ``alpha * CE + (1 - alpha) * SoftDice`` (Galdran et al., DFUC 2022).

    ``alpha`` is a plain attribute: :func:`custom_losses.schedules.alpha_scheduler` sets it at the start
    of every epoch (constant 0.5, linear CE->Dice, or CE then Dice fine-tuning). A term whose weight is 0
    is not computed, as in nnU-Net's compound losses.

    Args:
        alpha: weight of the CE term in ``[0, 1]``.
        ce: the CE loss (default :class:`CrossEntropyLoss`).
        dice: the Dice loss (default :class:`SoftDiceLoss` with its defaults).
    """

    def __init__(self, alpha: float = 0.5, ce: _Loss | None = None, dice: _Loss | None = None) -> None:
        super().__init__()
        self.ce = ce if ce is not None else CrossEntropyLoss()
        self.dice = dice if dice is not None else SoftDiceLoss()
        self.alpha = alpha

    @property
    def alpha(self) -> float:
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {value}")
        self._alpha = value

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = input.new_zeros((), dtype=torch.float32)
        if self.alpha > 0:
            loss = loss + self.alpha * self.ce(input, target)
        if self.alpha < 1:
            loss = loss + (1 - self.alpha) * self.dice(input, target)
        return loss
