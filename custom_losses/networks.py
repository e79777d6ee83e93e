"""FlexibleUNet whose ResNet encoder can be exported with TorchScript.

MONAI's resnet18/34 use the "A" shortcut (MedicalNet): a ``functools.partial`` that strides the input
and zero-pads the channels. ``torch.jit.script`` cannot compile a partial, and ``torch.jit.trace``
freezes the strided input as a constant, so ``monai.bundle ckpt_export`` fails or exports a wrong model.
:class:`ZeroPadShortcut` computes exactly the same thing as a module without parameters, so weights
load both ways between this network and ``monai.networks.nets.FlexibleUNet``.
"""

from __future__ import annotations

from functools import partial

import torch
from monai.networks.nets import FlexibleUNet
from torch import nn


class ZeroPadShortcut(nn.Module):
    """Type-A ResNet shortcut: ``x`` strided by ``stride``, channels zero-padded to ``planes``.

    Like MONAI's ``ResNet._downsample_basic_block`` the shortcut passes no gradient (it uses ``.data``).
    """

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes = planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.detach()
        if out.dim() == 4:
            out = out[:, :, :: self.stride, :: self.stride]
        else:
            out = out[:, :, :: self.stride, :: self.stride, :: self.stride]
        pad_shape = [out.shape[0], self.planes - out.shape[1]] + list(out.shape[2:])
        return torch.cat([out, torch.zeros(pad_shape, dtype=out.dtype, device=out.device)], dim=1)


def replace_partial_shortcuts(network: nn.Module) -> nn.Module:
    """Swap every ``partial`` downsample of ResNet blocks in ``network`` for a :class:`ZeroPadShortcut`."""
    for module in network.modules():
        downsample = getattr(module, "downsample", None)
        if isinstance(downsample, partial):
            module.downsample = ZeroPadShortcut(downsample.keywords["planes"], downsample.keywords["stride"])
    return network


class ScriptableFlexibleUNet(FlexibleUNet):
    """``monai.networks.nets.FlexibleUNet`` (same arguments, same state dict) that TorchScript can compile."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        replace_partial_shortcuts(self)
