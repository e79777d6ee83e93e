"""Hippocampus labels with known uncertainty: a random annotation law whose per-voxel class probabilities
are exact (Bertels et al., MedIA 2021: soft Dice biases volumes when labels are inherently uncertain).

The law. A label holds 0 (background), 1 (anterior) and 2 (posterior). With ``d(x, S)`` the Euclidean
distance (in voxels, between voxel centres) from voxel ``x`` to the nearest voxel of the set ``S``
(``+inf`` when ``S`` is empty) and ``delta_S(x) = max(d(x, S) - 1/2, 0)`` (0 inside ``S``; outside, the
distance to the surface halfway between the voxels), each voxel gets two signed distances, negative on
the first side:

- ``phi(x) = delta_F(x) - delta_B(x)``, the hippocampus (``F = {1, 2}``) against the background ``B``:
  ``-(d(x, B) - 1/2)`` inside, ``d(x, F) - 1/2`` outside;
- ``psi(x) = delta_A(x) - delta_P(x)``, the anterior (``A``) against the posterior (``P``) part: inside
  ``A`` it is ``-(d(x, P) - 1/2)``, inside ``P`` ``d(x, A) - 1/2``, and on a background voxel the difference
  of its distances to the two parts (so a voxel added by a dilation takes the class it is closer to).

An annotation moves the outer boundary by ``r`` and the anterior/posterior cut by ``s`` voxels, ``r`` and
``s`` independent and uniform on ``[-w, w]`` (``w`` = ``width``, in voxels)::

    Y(x) = 0 if phi(x) >= r;   1 if phi(x) < r and psi(x) < s;   2 if phi(x) < r and psi(x) >= s.

So every annotation is a dilation (``r > 0``) or erosion (``r < 0``) of the hippocampus whose cut between
its parts has moved (``s > 0``: towards the posterior part), the same law on every draw of a volume. With
``G(t) = P(U > t) = clip((w - t) / (2 w), 0, 1)`` for ``U`` uniform on ``[-w, w]``, the per-voxel class
probabilities are exact, where classes meet too (``r`` and ``s`` are independent)::

    p_0(x) = 1 - G(phi(x)),   p_1(x) = G(phi(x)) G(psi(x)),   p_2(x) = G(phi(x)) (1 - G(psi(x))).

They fall linearly from 1 to 0 across a band of ``2 w`` voxels around each boundary. Width 0 is no
uncertainty: ``r = s = 0`` and ``Y`` is the label (``|phi|``, ``|psi| >= 1/2`` on every labelled voxel).
The expected class volumes ``E|Y_c| = sum_x p_c(x) * voxel volume`` are what an unbiased model hits; they
differ from the label's volumes (a dilation adds more voxels than the erosion of the same depth removes).

Both the sampler (:class:`RandLabelUncertaintyd`, the bundles' training transform) and the probabilities
(:func:`class_probabilities`, :class:`ExpectedLabeld` at evaluation) are computed from the same
:func:`signed_distances` of the label in the grid the transform sees (the bundles' padded 48x64x48 grid).
With ``label_uncertainty_targets`` ``expected`` the bundles train on the probabilities themselves (soft
labels, the target of Wang, Blaschko et al.'s Dice semimetric loss) instead of drawn annotations.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage

NUM_CLASSES = 3  # background, anterior, posterior
CLASS_NAMES = {1: "anterior", 2: "posterior"}


def check_width(width) -> float:
    """``width`` as a float; a ValueError naming it unless it is a finite number >= 0."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width < 0:
        raise ValueError(f"label_uncertainty_width must be a number >= 0 (voxels), got {width!r}")
    return float(width)


def _as_label(label) -> np.ndarray:
    """The label as an integer array of its spatial shape (a leading channel of 1 is dropped)."""
    array = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    if array.ndim >= 2 and array.shape[0] == 1:
        array = array[0]
    rounded = np.rint(array)
    values = np.unique(rounded)
    if not np.array_equal(rounded, array) or not set(values.tolist()) <= {0, 1, 2}:
        raise ValueError(f"label uncertainty needs labels of 0, 1 and 2 only, got values {values[:10].tolist()}")
    return rounded.astype(np.int64)


def _distance_outside(inside: np.ndarray) -> np.ndarray:
    """``delta_S``: 0 on ``S`` (``inside``), elsewhere the distance to its nearest voxel minus 1/2 (inf: no S)."""
    if not inside.any():
        return np.full(inside.shape, np.inf)
    if inside.all():
        return np.zeros(inside.shape)
    return np.maximum(ndimage.distance_transform_edt(~inside) - 0.5, 0.0)


