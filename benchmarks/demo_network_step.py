"""Seconds per training step of the demo's network candidates (FlexibleUNet, AdamW, BCE), one run.

    python benchmarks/demo_network_step.py                 # CPU, batch 8 of 64x64 frames, as the demo
    python benchmarks/demo_network_step.py --size=128      # another frame size

Used to choose the demo's network (``DEMO_SETTINGS`` in scripts/run_study.py): all candidates are timed
in one process, so the ratios compare like with like.
"""

from __future__ import annotations

import time

import fire
import torch

from custom_losses.networks import ScriptableFlexibleUNet

CANDIDATES = {
    "resnet18, decoder 256-16": ("resnet18", (256, 128, 64, 32, 16)),
    "resnet10, decoder 256-16": ("resnet10", (256, 128, 64, 32, 16)),
    "resnet10, decoder 128-8 (demo)": ("resnet10", (128, 64, 32, 16, 8)),
    "resnet10, decoder 64-8": ("resnet10", (64, 32, 16, 8, 8)),
}


def step_seconds(backbone: str, decoder: tuple[int, ...], size: int, batch: int, steps: int) -> tuple[float, float]:
    """Mean seconds per forward + backward + optimizer step after 3 warm-up steps, and parameters (M)."""
    torch.manual_seed(0)
    network = ScriptableFlexibleUNet(
        in_channels=3, out_channels=1, backbone=backbone, pretrained=False, spatial_dims=2, decoder_channels=decoder
    ).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(network.parameters(), 1e-3)
    images = torch.rand(batch, 3, size, size).to(memory_format=torch.channels_last)
    labels = (torch.rand(batch, 1, size, size) > 0.5).float()
    for step in range(steps + 3):
        if step == 3:
            started = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(network(images), labels).backward()
        optimizer.step()
    parameters = sum(p.numel() for p in network.parameters()) / 1e6
    return (time.perf_counter() - started) / steps, parameters


def main(size: int = 64, batch: int = 8, steps: int = 12) -> None:
    print(f"batch {batch} of {size}x{size} frames, {torch.get_num_threads()} threads, torch {torch.__version__}")
    baseline = None
    for name, (backbone, decoder) in CANDIDATES.items():
        seconds, parameters = step_seconds(backbone, decoder, size, batch, steps)
        baseline = baseline or seconds
        print(f"{name:32s} {seconds:.3f} s/step ({seconds / baseline:.2f}x the first), {parameters:.1f}M parameters")


if __name__ == "__main__":
    fire.Fire(main)
