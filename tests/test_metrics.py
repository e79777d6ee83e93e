"""Lesion metrics, calibration and the evaluation writer against hand-computed cases."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from monai.data import MetaTensor

from custom_losses.handlers import LesionMetricsWriter
from custom_losses.metrics import (
    ReliabilityHistogram,
    bland_altman,
    image_metrics,
    summarize,
    summarize_volumes,
    volume_metrics,
)


def test_image_metrics_hand_computed():
    prob = torch.tensor([[0.9, 0.8, 0.2], [0.6, 0.1, 0.0]])
    label = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    row = image_metrics(prob, label)
    # predicted {0, 1, 3}, true {0, 1, 2}: intersection 2
    assert row["dice"] == pytest.approx(2 * 2 / (3 + 3))
    assert row["iou"] == pytest.approx(2 / 4)
    assert (row["true_area"], row["pred_area"]) == (3, 3)
    assert row["soft_area"] == pytest.approx(2.6)
    assert row["fp_area_fraction"] == pytest.approx(1 / 6)
    assert row["area_error_hard"] == 0.0
    assert row["area_error_soft"] == pytest.approx((2.6 - 3) / 3)
    assert row["has_lesion"] and not row["pred_empty"]


def test_galdran_convention_for_empty_masks():
    empty = torch.zeros(4, 4)
    both_empty = image_metrics(torch.full((4, 4), 0.2), empty)
    assert both_empty["dice"] == 1.0 and both_empty["iou"] == 1.0 and both_empty["pred_empty"]
    assert math.isnan(both_empty["area_error_hard"])
    false_lesion = image_metrics(torch.eye(4), empty)
    assert false_lesion["dice"] == 0.0 and false_lesion["fp_area_fraction"] == pytest.approx(4 / 16)
    missed = image_metrics(torch.zeros(4, 4), torch.eye(4))
    assert missed["dice"] == 0.0 and missed["area_error_hard"] == -1.0
    with pytest.raises(ValueError, match="differs"):
        image_metrics(torch.zeros(4, 4), torch.zeros(4, 5))


def test_reliability_histogram_and_ece():
    histogram = ReliabilityHistogram(num_bins=2)
    # bin [0, .5): probs .1, .3 with labels 0, 1 -> mean .2, frequency .5
    # bin [.5, 1]: probs .9, 1.0 with labels 1, 1 -> mean .95, frequency 1
    histogram.update(torch.tensor([0.1, 0.3]), torch.tensor([0.0, 1.0]))
    histogram.update(torch.tensor([0.9, 1.0]), torch.tensor([1.0, 1.0]))
    assert histogram.ece() == pytest.approx(0.5 * 0.3 + 0.5 * 0.05)
    curve = histogram.curve()
    assert curve["count"] == [2, 2]
    assert curve["mean_probability"] == pytest.approx([0.2, 0.95])
    assert curve["foreground_frequency"] == pytest.approx([0.5, 1.0])
    assert math.isnan(ReliabilityHistogram().ece())


def test_summary_over_lesion_and_lesion_free_images():
    lesion = torch.zeros(4, 4)
    lesion[:2, :2] = 1
    rows = [
        {**image_metrics(lesion * 0.9, lesion), "lesion_free": False},  # perfect
        {**image_metrics(torch.zeros(4, 4), lesion), "lesion_free": False},  # missed
        {**image_metrics(torch.zeros(4, 4), torch.zeros(4, 4)), "lesion_free": True},  # quiet
        {**image_metrics(torch.eye(4), torch.zeros(4, 4)), "lesion_free": True},  # false lesion
    ]
    summary = summarize(rows)
    assert summary["dice_lesion"] == pytest.approx(0.5)
    assert summary["dice_all"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert summary["predicted_empty_share"] == pytest.approx(2 / 4)
    assert summary["ideal_empty_share"] == pytest.approx(2 / 4)
    assert summary["lesion_free_fp_rate"] == pytest.approx(0.5)
    assert summary["lesion_free_fp_area"] == pytest.approx((0 + 4 / 16) / 2)
    assert summary["area_error_hard"] == pytest.approx((0 + -1) / 2)
    assert summary["area_error_soft"] == pytest.approx(((3.6 - 4) / 4 - 1) / 2)
    assert summary["median_area_error_hard"] == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="no evaluated images"):
        summarize([])


class FakeEngine:
    def __init__(self, output):
        self.state = type("State", (), {"output": output})()


def test_writer_files_are_complete_and_named(tmp_path):
    writer = LesionMetricsWriter(tmp_path / "eval", extra={"fold": 2})
    label = torch.zeros(1, 4, 4)
    label[0, 1:3, 1:3] = 1
    items = [
        {
            "prob": label * 0.8,
            "label": MetaTensor(label, meta={"filename_or_obj": "/data/a.png"}),
            "lesion_free": False,
        },
        {"prob": torch.zeros(1, 4, 4), "label": torch.zeros(1, 4, 4), "lesion_free": torch.tensor(True)},
    ]
    writer.collect(FakeEngine(items))
    summary = writer.write()
    assert summary["fold"] == 2 and summary["num_images"] == 2 and summary["dice_all"] == 1.0
    with open(tmp_path / "eval" / "per_image.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["image"] for r in rows] == ["a.png", "image_00001"]
    assert rows[1]["area_error_hard"] == ""  # undefined without a lesion, not NaN
    on_disk = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert on_disk["lesion_free_fp_rate"] == 0.0 and on_disk["ece_bins"] == 20
    assert not list((tmp_path / "eval").glob("*.tmp"))
    with pytest.raises(ValueError, match="1-channel probability"):
        writer.collect(FakeEngine([{"prob": torch.zeros(2, 4, 4), "label": torch.zeros(1, 4, 4)}]))


def test_volume_metrics_hand_computed():
    label = torch.tensor([0, 1, 1, 2, 2, 2]).view(1, 1, 2, 3)  # anterior 2 voxels, posterior 3
    prob = torch.zeros(3, 1, 2, 3)
    prob[:, 0, 0, :] = torch.tensor([[0.8, 0.2, 0.0], [0.2, 0.8, 0.5], [0.0, 0.0, 0.5]])
    prob[:, 0, 1, :] = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.9, 1.0, 1.0]])
    # argmax: [0, 1, 1 (tie 1/2 -> first), 2, 2, 2]; voxel 2 ml
    row = volume_metrics(prob, label, voxel_ml=2.0, class_names={1: "anterior", 2: "posterior"})
    assert row["anterior_dice"] == pytest.approx(1.0)
    assert row["posterior_dice"] == pytest.approx(1.0)
    assert row["anterior_true_ml"] == 4.0 and row["anterior_hard_ml"] == 4.0
    assert row["anterior_soft_ml"] == pytest.approx((0.2 + 0.8 + 0.5 + 0.1) * 2)
    assert row["posterior_soft_ml"] == pytest.approx((0.5 + 0.9 + 1.0 + 1.0) * 2)
    assert row["whole_true_ml"] == 10.0 and row["whole_soft_ml"] == pytest.approx(10.0)
    assert row["anterior_error_soft_ml"] == pytest.approx(3.2 - 4.0)
    assert row["anterior_rel_error_soft"] == pytest.approx((3.2 - 4.0) / 4.0)
    with pytest.raises(ValueError, match="does not fit"):
        volume_metrics(prob, torch.zeros(5), 1.0, {1: "a"})


def test_bland_altman_and_volume_summary():
    limits = bland_altman([1.0, 3.0])  # mean 2, sample SD sqrt(2)
    assert limits["bias"] == pytest.approx(2.0)
    assert limits["upper_limit"] == pytest.approx(2.0 + 1.96 * math.sqrt(2))
    assert bland_altman([])["bias"] is None
    label = torch.tensor([0, 1, 1, 2]).view(1, 2, 2)
    exact = torch.nn.functional.one_hot(label[0], 3).permute(2, 0, 1).double()
    rows = [
        volume_metrics(exact, label, 1.0, {1: "a", 2: "p"}),
        volume_metrics(exact * 0 + 1 / 3, label, 1.0, {1: "a", 2: "p"}),
    ]
    summary = summarize_volumes(rows, {1: "a", 2: "p"}, None)
    assert summary["num_volumes"] == 2 and summary["whole_dice"] == pytest.approx((1.0 + 0.0) / 2)
    assert summary["a_error_soft_ml"] == pytest.approx((0.0 + (4 / 3 - 2)) / 2)
    assert summary["whole_bland_altman_soft"]["bias"] == pytest.approx((0.0 + (8 / 3 - 3)) / 2)
