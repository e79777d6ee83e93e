"""Loss-weight schedules: exact values, and the MONAI handler that applies them per epoch."""

from __future__ import annotations

import pytest
from ignite.engine import Engine, Events

from custom_losses import CEDiceLoss, CrossEntropyLoss, alpha_scheduler, combo_alpha, finetune_alpha, linear_alpha

EPOCHS = 12


def test_schedule_values_for_twelve_epochs():
    assert [combo_alpha(e, EPOCHS) for e in range(EPOCHS)] == [0.5] * EPOCHS
    linear = [linear_alpha(e, EPOCHS) for e in range(EPOCHS)]
    assert linear == pytest.approx([1 - e / 11 for e in range(EPOCHS)])
    assert linear[0] == 1.0 and linear[1] == pytest.approx(10 / 11) and linear[-1] == 0.0
    assert [finetune_alpha(e, EPOCHS) for e in range(EPOCHS)] == [1.0] * 11 + [0.0]


def test_schedule_edge_cases():
    assert linear_alpha(0, 1) == 1.0
    assert finetune_alpha(0, 1) == 1.0
    assert [finetune_alpha(e, 40) for e in range(40)].count(0.0) == 3  # e = 37, 38, 39 (> 36)
    for epochs in (2, 5, 10):  # e <= 0.9 E holds for every epoch: the last one is still Dice
        assert [finetune_alpha(e, epochs) for e in range(epochs)] == [1.0] * (epochs - 1) + [0.0]
    with pytest.raises(ValueError, match="epoch"):
        linear_alpha(12, 12)


def alphas_seen_by_training(schedule: str, epochs: int, start_epoch: int = 0) -> list[float]:
    """Run an ignite engine and record the loss's alpha at every iteration, optionally resuming."""
    loss = CEDiceLoss(alpha=0.123)
    seen: list[float] = []
    engine = Engine(lambda engine, batch: seen.append(loss.alpha))
    alpha_scheduler(loss, schedule, epochs).attach(engine)
    if start_epoch:  # what CheckpointLoader restores after an interruption
        engine.state.epoch = start_epoch
        engine.state.iteration = start_epoch * 2
        engine.state.max_epochs = epochs
        engine.state.epoch_length = 2
    engine.run(range(2), max_epochs=epochs)
    return seen


@pytest.mark.parametrize(
    "schedule,fn", [("combo", combo_alpha), ("linear", linear_alpha), ("finetune", finetune_alpha)]
)
def test_handler_sets_alpha_every_epoch_and_after_resume(schedule, fn):
    expected = [fn(e, EPOCHS) for e in range(EPOCHS) for _ in range(2)]
    assert alphas_seen_by_training(schedule, EPOCHS) == pytest.approx(expected)
    assert alphas_seen_by_training(schedule, EPOCHS, start_epoch=7) == pytest.approx(expected[14:])


def test_handler_fires_before_the_first_iteration():
    loss = CEDiceLoss(alpha=0.5)
    engine = Engine(lambda engine, batch: None)
    handler = alpha_scheduler(loss, "linear", 3)
    handler.attach(engine)
    assert engine.has_event_handler(handler, Events.EPOCH_STARTED)


def test_handler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown alpha schedule"):
        alpha_scheduler(CEDiceLoss(), "cosine", 10)
    with pytest.raises(TypeError, match="alpha"):
        alpha_scheduler(CrossEntropyLoss(), "linear", 10)


@pytest.mark.parametrize("epochs,first", [(1, 1), (2, 2), (10, 10), (12, 12), (16, 16), (22, 21), (40, 38)])
def test_selection_starts_at_the_first_dice_epoch(epochs, first):
    from custom_losses.schedules import selection_start_epoch

    assert selection_start_epoch("finetune", epochs) == first
    if epochs > 1:
        assert finetune_alpha(first - 1, epochs) == 0.0 and finetune_alpha(first - 2, epochs) == 1.0
    assert selection_start_epoch("linear", epochs) == selection_start_epoch("combo", epochs) == 1
