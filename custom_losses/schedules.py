"""Per-epoch schedules of the CE weight ``alpha`` of :class:`custom_losses.CEDiceLoss`.

Each schedule is a pure function of the epoch (``e = 0 .. E-1``) and the number of epochs ``E``: no state,
so the value is right after a resume (ignite restores the epoch counter) and identical on every DDP rank.
They are driven by MONAI's ``ParamSchedulerHandler`` at ``EPOCH_STARTED`` (see :func:`alpha_scheduler`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ignite.engine import Events
from monai.handlers import ParamSchedulerHandler

from .compound import CEDiceLoss


def _check_epoch(epoch: int, epochs: int) -> None:
    if epochs < 1 or not 0 <= epoch < epochs:
        raise ValueError(f"need 0 <= epoch < epochs, got epoch={epoch}, epochs={epochs}")


def combo_alpha(epoch: int, epochs: int) -> float:
    """Constant 0.5: CE + Dice with equal weights."""
    _check_epoch(epoch, epochs)
    return 0.5


def linear_alpha(epoch: int, epochs: int) -> float:
    """``1 - e / (E - 1)``: pure CE at the first epoch, pure Dice at the last (1 for ``E == 1``)."""
    _check_epoch(epoch, epochs)
    return 1.0 if epochs == 1 else 1.0 - epoch / (epochs - 1)


def finetune_alpha(epoch: int, epochs: int) -> float:
    """1 while ``e <= 0.9 * E``, else 0: CE, then Dice for the last ~10% of the epochs; at least the last
    epoch is Dice when ``E >= 2`` (``e <= 0.9 E`` alone would leave ``E <= 10`` pure CE)."""
    _check_epoch(epoch, epochs)
    return 1.0 if epoch <= 0.9 * epochs and (epoch < epochs - 1 or epochs == 1) else 0.0


def selection_start_epoch(schedule: str, epochs: int) -> int:
    """First (1-based) epoch whose model may be kept as the best: the first Dice epoch for ``finetune``
    (its model is a fine-tuned one, not an earlier CE epoch), 1 for the others."""
    if schedule != "finetune":
        return 1
    return next((e + 1 for e in range(epochs) if finetune_alpha(e, epochs) == 0.0), 1)


ALPHA_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "combo": combo_alpha,
    "linear": linear_alpha,
    "finetune": finetune_alpha,
}


def alpha_scheduler(loss: CEDiceLoss, schedule: str, epochs: int) -> ParamSchedulerHandler:
    """MONAI ``ParamSchedulerHandler`` that sets ``loss.alpha`` at the start of every training epoch.

    Args:
        loss: the combined loss whose ``alpha`` is scheduled.
        schedule: one of ``combo``, ``linear``, ``finetune``.
        epochs: the total number of training epochs ``E``.
    """
    if schedule not in ALPHA_SCHEDULES:
        raise ValueError(f"unknown alpha schedule {schedule!r}, expected one of {sorted(ALPHA_SCHEDULES)}")
    if not hasattr(loss, "alpha"):
        raise TypeError(f"alpha_scheduler needs a loss with an `alpha` attribute, got {type(loss).__name__}")
    schedule_fn = ALPHA_SCHEDULES[schedule]
    logger = logging.getLogger(__name__)

    def value_at(current_step: int, epochs: int) -> float:
        # ignite's epoch counter is 1-based when EPOCH_STARTED fires
        return schedule_fn(current_step - 1, epochs)

    def set_alpha(value: float) -> None:
        if value != loss.alpha:
            logger.info("loss alpha (CE weight) set to %.4f", value)
        loss.alpha = value

    return ParamSchedulerHandler(
        parameter_setter=set_alpha,
        value_calculator=value_at,
        vc_kwargs={"epochs": int(epochs)},
        epoch_level=True,
        event=Events.EPOCH_STARTED,
    )
