"""Training guards: stop a run whose loss or weights are not finite, saying where the bad values came from."""

from __future__ import annotations

import math
import os

import torch
from ignite.engine import Engine, Events


def _loss_value(output) -> float:
    item = output[0] if isinstance(output, list) else output
    loss = item["loss"] if isinstance(item, dict) else item
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


def _non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    floating = {name: t for name, t in tensors.items() if t is not None and t.is_floating_point()}
    if not floating:
        return []
    finite = torch.stack([torch.isfinite(t).all() for t in floating.values()]).tolist()  # one device sync
    return [name for name, ok in zip(floating, finite, strict=True) if not ok]


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def diagnose_non_finite_loss(engine: Engine) -> str:
    """Why the loss is not finite, given that the weights were finite before this step (the guard checks them
    after every update): the batch holds non-finite values, or this forward pass or the loss produced them."""
    batch = engine.state.batch
    if isinstance(batch, dict):
        bad_inputs = _non_finite({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
        if bad_inputs:
            return f"non-finite values in the batch's {_names(bad_inputs)}"
    return "weights and batch were finite: this forward pass or the loss produced it"


class StopOnNonFiniteLoss:
    """Stop training with an error naming the epoch and iteration as soon as the loss is NaN or infinite, or an
    update leaves non-finite weights behind a finite loss (non-finite gradients, named in the error).

    The run then ends without a final checkpoint; the best-validation model and the last epoch checkpoint
    (see :class:`custom_losses.handlers.EpochCheckpointSaver`) stay as they were, written before the loss went bad.
    The weight check costs one pass over the parameters (and one device sync) per iteration.
    """

    def __init__(self, ckpt_dir: str | os.PathLike | None = None) -> None:
        self.ckpt_dir = ckpt_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = _loss_value(engine.state.output)
        epoch_length = engine.state.epoch_length or 1
        iteration = (engine.state.iteration - 1) % epoch_length + 1
        at = f"at epoch {engine.state.epoch}, iteration {iteration}/{epoch_length}"
        where = f" (last good checkpoints in {self.ckpt_dir})" if self.ckpt_dir else ""
        if not math.isfinite(value):
            raise FloatingPointError(
                f"training loss is {value} {at}: training stopped{where}; {diagnose_non_finite_loss(engine)}"
            )
        network = getattr(engine, "network", None)
        if network is None:
            return
        parameters = dict(network.named_parameters())
        bad_weights = _non_finite(parameters)
        if bad_weights:
            bad_gradients = _non_finite({name: parameters[name].grad for name in parameters})
            raise FloatingPointError(
                f"weights are not finite after the update {at}, though the loss was {value}: training stopped"
                f"{where}; non-finite weights: {_names(bad_weights)}; non-finite gradients: "
                f"{_names(bad_gradients) or 'none'}"
            )
