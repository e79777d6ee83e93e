"""Values, gradients and edge cases of every loss in custom_losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from custom_losses import (
    BalancedCrossEntropyLoss,
    CEDiceLoss,
    CrossEntropyLoss,
    DilatedBalancedCrossEntropyLoss,
    SoftDiceLoss,
    dilate,
    dilated_regions,
    region_balanced_weights,
)

ALL_LOSSES = {
    "ce": CrossEntropyLoss,
    "dice": SoftDiceLoss,
    "batch_dice": lambda: SoftDiceLoss(batch=True),
    "log_dice": lambda: SoftDiceLoss(log_loss=True, smooth_nr=1.0, smooth_dr=1.0),
    "ce_dice": CEDiceLoss,
    "balanced_ce": BalancedCrossEntropyLoss,
    "dbce": lambda: DilatedBalancedCrossEntropyLoss(radius=2),
    "dbce_batch": lambda: DilatedBalancedCrossEntropyLoss(radius=2, per_image=False),
}


def binary_case(shape=(3, 1, 12, 10), seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=dtype)
    target = torch.zeros(shape, dtype=dtype)
    target[..., 3:7, 2:6] = 1  # a square lesion in every image (in every slice in 3D)
    return logits, target


def as_two_channel(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over [0, z] equals sigmoid(z): the 2-channel twin of a binary logit map."""
    return torch.cat([torch.zeros_like(logits), logits], dim=1)


# ---------------------------------------------------------------- hand-computed values


