"""Training guards: stop a run whose loss is not finite."""

from __future__ import annotations

import math
import os

import torch
from ignite.engine import Engine, Events


def _loss_value(output) -> float:
    item = output[0] if isinstance(output, list) else output
    loss = item["loss"] if isinstance(item, dict) else item
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


class StopOnNonFiniteLoss:
    """Stop training with an error naming the epoch and iteration as soon as the loss is NaN or infinite.

    The run then ends without a final checkpoint; the best-validation model and the last epoch checkpoint
    (see :class:`custom_losses.handlers.EpochCheckpointSaver`) stay as they were, written before the loss went bad.
    """

    def __init__(self, ckpt_dir: str | os.PathLike | None = None) -> None:
        self.ckpt_dir = ckpt_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = _loss_value(engine.state.output)
        if not math.isfinite(value):
            epoch_length = engine.state.epoch_length or 1
            iteration = (engine.state.iteration - 1) % epoch_length + 1
            where = f" (last good checkpoints in {self.ckpt_dir})" if self.ckpt_dir else ""
            raise FloatingPointError(
                f"training loss is {value} at epoch {engine.state.epoch}, iteration {iteration}/{epoch_length}: "
                f"training stopped{where}"
            )
