"""BatchAugmentation: the same images as MONAI's per-image transforms, the same parameter distributions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import AdjustContrast, Affine, Compose, Flip, ShiftIntensity

from custom_losses.augment import BatchAugmentation

HEIGHT, WIDTH = 40, 56  # not square: the pixel-to-normalised conversion must use each axis' own size


def smooth_batch(batch: int = 2, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    image = F.avg_pool2d(torch.rand(batch, channels, HEIGHT, WIDTH, generator=generator), 5, 1, 2)
    label = (image[:, :1] > image[:, :1].median()).float()
    return image, label


def identity_parameters(batch: int, channels: int = 3, **changes: torch.Tensor) -> dict[str, torch.Tensor]:
    parameters = {
        "flips": torch.zeros(batch, 2, dtype=torch.bool),
        "angles": torch.zeros(batch),
        "scales": torch.ones(batch, 2),
        "intensity_factors": torch.ones(batch, channels),
        "offsets": torch.zeros(batch),
        "gammas": torch.ones(batch),
    }
    return {**parameters, **changes}


@pytest.mark.parametrize(
    "flips, angle, scales",
    [((0, 0), 0.0, (1.0, 1.0)), ((1, 0), 0.0, (1.0, 1.0)), ((0, 1), 0.0, (1.0, 1.0)), ((0, 0), 0.3, (1.0, 1.0)),
     ((0, 0), 0.0, (1.2, 0.9)), ((1, 1), -0.4, (0.85, 1.15))],
)  # fmt: skip
def test_geometry_matches_monai_flip_then_affine(flips, angle, scales):
    image, label = smooth_batch()
    monai_chain = [Flip(spatial_axis=axis) for axis in (0, 1) if flips[axis]]
    expected = {}
    for key, mode in (("image", "bilinear"), ("label", "nearest")):
        chain = Compose(
            monai_chain
            + [Affine(rotate_params=angle, scale_params=scales, mode=mode, padding_mode="zeros", image_only=True)]
        )
        expected[key] = torch.stack([chain(item).as_tensor() for item in (image if key == "image" else label)])
    parameters = identity_parameters(
        2,
        flips=torch.tensor([flips, flips], dtype=torch.bool),
        angles=torch.full((2,), angle),
        scales=torch.tensor([scales, scales]),
    )
    augmented, augmented_label = BatchAugmentation().augment(image, label, parameters)
    torch.testing.assert_close(augmented, expected["image"], atol=1e-5, rtol=0)
    # nearest neighbour may round a pixel exactly between two others either way: allow a handful
    assert (augmented_label != expected["label"]).sum() <= 3
    assert set(augmented_label.unique().tolist()) <= {0.0, 1.0}


def test_intensity_matches_monai_scale_shift_and_contrast():
    image, label = smooth_batch()
    factors = torch.tensor([[0.9, 1.1, 1.05], [1.0, 1.0, 1.0]])
    parameters = identity_parameters(
        2, intensity_factors=factors, offsets=torch.tensor([0.05, -0.08]), gammas=torch.tensor([0.7, 1.4])
    )
    augmented, augmented_label = BatchAugmentation().augment(image, label, parameters)
    for index in range(2):
        expected = image[index] * factors[index][:, None, None]  # RandScaleIntensityd(channel_wise=True)
        expected = ShiftIntensity(float(parameters["offsets"][index]))(expected)
        expected = AdjustContrast(float(parameters["gammas"][index]))(expected)
        torch.testing.assert_close(augmented[index], torch.as_tensor(expected), atol=1e-5, rtol=0)
    torch.testing.assert_close(augmented_label, label, atol=0, rtol=0)


def test_identity_parameters_leave_the_batch_unchanged():
    image, label = smooth_batch()
    augmented, augmented_label = BatchAugmentation().augment(image, label, identity_parameters(2))
    torch.testing.assert_close(augmented, image, atol=1e-5, rtol=0)
    assert torch.equal(augmented_label, label)


def test_parameter_distributions():
    augmentation = BatchAugmentation(
        flip_prob=0.3, affine_prob=0.6, rotate_range=0.5, scale_range=0.2, intensity_prob=0.4, gamma=(0.7, 1.5)
    )
    torch.manual_seed(0)
    samples = 20_000
    parameters = augmentation.sample_parameters(samples, 3, torch.device("cpu"))
    assert parameters["flips"].float().mean(0).sub(0.3).abs().max() < 0.02
    rotated = parameters["angles"] != 0
    assert abs(rotated.float().mean() - 0.6) < 0.02
    assert torch.equal(rotated, (parameters["scales"] != 1).all(1))  # rotation and scaling come together
    assert parameters["angles"].abs().max() <= 0.5 and parameters["angles"][rotated].abs().mean() > 0.23
    assert ((parameters["scales"] - 1).abs() <= 0.2 + 1e-6).all()
    scaled = (parameters["intensity_factors"] != 1).all(1)
    assert abs(scaled.float().mean() - 0.4) < 0.02
    assert ((parameters["intensity_factors"] - 1).abs() <= 0.15 + 1e-6).all()
    assert parameters["intensity_factors"][scaled].std(1).mean() > 0.05  # channel-wise, not one factor per image
    shifted, adjusted = parameters["offsets"] != 0, parameters["gammas"] != 1
    assert abs(shifted.float().mean() - 0.4) < 0.02 and abs(adjusted.float().mean() - 0.4) < 0.02
    assert abs((shifted & adjusted).float().mean() - 0.16) < 0.02  # independent draws
    assert parameters["gammas"][adjusted].min() >= 0.7 and parameters["gammas"][adjusted].max() <= 1.5


def test_prepare_batch_moves_augments_and_repeats_with_the_seed():
    image, label = smooth_batch(batch=8)
    batch = {"image": MetaTensor(image), "label": MetaTensor(label)}
    augmentation = BatchAugmentation()
    torch.manual_seed(3)
    first = augmentation(batch, torch.device("cpu"))
    torch.manual_seed(3)
    again = augmentation(batch, torch.device("cpu"))
    torch.manual_seed(4)
    other = augmentation(batch, torch.device("cpu"))
    assert type(first[0]) is torch.Tensor and type(first[1]) is torch.Tensor  # no metadata tracking
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], image)


def test_every_image_gets_its_own_parameters():
    image, label = smooth_batch(batch=1)
    batch = {"image": image.expand(16, -1, -1, -1), "label": label.expand(16, -1, -1, -1)}
    torch.manual_seed(0)
    augmented, _ = BatchAugmentation(flip_prob=0.5, affine_prob=1.0)(batch)
    distinct = {tuple(item.flatten()[:50].tolist()) for item in augmented}
    assert len(distinct) == 16


@pytest.mark.parametrize(
    "image_shape, label_shape",
    [((2, 3, 8, 8, 8), (2, 1, 8, 8, 8)), ((2, 3, 8, 8), (2, 1, 8, 6)), ((2, 3, 8, 8), (3, 1, 8, 8))],
)
def test_bad_shapes_are_named(image_shape, label_shape):
    with pytest.raises(ValueError, match=r"2D batches.*got image"):
        BatchAugmentation().augment(torch.zeros(image_shape), torch.zeros(label_shape))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="flip_prob"):
        BatchAugmentation(flip_prob=1.5)
    with pytest.raises(ValueError, match="gamma"):
        BatchAugmentation(gamma=(1.5, 0.7))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    image, label = smooth_batch(batch=4)
    augmentation = BatchAugmentation()
    parameters = augmentation.sample_parameters(4, 3, torch.device("cpu"))
    on_cpu = augmentation.augment(image, label, parameters)
    on_gpu = augmentation.augment(image.cuda(), label.cuda(), {k: v.cuda() for k, v in parameters.items()})
    torch.testing.assert_close(on_gpu[0].cpu(), on_cpu[0], atol=1e-4, rtol=0)
    assert (on_gpu[1].cpu() != on_cpu[1]).sum() <= 4