def test_ce_hand_computed():
    logits = torch.tensor([0.0, 2.0, -1.0, 0.5]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 2, 2)
    p = torch.sigmoid(logits).flatten()
    expected = -(math.log(p[0]) + math.log(1 - p[1]) + math.log(1 - p[2]) + math.log(p[3])) / 4
    assert CrossEntropyLoss()(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_dice_hand_computed_per_image_and_batch():
    # probabilities chosen directly through logits: sigmoid(0) = 0.5, sigmoid(+-inf) ~ 1/0
    big = 30.0
    logits = torch.tensor([[big, 0.0, -big, -big], [big, big, big, -big]]).view(2, 1, 2, 2)
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    # image 1: p = [1, .5, 0, 0], g = [1, 1, 0, 0] -> 2 * 1.5 / (1.5 + 2) = 6/7
    # image 2: p = [1, 1, 1, 0], g = [1, 0, 0, 0] -> 2 * 1 / (3 + 1) = 1/2
    per_image = SoftDiceLoss()(logits, target).item()
    assert per_image == pytest.approx(1 - (6 / 7 + 1 / 2) / 2, abs=1e-6)
    # batch: 2 * 2.5 / (4.5 + 3) = 2/3
    assert SoftDiceLoss(batch=True)(logits, target).item() == pytest.approx(1 - 2 / 3, abs=1e-6)
    assert SoftDiceLoss(batch=True, log_loss=True)(logits, target).item() == pytest.approx(-math.log(2 / 3), abs=1e-6)
    # smoothing: (2 * 2.5 + 1) / (7.5 + 2)
    smoothed = SoftDiceLoss(batch=True, smooth_nr=1.0, smooth_dr=2.0)(logits, target).item()
    assert smoothed == pytest.approx(1 - 6 / 9.5, abs=1e-6)


def test_balanced_ce_weights_hand_computed():
    # 1 image, 8 pixels, 2 foreground: background weight 8 / (2 * 6), foreground 8 / (2 * 2)
    labels = torch.tensor([[0, 0, 1, 1, 0, 0, 0, 0]]).view(1, 2, 4)
    weights = region_balanced_weights(labels, num_regions=2)
    expected = torch.where(labels == 1, torch.tensor(2.0), torch.tensor(8 / 12))
    torch.testing.assert_close(weights, expected)
    logits = torch.randn(1, 1, 2, 4)
    ce = F.binary_cross_entropy_with_logits(logits, labels.unsqueeze(1).float(), reduction="none")[:, 0]
    loss = BalancedCrossEntropyLoss()(logits, labels.unsqueeze(1).float())
    torch.testing.assert_close(loss, (expected * ce).mean())


def test_dbce_regions_and_weights_hand_computed():
    # one lesion pixel in a 5x5 image, radius 1: the region is the lesion plus its 4 neighbours (a cross)
    labels = torch.zeros(1, 5, 5, dtype=torch.long)
    labels[0, 2, 2] = 1
    regions = dilated_regions(labels, num_classes=2, radius=1)
    cross = torch.zeros(5, 5, dtype=torch.long)
    cross[2, 1:4] = 1
    cross[1:4, 2] = 1
    torch.testing.assert_close(regions[0], cross)
    weights = DilatedBalancedCrossEntropyLoss(radius=1).pixel_weights(torch.zeros(1, 1, 5, 5), labels[:, None].float())
    # 25 pixels, 2 regions: cross (5 px) -> 25 / 10, background (20 px) -> 25 / 40
    expected = torch.where(cross == 1, torch.tensor(2.5), torch.tensor(25 / 40))
    torch.testing.assert_close(weights[0], expected)


def test_dbce_unlabelled_pixel_goes_to_smallest_dilated_class():
    # class 1 is big, class 2 a single pixel; the pixel between them is inside both dilations
    labels = torch.zeros(1, 7, 9, dtype=torch.long)
    labels[0, :, 0:3] = 1
    labels[0, 3, 5] = 2
    regions = dilated_regions(labels, num_classes=3, radius=2)
    assert regions[0, 3, 3] == 2  # in D_1 and D_2: D_2 is smaller
    assert regions[0, 0, 3] == 1  # only in D_1
    assert regions[0, 3, 5] == 2 and regions[0, 3, 1] == 1  # labelled pixels keep their class
    assert regions[0, 0, 8] == 0  # outside both


# ---------------------------------------------------------------- DBCE properties


def reference_balanced_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Balanced CE written out image by image and class by class, independent of the package's code."""
    two_class = logits.shape[1] == 1
    log_probs = F.logsigmoid(torch.cat([-logits, logits], 1)) if two_class else F.log_softmax(logits, 1)
    total = torch.zeros((), dtype=logits.dtype)
    for b in range(logits.shape[0]):
        n_pixels = labels[b].numel()
        present = [int(c) for c in labels[b].unique()]
        for c in present:
            in_class = labels[b, 0] == c
            weight = n_pixels / (len(present) * in_class.sum())
            total = total - weight * log_probs[b, c][in_class].sum()
    return total / labels.numel()


@pytest.mark.parametrize("spatial", [(12, 10), (6, 8, 7)])
def test_balanced_ce_and_dbce_radius_zero_match_reference(spatial):
    logits, target = binary_case((2, 1, *spatial), dtype=torch.float64)
    target[1] = 0  # an image with one class only
    expected = reference_balanced_ce(logits, target.long())
    torch.testing.assert_close(BalancedCrossEntropyLoss()(logits, target), expected)
    torch.testing.assert_close(DilatedBalancedCrossEntropyLoss(radius=0)(logits, target), expected)
    logits3 = torch.randn(2, 3, *spatial, dtype=torch.float64)
    labels3 = torch.randint(0, 3, (2, 1, *spatial)).double()
    labels3[1][labels3[1] == 2] = 0  # class 2 absent from image 1
    expected3 = reference_balanced_ce(logits3, labels3.long())
    torch.testing.assert_close(BalancedCrossEntropyLoss()(logits3, labels3), expected3)
    torch.testing.assert_close(DilatedBalancedCrossEntropyLoss(radius=0)(logits3, labels3), expected3)
    assert not torch.allclose(DilatedBalancedCrossEntropyLoss(radius=1)(logits3, labels3), expected3)


@pytest.mark.parametrize("spatial", [(20, 24), (9, 12, 10)])
@pytest.mark.parametrize("per_image", [True, False])
def test_dbce_weights_sum_to_n_with_equal_region_totals(spatial, per_image):
    labels = torch.zeros(3, *spatial, dtype=torch.long)
    labels[0, 2:5, 3:6] = 1
    labels[0, 6:8, 8:10] = 2
    labels[1, 1:3, 1:3] = 2  # class 1 absent from this image
    # image 2 has no lesion at all
    regions = dilated_regions(labels, num_classes=3, radius=2)
    weights = region_balanced_weights(regions, num_regions=3, per_image=per_image)
    assert torch.isfinite(weights).all()
    groups = [(weights[b], regions[b]) for b in range(3)] if per_image else [(weights, regions)]
    for w, r in groups:
        assert w.sum().item() == pytest.approx(w.numel(), rel=1e-5)
        present = [c for c in range(3) if (r == c).any()]
        totals = [w[r == c].sum().item() for c in present]
        for total in totals:
            assert total == pytest.approx(w.numel() / len(present), rel=1e-5)


@pytest.mark.parametrize("radius", [1, 2, 4])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dilate_matches_convolution_with_disk(radius, spatial_dims):
    gen = torch.Generator().manual_seed(radius)
    shape = (2, 2, 11, 13) if spatial_dims == 2 else (2, 2, 9, 8, 10)
    mask = torch.rand(shape, generator=gen) > 0.93
    grid = torch.stack(
        torch.meshgrid(*[torch.arange(-radius, radius + 1)] * spatial_dims, indexing="ij"), 0
    )  # ball: every offset within the radius
    ball = ((grid**2).sum(0) <= radius**2).float()
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    kernel = ball.expand(2, 1, *ball.shape)
    reference = conv(mask.float(), kernel, padding=radius, groups=2) > 0
    torch.testing.assert_close(dilate(mask, radius), reference)


def test_dbce_absent_class_and_bad_radius():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    labels = torch.zeros(2, 1, 8, 8)
    labels[0, 0, 2:4, 2:4] = 1  # class 2 never present, image 1 empty
    loss = DilatedBalancedCrossEntropyLoss(radius=3)(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="radius"):
        DilatedBalancedCrossEntropyLoss(radius=-1)
    with pytest.raises(ValueError, match="radius"):
        DilatedBalancedCrossEntropyLoss(radius=1.5)


# ---------------------------------------------------------------- agreement with references


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("smooth", [1e-5, 1.0])
def test_soft_dice_equals_monai_dice_loss(batch, smooth):
    logits = torch.randn(3, 3, 10, 9)
    labels = torch.randint(0, 3, (3, 1, 10, 9)).float()
    ours = SoftDiceLoss(batch=batch, smooth_nr=smooth, smooth_dr=smooth, include_background=True)(logits, labels)
    monai = DiceLoss(
        softmax=True, to_onehot_y=True, batch=batch, smooth_nr=smooth, smooth_dr=smooth, include_background=True
    )(logits, labels)
    torch.testing.assert_close(ours, monai)
    ours_fg = SoftDiceLoss(batch=batch, smooth_nr=smooth, smooth_dr=smooth)(logits, labels)
    monai_fg = DiceLoss(
        softmax=True, to_onehot_y=True, batch=batch, smooth_nr=smooth, smooth_dr=smooth, include_background=False
    )(logits, labels)
    torch.testing.assert_close(ours_fg, monai_fg)


@pytest.mark.parametrize("batch", [False, True])
def test_soft_label_dice_is_the_semimetric_equal_on_hard_labels_and_zero_at_a_soft_target(batch):
    logits = torch.randn(3, 3, 10, 9, dtype=torch.float64, requires_grad=True)
    hard = torch.randint(0, 3, (3, 1, 10, 9)).double()
    plain, semimetric = SoftDiceLoss(batch=batch), SoftDiceLoss(batch=batch, soft_label=True)
    value = semimetric(logits, hard)
    torch.testing.assert_close(value, plain(logits, hard))
    grad = torch.autograd.grad(value, logits)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(plain(logits, hard), logits)[0])
    # a soft target: the probabilities of some logits. The semimetric is 0 there and rises when the
    # prediction is made harder; the usual soft Dice is lower for the harder prediction (Wang et al. 2023)
    target_logits = torch.randn(3, 3, 10, 9, dtype=torch.float64)
    soft = torch.softmax(target_logits, dim=1)
    assert float(semimetric(target_logits, soft)) == pytest.approx(0.0, abs=1e-12)
    harder = 3 * target_logits
    assert float(semimetric(harder, soft)) > 1e-3
    assert float(plain(harder, soft)) < float(plain(target_logits, soft))
    ref = DiceLoss(softmax=True, soft_label=True, batch=batch, include_background=False, smooth_nr=0, smooth_dr=0)
    torch.testing.assert_close(semimetric(harder, soft), ref(harder, soft))


