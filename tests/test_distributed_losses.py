"""Batch-level statistics under DDP: two gloo ranks with half a batch each equal one process with all."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from custom_losses import DilatedBalancedCrossEntropyLoss, SoftDiceLoss

WORLD_SIZE = 2


def make_losses():
    return {
        "batch_dice": SoftDiceLoss(batch=True),
        "dbce_per_batch": DilatedBalancedCrossEntropyLoss(radius=2, per_image=False),
    }


def make_batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 16, 12, generator=gen)
    target = torch.zeros(4, 1, 16, 12)
    target[0, :, 2:6, 2:5] = 1
    target[1, :, 8:15, 1:11] = 1  # a large lesion in rank 0's half, small or none in rank 1's
    target[2, :, 3:4, 3:4] = 1
    return logits, target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        logits, target = make_batch()
        half = slice(rank * 2, rank * 2 + 2)
        for name, loss_fn in make_losses().items():
            local = logits[half].clone().requires_grad_(True)
            loss = loss_fn(local, target[half])
            loss.backward()
            results[(name, rank)] = (loss.item(), local.grad.clone())
    finally:
        dist.destroy_process_group()


def test_batch_statistics_are_summed_over_ranks():
    manager = mp.Manager()
    results = manager.dict()
    mp.start_processes(worker, args=(free_port(), results), nprocs=WORLD_SIZE, start_method="spawn")
    logits, target = make_batch()
    for name, loss_fn in make_losses().items():
        full = logits.clone().requires_grad_(True)
        expected = loss_fn(full, target)
        expected.backward()
        for rank in range(WORLD_SIZE):
            value, grad = results[(name, rank)]
            if name == "batch_dice":
                # every rank sees the global Dice; DDP averages the summed gradients over ranks
                assert value == pytest.approx(expected.item(), rel=1e-5)
                torch.testing.assert_close(grad / WORLD_SIZE, full.grad[rank * 2 : rank * 2 + 2], rtol=1e-4, atol=1e-7)
            else:
                # weights from the global areas; the local mean is then averaged by DDP
                assert sum(results[(name, r)][0] for r in range(WORLD_SIZE)) / WORLD_SIZE == pytest.approx(
                    expected.item(), rel=1e-5
                )
                torch.testing.assert_close(grad / WORLD_SIZE, full.grad[rank * 2 : rank * 2 + 2], rtol=1e-4, atol=1e-7)
