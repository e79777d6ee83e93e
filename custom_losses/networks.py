"""FlexibleUNet whose ResNet encoder can be exported with TorchScript, can take torchvision's ImageNet
weights, and can normalise its inputs.

MONAI's resnet18/34 use the "A" shortcut (MedicalNet): a ``functools.partial`` that strides the input
and zero-pads the channels. ``torch.jit.script`` cannot compile a partial, and ``torch.jit.trace``
freezes the strided input as a constant, so ``monai.bundle ckpt_export`` fails or exports a wrong model.
:class:`ZeroPadShortcut` computes exactly the same thing as a module without parameters, so weights
load both ways between this network and ``monai.networks.nets.FlexibleUNet``.

MONAI has 2D ImageNet weights only for its EfficientNet encoders (``pretrained=True`` raises for a ResNet).
With ``torchvision_encoder`` the ResNet-18/34 encoder is built as torchvision's ResNet is (the "B" shortcut:
a 1x1 convolution without bias and a batch norm where the shape changes), so torchvision's ImageNet state
dict loads into it tensor for tensor (:func:`load_encoder_weights`: same names, minus the classifier ``fc``).
``input_normalization`` ``imagenet`` makes the network itself subtract ImageNet's mean and divide by its
standard deviation, so every path into it (training, validation, evaluation, ensembles, inference, the
TorchScript export) sees the same inputs: images in [0, 1], normalised inside. Neither option adds a
tensor to the state dict of the default network; the torchvision layout has its shortcut tensors.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import torch
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.resnet import ResNet, ResNetFeatures, get_inplanes, resnet_params
from torch import nn

from .errors import InputError, InputNotFoundError

# torchvision.transforms' ImageNet statistics (torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms())
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NORMALIZATIONS = ("none", "imagenet")
# torchvision's IMAGENET1K_V1 weights (torchvision.models.ResNet{18,34}_Weights.IMAGENET1K_V1.url): the file
# torchvision downloads, into the same cache ($TORCH_HOME/hub/checkpoints), the hash checked
TORCHVISION_WEIGHTS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
}


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


class InputNormalization(nn.Module):
    """``(x - mean) / std`` per channel; the statistics are not part of the state dict (non-persistent)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class TorchvisionResNetEncoder(ResNetFeatures):
    """MONAI's 2D ResNet-18/34 feature encoder in torchvision's layout: "B" shortcuts (1x1 convolution without
    bias, then batch norm), so torchvision's state dict (``fc`` left out) loads into it with the same names."""

    def __init__(self, model_name: str, in_channels: int = 3) -> None:
        if model_name not in TORCHVISION_WEIGHTS:
            raise InputError(
                f"pretrained_encoder needs network_def#backbone resnet18 or resnet34 (torchvision's ImageNet "
                f"ResNets), got {model_name!r}"
            )
        block, layers, *_ = resnet_params[model_name]
        ResNet.__init__(  # ResNetFeatures.__init__ fixes MONAI's "A" shortcut for resnet18/34
            self,
            block=block,
            layers=layers,
            block_inplanes=get_inplanes(),
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_stride=2,
            shortcut_type="B",
            feed_forward=False,
            bias_downsample=False,
        )


class ScriptableFlexibleUNet(FlexibleUNet):
    """``monai.networks.nets.FlexibleUNet`` (same arguments, same state dict) that TorchScript can compile.

    Args (besides FlexibleUNet's):
        input_normalization: ``none`` (the default: inputs as they come) or ``imagenet`` (the network normalises
            its [0, 1] inputs with ImageNet's mean and standard deviation first).
        torchvision_encoder: build the ResNet-18/34 encoder in torchvision's layout, for its ImageNet weights
            (:func:`load_encoder_weights`); the state dict then has the shortcut convolutions' tensors too.
    """

    def __init__(self, *args, input_normalization: str = "none", torchvision_encoder: bool = False, **kwargs) -> None:
        if input_normalization not in INPUT_NORMALIZATIONS:
            raise ValueError(
                f"input_normalization must be one of {', '.join(INPUT_NORMALIZATIONS)}, got {input_normalization!r}"
            )
        super().__init__(*args, **kwargs)
        if torchvision_encoder:
            backbone = kwargs.get("backbone", args[2] if len(args) > 2 else None)
            if kwargs.get("spatial_dims", 2) != 2:
                raise InputError("pretrained_encoder: torchvision's ImageNet ResNets are 2D (spatial_dims 2)")
            self.encoder = TorchvisionResNetEncoder(backbone, kwargs.get("in_channels", args[0] if args else 3))
        replace_partial_shortcuts(self)
        if input_normalization == "imagenet":
            self.input_normalization: nn.Module = InputNormalization(IMAGENET_MEAN, IMAGENET_STD)
        else:
            self.input_normalization = nn.Identity()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.input_normalization(inputs)
        enc_out = self.encoder(x)
        decoder_out = self.decoder(enc_out, self.skip_connect)
        return self.segmentation_head(decoder_out)