@pytest.mark.parametrize(
    "name", ["ce", "dice", "batch_dice", "log_dice", "ce_dice", "balanced_ce", "dbce", "dbce_batch"]
)
@pytest.mark.parametrize("spatial", [(12, 10), (5, 12, 10)])
def test_binary_sigmoid_equals_two_channel_softmax(name, spatial):
    logits, target = binary_case((3, 1, *spatial))
    loss = ALL_LOSSES[name]()
    torch.testing.assert_close(loss(logits, target), loss(as_two_channel(logits), target), rtol=1e-5, atol=1e-6)
    # one-hot targets give the same value as label maps
    one_hot = torch.cat([1 - target, target], dim=1)
    torch.testing.assert_close(loss(as_two_channel(logits), one_hot), loss(logits, target), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- gradients and edge cases


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_gradcheck_float64(name):
    logits, target = binary_case((2, 1, 6, 5), dtype=torch.float64)
    target = target.clone()
    target[1] = 0  # one empty image
    logits.requires_grad_(True)
    loss = ALL_LOSSES[name]()
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,), eps=1e-6, atol=1e-5)
    multi = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 5, 4)).double()
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (multi,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", list(ALL_LOSSES))
@pytest.mark.parametrize("fill", [0.0, 1.0])
@pytest.mark.parametrize("spatial", [(8, 8), (4, 8, 8)])
def test_empty_and_full_masks_are_finite(name, fill, spatial):
    logits = torch.randn(2, 1, *spatial, requires_grad=True)
    target = torch.full((2, 1, *spatial), fill)
    loss = ALL_LOSSES[name]()(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_dice_gives_no_gradient_on_an_empty_image():
    """The documented trap: per-image soft Dice with no smoothing ignores lesion-free images."""
    logits = torch.randn(1, 1, 8, 8, requires_grad=True)
    SoftDiceLoss()(logits, torch.zeros(1, 1, 8, 8)).backward()
    assert logits.grad.abs().max() == 0
    logits.grad = None
    CrossEntropyLoss()(logits, torch.zeros(1, 1, 8, 8)).backward()
    assert logits.grad.abs().max() > 0


def test_ce_dice_weights_and_skipped_terms():
    logits, target = binary_case()
    ce, dice = CrossEntropyLoss()(logits, target), SoftDiceLoss()(logits, target)
    loss = CEDiceLoss(alpha=0.3)
    torch.testing.assert_close(loss(logits, target), 0.3 * ce + 0.7 * dice)
    loss.alpha = 1.0
    torch.testing.assert_close(loss(logits, target), ce)
    loss.alpha = 0.0
    torch.testing.assert_close(loss(logits, target), dice)
    with pytest.raises(ValueError, match="alpha"):
        loss.alpha = 1.5


def test_losses_are_float32_under_bf16_input():
    logits, target = binary_case()
    for name, make in ALL_LOSSES.items():
        value = make()(logits.bfloat16(), target)
        assert value.dtype == torch.float32, name


def test_shape_errors_say_what_was_expected():
    with pytest.raises(ValueError, match=r"target batch and spatial size must match"):
        CrossEntropyLoss()(torch.randn(2, 1, 8, 8), torch.zeros(2, 1, 8, 9))
    with pytest.raises(ValueError, match=r"1 channel \(labels\) or 3 \(one-hot\)"):
        SoftDiceLoss()(torch.randn(2, 3, 8, 8), torch.zeros(2, 2, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        DilatedBalancedCrossEntropyLoss()(torch.randn(8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="smooth"):
        SoftDiceLoss(smooth_nr=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_cuda_matches_cpu(name):
    logits, target = binary_case((4, 1, 32, 30))
    loss = ALL_LOSSES[name]()
    cpu = loss(logits, target)
    gpu = loss(logits.cuda(), target.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.isfinite(loss(logits.cuda(), target.cuda()))
