"""Compute precision and memory layout of the bundles' networks, on any device.

MONAI's engines autocast only with ``torch.autocast("cuda")`` (``amp``), so on a CPU they always run fp32.
The bundles instead give the network itself a forward pass under ``torch.autocast(<its device>, bfloat16)``
that returns float32 outputs: training, validation, evaluation, ensembles, inference and DDP all run the
network in bf16, while losses, metrics and volumes are computed in float32. The state dict is unchanged.

``precision`` (a config id of every bundle): ``auto`` (bf16 where the hardware computes it natively: a CUDA
GPU with bf16, a CPU with AVX512-BF16 or AMX; fp32 elsewhere, since emulated bf16 is slower than fp32),
``bf16`` or ``fp32``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

PRECISIONS = ("auto", "bf16", "fp32")

logger = logging.getLogger(__name__)


def cpu_computes_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), as PyTorch's CPU kernels see it."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``bf16`` or ``fp32``: what ``precision`` (``auto``, ``bf16``, ``fp32``) means on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision != "auto":
        if precision == "bf16" and device.type == "cpu" and not cpu_computes_bf16():
            logger.warning("precision bf16 on a CPU without AVX512-BF16 or AMX: emulated, slower than fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_computes_bf16() else "fp32"
    return "fp32"


def memory_format(spatial_dims: int, precision: str) -> torch.memory_format:
    """The layout the network runs fastest in (docs/performance.md): 2D channels_last in either precision;
    3D channels_last_3d in bf16, contiguous in fp32."""
    if spatial_dims == 2:
        return torch.channels_last
    return torch.channels_last_3d if precision == "bf16" else torch.contiguous_format


def _to_float32(output):
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, (list, tuple)):
        return type(output)(_to_float32(item) for item in output)
    if isinstance(output, dict):
        return {key: _to_float32(value) for key, value in output.items()}
    return output


class AutocastForward:
    """``network.forward`` run under ``torch.autocast(device_type, bfloat16)``, outputs back to float32."""

    def __init__(self, forward, device_type: str) -> None:
        self.forward = forward
        self.device_type = device_type

    def __call__(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            output = self.forward(*args, **kwargs)
        return _to_float32(output)


def autocast_enabled(network: nn.Module) -> bool:
    return isinstance(network.__dict__.get("forward"), AutocastForward)


def prepare_network(
    network: nn.Module, device: str | torch.device, precision: str = "auto", spatial_dims: int = 2
) -> nn.Module:
    """``network`` on ``device`` in the layout of :func:`memory_format`, with a bf16 forward pass when
    ``precision`` resolves to bf16 there. Returns the same module (its state dict keys are unchanged)."""
    device = torch.device(device)
    resolved = resolve_precision(precision, device)
    network = network.to(device, memory_format=memory_format(spatial_dims, resolved))
    if resolved == "bf16" and not autocast_enabled(network):
        network.forward = AutocastForward(network.forward, device.type)
    logger.info("%s on %s computes in %s (precision %s)", type(network).__name__, device, resolved, precision)
    return network
