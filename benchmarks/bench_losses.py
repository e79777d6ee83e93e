"""Cost of each loss alone (forward + backward), as a ratio to BCE, and against a full training step.

    python benchmarks/bench_losses.py                      # CPU, 16x1x352x352
    python benchmarks/bench_losses.py --device=cuda        # GPU, adds the FlexibleUNet(resnet18) step
    python benchmarks/bench_losses.py --output=bench.json  # also write the figures as JSON

All figures come from one run, so the ratios compare like with like.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import fire
import torch

from custom_losses import (
    BalancedCrossEntropyLoss,
    CEDiceLoss,
    CrossEntropyLoss,
    DilatedBalancedCrossEntropyLoss,
    SoftDiceLoss,
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fns: dict[str, Callable[[], None]], device: torch.device, repeats: int, warmup: int = 3) -> dict:
    """Median seconds per call of each function, timed round-robin so background load hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def synthetic_batch(batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and a target with a few disc lesions per image (about 10% foreground)."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    target = torch.zeros(batch, 1, size, size)
    for b in range(batch):
        for _ in range(3):
            cy, cx = torch.randint(0, size, (2,), generator=gen)
            radius = size * (0.05 + 0.1 * torch.rand(1, generator=gen))
            target[b, 0] += (((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2).float()
    logits = torch.randn(batch, 1, size, size, generator=gen)
    return logits.to(device), target.clamp(max=1).to(device)


def loss_step(loss_fn: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x = logits.detach().requires_grad_(True)
        loss_fn(x, target).backward()

    return step


def train_step(device: torch.device, batch: int, size: int, loss_fn: torch.nn.Module) -> Callable[[], None]:
    """One FlexibleUNet(resnet18) step: forward in bf16 autocast on GPU, backward, AdamW update."""
    from monai.networks.nets import FlexibleUNet

    net = FlexibleUNet(in_channels=3, out_channels=1, backbone="resnet18", pretrained=False).to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    _, target = synthetic_batch(batch, size, device)
    return network_step(net, loss_fn, images, target)


def network_step(
    network: torch.nn.Module, loss_fn: torch.nn.Module, images: torch.Tensor, target: torch.Tensor
) -> Callable[[], None]:
    """A training step of ``network`` as the bundles take it: channels_last, bf16 autocast on GPU, AdamW."""
    network = network.to(memory_format=torch.channels_last)
    images = images.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
            loss = loss_fn(network(images), target)
        loss.backward()
        optimizer.step()

    return step


def main(
    device: str = "cpu",
    batch: int = 16,
    size: int = 352,
    repeats: int = 15,
    radius: int = 5,
    train_step_too: bool | None = None,
    output: str | None = None,
) -> None:
    """Time every loss alone and, optionally, a full FlexibleUNet training step.

    Args:
        device: ``cpu`` or ``cuda``.
        batch: batch size.
        size: square image size.
        repeats: timed calls per measurement (the median is reported).
        radius: DBCE dilation radius.
        train_step_too: also time a FlexibleUNet(resnet18) training step with BCE and DBCE
            (default: only on CUDA; on CPU it takes tens of seconds per step).
        output: optional JSON file for the figures.
    """
    dev = torch.device(device)
    torch.backends.cudnn.benchmark = True
    logits, target = synthetic_batch(batch, size, dev)
    losses = {
        "bce": CrossEntropyLoss(),
        "soft_dice": SoftDiceLoss(),
        "batch_dice": SoftDiceLoss(batch=True),
        "ce_dice": CEDiceLoss(alpha=0.5),
        "balanced_ce": BalancedCrossEntropyLoss(),
        f"dbce_r{radius}": DilatedBalancedCrossEntropyLoss(radius=radius),
        "dbce_r9": DilatedBalancedCrossEntropyLoss(radius=9),
    }
    seconds = time_calls({name: loss_step(fn, logits, target) for name, fn in losses.items()}, dev, repeats)
    report: dict = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.processor() or 'x86'})",
        "torch_threads": torch.get_num_threads(),
        "shape": [batch, 1, size, size],
        "loss_ms": {name: round(s * 1e3, 3) for name, s in seconds.items()},
        "ratio_to_bce": {name: round(s / seconds["bce"], 3) for name, s in seconds.items()},
    }
    if train_step_too if train_step_too is not None else dev.type == "cuda":
        steps = {
            "bce": train_step(dev, batch, size, CrossEntropyLoss()),
            "dbce": train_step(dev, batch, size, DilatedBalancedCrossEntropyLoss(radius=radius)),
        }
        step_seconds = time_calls(steps, dev, repeats)
        step_bce, step_dbce = step_seconds["bce"], step_seconds["dbce"]
        report["train_step_ms"] = {"bce": round(step_bce * 1e3, 3), f"dbce_r{radius}": round(step_dbce * 1e3, 3)}
        report["dbce_loss_share_of_train_step"] = round(seconds[f"dbce_r{radius}"] / step_dbce, 4)
        report["dbce_step_over_bce_step"] = round(step_dbce / step_bce, 4)
    print(json.dumps(report, indent=4))
    if output:
        Path(output).write_text(json.dumps(report, indent=4) + "\n")


if __name__ == "__main__":
    fire.Fire(main)