def torchvision_state_dict(source: str | os.PathLike, backbone: str) -> dict[str, torch.Tensor]:
    """The torchvision ResNet state dict of ``source``: ``imagenet`` (torchvision's IMAGENET1K_V1 download,
    cached where torchvision caches it) or a file (``torch.save(resnet.state_dict())``, or a dict holding it
    under ``state_dict`` or ``model``). A missing or unreadable file is a one-line :class:`InputError`."""
    if str(source) == "imagenet":
        if backbone not in TORCHVISION_WEIGHTS:
            raise InputError(f"pretrained_encoder imagenet: no torchvision ImageNet weights for {backbone!r}")
        try:
            return torch.hub.load_state_dict_from_url(
                TORCHVISION_WEIGHTS[backbone], map_location="cpu", progress=False, check_hash=True
            )
        except Exception as error:  # offline, proxy, disk full, bad hash
            reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
            raise InputError(
                f"pretrained_encoder imagenet: cannot download {TORCHVISION_WEIGHTS[backbone]} ({reason}); "
                "download it where you can and pass its path"
            ) from error
    path = Path(source).absolute()
    if not path.is_file():
        raise InputNotFoundError(f"pretrained_encoder {path} does not exist (a torchvision ResNet state dict)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split()).split(". ")[0][:300]
        raise InputError(
            f"pretrained_encoder {path} is unreadable (truncated or not a PyTorch file): {reason}"
        ) from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"pretrained_encoder {path} holds no state dict of tensors")
    return state


def load_encoder_weights(network: nn.Module, source: str | os.PathLike = "none") -> nn.Module:
    """``network`` (a :class:`ScriptableFlexibleUNet` built with ``torchvision_encoder``) with torchvision's
    ResNet weights of ``source`` in its encoder (``none``: unchanged). torchvision's names are the encoder's,
    so the mapping is the identity without the classifier (``fc.*``); every encoder tensor must be found with
    its shape, or a one-line :class:`InputError` names the file and what does not fit."""
    if str(source) == "none":
        return network
    encoder = getattr(network, "encoder", None)
    if not isinstance(encoder, TorchvisionResNetEncoder):
        raise InputError(
            f"pretrained_encoder {source}: the network's encoder is not in torchvision's layout "
            "(network_def#torchvision_encoder must be true; the bundles set it from pretrained_encoder)"
        )
    backbone = next(name for name in TORCHVISION_WEIGHTS if _layers(name) == _encoder_layers(encoder))
    state = {k: v for k, v in torchvision_state_dict(source, backbone).items() if not k.startswith("fc.")}
    expected = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    reshaped = [k for k in expected if k in found and found[k] != expected[k]]
    if missing or unexpected or reshaped:
        parts = [f"{len(missing)} tensor(s) missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        if reshaped:
            parts.append(f"{len(reshaped)} of another shape (e.g. {reshaped[0]}: {list(found[reshaped[0]])})")
        where = "torchvision's download" if str(source) == "imagenet" else str(Path(source).absolute())
        raise InputError(f"pretrained_encoder {where} is not a torchvision {backbone} state dict ({', '.join(parts)})")
    encoder.load_state_dict(state)
    return network


def _layers(backbone: str) -> list[int]:
    return list(resnet_params[backbone][1])


def _encoder_layers(encoder: nn.Module) -> list[int]:
    return [len(getattr(encoder, f"layer{i}")) for i in range(1, 5)]
