"""Labels with known uncertainty (custom_losses.label_uncertainty): the sampler draws from the law whose
probabilities and expected volumes the module computes; width 0 is the label itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from custom_losses.label_uncertainty import (
    ClassIndicesd,
    ExpectedLabeld,
    RandLabelUncertaintyd,
    class_probabilities,
    completed_probabilities,
    draw_annotation,
    expected_class_volumes,
    signed_distances,
)
from custom_losses.metrics import summarize_volumes, volume_metrics

CLASSES = {1: "anterior", 2: "posterior"}


def two_part_label(shape=(14, 22, 14)) -> MetaTensor:
    """An ellipsoid cut obliquely into an anterior (1) and a posterior (2) part, as a ``(1, *shape)`` float
    MetaTensor (the bundles' training label): background, both parts and the lines where all three meet."""
    grid = np.stack(np.meshgrid(*[np.arange(n) + 0.5 for n in shape], indexing="ij"))
    centre = np.array(shape) / 2 + np.array([0.3, -0.2, 0.1])
    semi_axes = np.array([4.2, 8.3, 4.6])
    offsets = (grid - centre[:, None, None, None]) / semi_axes[:, None, None, None]
    inside = (offsets**2).sum(0) < 1
    anterior = grid[1] + 0.4 * grid[0] < centre[1] + 0.4 * centre[0]
    label = np.where(inside, np.where(anterior, 1, 2), 0).astype(np.float32)
    return MetaTensor(torch.from_numpy(label)[None], affine=torch.eye(4))


def draws(label: torch.Tensor, width: float, count: int, seed: int = 0) -> np.ndarray:
    """``count`` annotations of ``label`` from the bundles' transform, ``(count, *spatial)`` int8."""
    transform = RandLabelUncertaintyd(keys="label", width=width)
    transform.set_random_state(seed)
    return np.stack([transform({"label": label})["label"][0].numpy().astype(np.int8) for _ in range(count)])


def test_many_annotations_have_the_computed_class_frequencies_and_expected_volumes():
    label, width, count = two_part_label(), 2.5, 3000
    probabilities = class_probabilities(label, width)
    assert np.allclose(probabilities.sum(0), 1.0) and probabilities.min() >= 0
    # the volume has voxels where the three classes meet, each with a real chance
    assert (probabilities > 0.1).all(0).sum() > 10
    annotations = draws(label, width, count)

    # per voxel: each class's frequency over the draws is a binomial proportion around p_c(x) (the voxels
    # share each draw's shifts, so their errors are correlated: a bound per voxel, no pooled statistic)
    for c in range(3):
        frequency = (annotations == c).mean(0)
        p = probabilities[c]
        certain = (p == 0) | (p == 1)
        assert np.array_equal(frequency[certain], p[certain]), f"class {c}: a certain voxel changed"
        sd = np.sqrt(p * (1 - p) / count)
        z = np.abs(frequency - p)[~certain] / sd[~certain]
        assert z.max() < 5.5, f"class {c}: a voxel's frequency is {z.max():.1f} s.d. from its probability"

    # per class: the mean volume over the draws equals the expected volume, within the sampling error
    expected = expected_class_volumes(label, width)
    expected_wider = expected_class_volumes(label, 1.2 * width)
    sizes = {
        "anterior": (annotations == 1).sum((1, 2, 3)),
        "posterior": (annotations == 2).sum((1, 2, 3)),
        "whole": (annotations > 0).sum((1, 2, 3)),
    }
    for name, volumes in sizes.items():
        tolerance = 4 * volumes.std(ddof=1) / math.sqrt(count)  # 4 standard errors of the mean
        assert abs(volumes.mean() - expected[name]) < tolerance, (name, volumes.mean(), expected[name], tolerance)
        # and the test can tell: the law of another width is outside the tolerance
        assert abs(volumes.mean() - expected_wider[name]) > tolerance, name
    true = {"anterior": float((label == 1).sum()), "posterior": float((label == 2).sum())}
    assert expected["whole"] == pytest.approx(expected["anterior"] + expected["posterior"])
    assert expected["whole"] > true["anterior"] + true["posterior"]  # a dilation adds more than an erosion takes


def test_the_probabilities_are_the_average_annotation_over_the_shifts():
    """Deterministic: averaged over a fine grid of the two uniform shifts, the sampler's annotation is the
    computed probability map (each indicator's average is within 1/K of its probability, K points per shift)."""
    label, width, k = two_part_label(), 1.7, 400
    phi, psi = signed_distances(label, width)
    levels = -width + 2 * width * (np.arange(k) + 0.5) / k
    total = np.zeros((3, *phi.shape))
    for r in levels:
        for s in levels[::20]:  # the cut shift on a coarser grid: 20 x fewer draws, bound 20 / k there
            annotation = draw_annotation(phi, psi, (r, s))
            total += np.stack([annotation == c for c in range(3)])
    average = total / (k * (k // 20))
    assert np.abs(average - class_probabilities(label, width)).max() <= 1 / k + 20 / k + 1e-12


def test_width_zero_returns_the_label_unchanged():
    label = two_part_label()
    data = {"label": label, "image": torch.zeros_like(label)}
    out = RandLabelUncertaintyd(keys="label", width=0)(data)
    assert out["label"] is label and out["image"] is data["image"]
    one_hot = np.stack([(label[0] == c).numpy() for c in range(3)]).astype(np.float64)
    assert np.array_equal(class_probabilities(label, 0), one_hot)
    volumes = expected_class_volumes(label, 0, voxel_volume=0.001)
    assert volumes["anterior"] == pytest.approx(float((label == 1).sum()) / 1000)
    assert volumes["whole"] == pytest.approx(float((label > 0).sum()) / 1000)
    expected = ExpectedLabeld(keys="label", output_keys="expected_label", width=0)(data)["expected_label"]
    assert expected.shape == (3, *label.shape[1:]) and np.array_equal(expected.numpy(), one_hot)


def test_class_indices_of_a_soft_label_are_its_argmax_and_an_index_label_stays():
    label = two_part_label()
    one_hot = ExpectedLabeld(keys="label", output_keys="label", width=0)({"label": label})["label"]
    assert torch.equal(ClassIndicesd(keys="label")({"label": one_hot})["label"], label)
    soft = ExpectedLabeld(keys="label", output_keys="label", width=2)({"label": label})["label"]
    indices = ClassIndicesd(keys="label")({"label": soft})["label"]
    assert indices.shape == label.shape and torch.equal(indices[0], soft.argmax(0).float())
    assert ClassIndicesd(keys="label")({"label": label})["label"] is label


def test_each_use_draws_a_new_annotation_that_keeps_the_label_format():
    label = two_part_label()
    transform = RandLabelUncertaintyd(keys="label", width=2)
    transform.set_random_state(1)
    first, second = transform({"label": label})["label"], transform({"label": label})["label"]
    assert not torch.equal(first, second)
    for out in (first, second):
        assert isinstance(out, MetaTensor) and out.dtype == label.dtype and out.shape == label.shape
        assert torch.equal(out.affine, label.affine) and set(torch.unique(out).tolist()) <= {0.0, 1.0, 2.0}
    assert torch.equal(label, two_part_label())  # the cached label is not written into
    again = RandLabelUncertaintyd(keys="label", width=2)
    again.set_random_state(1)
    assert torch.equal(again({"label": label})["label"], first)  # seeded like every MONAI random transform


def test_labels_with_one_part_or_none_and_bad_inputs():
    label = two_part_label()
    only_anterior = torch.where(label > 0, 1.0, 0.0)
    probabilities = class_probabilities(only_anterior, 2)
    assert probabilities[2].max() == 0 and probabilities[1].sum() > (only_anterior > 0).sum()
    empty = torch.zeros_like(label)
    assert np.array_equal(class_probabilities(empty, 3)[0], np.ones(label.shape[1:]))
    with pytest.raises(ValueError, match="label_uncertainty_width must be a number >= 0"):
        RandLabelUncertaintyd(keys="label", width=-1)
    with pytest.raises(ValueError, match="labels of 0, 1 and 2 only"):
        class_probabilities(label * 2, 1)


def test_evaluation_rows_hold_the_expected_volumes_and_their_errors():
    label, width = two_part_label(), 1.5
    expected = torch.from_numpy(class_probabilities(label, width))
    prob = torch.softmax(torch.randn(3, *label.shape[1:], generator=torch.Generator().manual_seed(0)), 0)
    row = volume_metrics(prob, label, 0.001, CLASSES, completed_probabilities(expected, label))
    volumes = expected_class_volumes(label, width, voxel_volume=0.001)
    for name in ("anterior", "posterior", "whole"):
        assert row[f"{name}_expected_ml"] == pytest.approx(volumes[name])
        assert row[f"{name}_error_soft_expected_ml"] == pytest.approx(row[f"{name}_soft_ml"] - volumes[name])
        assert row[f"{name}_error_hard_expected_ml"] == pytest.approx(row[f"{name}_hard_ml"] - volumes[name])
    summary = summarize_volumes([row, row], CLASSES, None)
    assert summary["whole_error_soft_expected_ml"] == pytest.approx(row["whole_error_soft_expected_ml"])
    assert summary["whole_bland_altman_soft_expected"]["bias"] == pytest.approx(row["whole_error_soft_expected_ml"])
    # voxels outside the grid the law was computed in (all-zero probabilities) count as the label's class
    cropped = expected.clone()
    cropped[:, :2] = 0
    completed = completed_probabilities(cropped, label)
    assert torch.equal(completed[:, 2:], expected[:, 2:].double())
    assert completed[:, :2].sum(0).eq(1).all() and torch.equal(completed[1, :2], (label[0, :2] == 1).double())