def signed_distances(label, width: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(phi, psi)`` of the module docstring, float64 arrays of the label's spatial shape.

    With ``width``, computed only in the hippocampus's bounding box grown by ``ceil(width) + 2`` voxels
    (6x faster on a 48x64x48 grid); outside it ``phi = inf`` and ``psi = 0``. That is exact for the law of
    that width: outside the box ``phi > width + 1``, so no shift reaches it, and inside it every distance
    is the full grid's (the sets A, P, F lie in the box, and so does a nearest background voxel)."""
    label = _as_label(label)
    phi, psi = np.full(label.shape, np.inf), np.zeros(label.shape)
    foreground = label > 0
    if not foreground.any():
        return phi, psi
    box = tuple(slice(None) for _ in label.shape)
    if width is not None:
        margin = math.ceil(check_width(width)) + 2
        indices = np.argwhere(foreground)
        low, high = np.maximum(indices.min(0) - margin, 0), indices.max(0) + margin + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    part, inside = label[box], foreground[box]
    phi[box] = _distance_outside(inside) - _distance_outside(~inside)
    with np.errstate(invalid="ignore"):  # one part absent: +-inf, the other part's class everywhere
        psi[box] = _distance_outside(part == 1) - _distance_outside(part == 2)
    return phi, psi


def survival(t: np.ndarray, width: float) -> np.ndarray:
    """``G(t) = P(U > t)`` for ``U`` uniform on ``[-width, width]`` (width 0: the step ``t < 0``)."""
    if width == 0:
        return (t < 0).astype(np.float64)
    return np.clip((width - t) / (2 * width), 0.0, 1.0)


def class_probabilities(label, width: float) -> np.ndarray:
    """Per-voxel class probabilities ``(3, *spatial)`` float64 (background, anterior, posterior) of the law."""
    width = check_width(width)
    phi, psi = signed_distances(label, width)
    inside, anterior = survival(phi, width), survival(psi, width)
    return np.stack([1.0 - inside, inside * anterior, inside * (1.0 - anterior)])


def expected_class_volumes(
    label, width: float, voxel_volume: float = 1.0, class_names: Mapping[int, str] | None = None
) -> dict[str, float]:
    """``E|Y_c| = sum_x p_c(x) * voxel_volume`` per class name and for ``whole`` (anterior + posterior)."""
    names = dict(CLASS_NAMES if class_names is None else class_names)
    probabilities = class_probabilities(label, width)
    volumes = {name: float(probabilities[c].sum()) * voxel_volume for c, name in names.items()}
    volumes["whole"] = float(probabilities[1:].sum()) * voxel_volume
    return volumes


def draw_annotation(phi: np.ndarray, psi: np.ndarray, shifts: Sequence[float]) -> np.ndarray:
    """The annotation (int64, 0/1/2) for the boundary shift ``r`` and cut shift ``s`` (``shifts = (r, s)``)."""
    r, s = shifts
    return np.where(phi < r, np.where(psi < s, 1, 2), 0)


class RandLabelUncertaintyd(RandomizableTransform, MapTransform):
    """A new annotation of the label each time it is called, drawn from the law of the module docstring.

    ``width`` (voxels) is the half-width of the uniform boundary and cut shifts; 0 returns the label itself.
    The label keeps its type, dtype, shape ``(1, *spatial)`` and metadata. Put it in the random part of a
    pipeline (after caching), before any spatial augmentation: the law is defined in the grid it sees.
    """

    def __init__(self, keys: KeysCollection = "label", width: float = 0.0, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.width = check_width(width)
        self._shifts = (0.0, 0.0)

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._shifts = tuple(float(v) for v in self.R.uniform(-self.width, self.width, size=2))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.width == 0:
            return d
        self.randomize()
        for key in self.key_iterator(d):
            label = d[key]
            phi, psi = signed_distances(label, self.width)
            annotation = draw_annotation(phi, psi, self._shifts).reshape(label.shape)
            if isinstance(label, torch.Tensor):  # a MetaTensor keeps its metadata and applied operations
                d[key] = label.clone().copy_(torch.from_numpy(annotation))
            else:
                d[key] = annotation.astype(np.asarray(label).dtype)
        return d


class ExpectedLabeld(MapTransform):
    """The law's per-voxel class probabilities of ``keys`` (the label) as ``(3, *spatial)`` float32 MetaTensors
    under ``output_keys`` (evaluation: invert them with the label, then sum them into expected volumes)."""

    def __init__(
        self,
        keys: KeysCollection = "label",
        output_keys: KeysCollection = "expected_label",
        width: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = [output_keys] if isinstance(output_keys, str) else list(output_keys)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"one output key per key: got keys {self.keys} and output_keys {self.output_keys}")
        self.width = check_width(width)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, output_key in self.key_iterator(d, self.output_keys):
            label = d[key]
            probabilities = torch.from_numpy(class_probabilities(label, self.width)).float()
            device = label.device if isinstance(label, torch.Tensor) else "cpu"
            # a MetaTensor: Invertd maps it back with the image's transforms (a plain tensor it would skip)
            meta = dict(label.meta) if isinstance(label, MetaTensor) else None
            d[output_key] = MetaTensor(probabilities.to(device), meta=meta)
        return d


class ClassIndicesd(MapTransform):
    """Labels as class indices ``(1, *spatial)``: a class-probability label (``(C, *spatial)``, C > 1, e.g.
    :class:`ExpectedLabeld`'s, the training target with ``label_uncertainty_targets`` ``expected``) becomes
    its argmax; a one-channel label is returned as it is. Before one-hot encoding for the Dice metric."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key].shape[0] > 1:
                d[key] = d[key].argmax(dim=0, keepdim=True).to(d[key].dtype)
        return d


def completed_probabilities(expected: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``expected`` ``(3, *spatial)``, where it is all zero (voxels outside the grid the law was computed in,
    e.g. cropped away and padded back by the inversion) the label's one-hot: those voxels are certain."""
    expected = expected.detach().double()
    label = label.detach().reshape(expected.shape[1:]).long().to(expected.device)
    missing = expected.sum(0) == 0
    if missing.any():
        one_hot = torch.nn.functional.one_hot(label.clamp(0, expected.shape[0] - 1), expected.shape[0])
        expected = torch.where(missing[None], one_hot.movedim(-1, 0).double(), expected)
    return expected
