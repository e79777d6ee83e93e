"""Sums across DistributedDataParallel ranks for batch-level loss statistics.

Without them, "batch Dice" or "per-batch class areas" under ``torchrun`` silently become per-GPU
statistics (the nnU-Net ``SoftDiceLoss`` all-gathers for the same reason).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, keeping the autograd graph when it needs gradients.

    The backward of the differentiable all-reduce sums the gradients of every rank, and DDP then averages
    parameter gradients over ranks, so the result is the gradient of the global statistic.
    """
    if not is_distributed():
        return tensor
    if tensor.requires_grad:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
