"""Controlled study: does soft Dice bias predicted volumes when labels are uncertain, and does CE not?

Claims tested: CE is a strictly proper scoring rule, so the sum of its probabilities estimates the expected
volume E|Y| without bias; soft Dice pushes predictions to 0/1 and biases the volume, per-image Dice down
and batch Dice up (Bertels et al., "Optimization with soft Dice can lead to a volumetric bias in image
segmentation", MedIA 2021); per-image Dice with a tiny smoothing predicts a lesion on images whose lesion
may be absent (Tilborghs, Bertels et al., "The Dice loss in the context of missing or empty labels", MICCAI
2022: empty labels give no gradient).

Label model, known exactly. 32x32 images; a case is one image with random annotations: the pixels whose
centre lies within ``R`` of a fixed centre (off the pixel grid, so |Y| grows almost one pixel at a time),
``R`` uniform or log-uniform on ``[r_min, r_max]`` (boundary uncertainty), present with probability ``q``
(presence uncertainty). So ``p*(x) = q P(R >= d(x))`` and ``E|Y| = sum_x p*(x)``; the whole law of |Y| is
exact too (:func:`lesion_size_law`).

Model. One free logit map per case (the input does not reveal R or presence), Adam on mini-batches of
fresh annotations (``samples_per_case`` per case and step, all cases in one batch, so batch Dice pools
cases), cosine decay to 0. By default the radii (and presences) of a case's annotations within a step are
Latin-hypercube stratified: each annotation is still a draw from the label law, so per-image losses keep
their expectation, with far less gradient noise (``--sampling=iid`` for plain draws). Each loss then
approaches its own minimiser of the expected loss, which :func:`ideal_volumes` computes exactly:

- CE: ``p = p*``; soft volume = E|Y|; hard volume = #{p* > 0.5} (the median disc, not E|Y|).
- Per-image soft Dice: a 0/1 disc of ``m`` pixels maximising ``E[2 min(m, |Y|) / (m + |Y|) | present]``.
  Its first-order condition makes ``m`` the median of |Y| under weights ``|Y| / (m + |Y|)^2``, which are
  symmetric in ``log(|Y| / m)``: a log-scale median. It is below E|Y| when log|Y| is symmetric or
  right-skewed (log-uniform R on [4, 12]: -16 %) but a long tail of small sizes pulls it up: for uniform R
  the bias is -5 % on [4, 12], about 0 at r_max / r_min = 6.5, +6 % on [1, 15]. The loss is flat there
  (+-20 px cost < 0.003 Dice), flatter on the large side: trained maps converge slowly, from above.
  Empty annotations score 0 whatever the prediction, so presence uncertainty is ignored (fit of q = 1).
- Batch soft Dice (large-batch limit): ``2 sum p p* / (sum p + sum E|Y|)`` is linear-fractional in ``p``, so
  the optimum is the threshold set ``p* > F / 2`` (``F`` the optimal batch Dice < 1) pooled over the
  batch: beyond the median disc, an over-estimate (+16 % on [4, 12]). But q = 0.3 cases batched with q = 1
  cases fall below the pooled threshold (F / 2 = 0.34 > 0.3): no lesion at all (-100 %); batched alone
  they would get a 160 px disc (+145 %).
- Per-image Dice with smoothing 1e-5: an empty annotation scores ``s / (sum p + s)``, ~0 unless
  ``sum p < s``, with gradient ``s p (1 - p) / (sum p + s)^2`` ~ 1e-11: empty annotations act as missing ones,
  the reachable fit is that of q = 1, with a lesion on every lesion-free image. The global minimiser is
  the empty map whenever ``1 - q > q D_present`` (true at q = 0.3): unreachable by gradient descent.

Tolerances: :func:`volume_tolerance` (SGD noise of the final iterate, derived there, plus 2 pixels).

    python scripts/volume_bias_study.py run --output_dir=runs/volume_bias
    python scripts/volume_bias_study.py theory
    python scripts/volume_bias_study.py label_law --data_dir=data/hippocampus --width=2 --output=theory.json

``label_law``: the same calculation for the hippocampus bundles' label law (custom_losses.label_uncertainty,
section "the hippocampus label law" below), per held-out volume.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.modules.loss import _Loss

from custom_losses import CrossEntropyLoss, SoftDiceLoss
from custom_losses.errors import InputError
from lesion_study.command import run_fire

IMAGE_SIZE = 32
LESION_CENTRE = (16.3, 15.8)  # (x, y) pixels; off the grid, so almost every pixel has its own centre distance
SMOOTHING = 1e-5  # MONAI DiceLoss's default smooth_nr = smooth_dr
SAMPLINGS = ("stratified", "iid")

LOSSES: dict[str, Callable[[], _Loss]] = {
    "ce": CrossEntropyLoss,
    "dice_image": SoftDiceLoss,
    "dice_batch": lambda: SoftDiceLoss(batch=True),
    "dice_image_smooth": lambda: SoftDiceLoss(smooth_nr=SMOOTHING, smooth_dr=SMOOTHING),
}
LOSS_LABELS = {
    "ce": "CE",
    "dice_image": "Dice (image)",
    "dice_batch": "Dice (batch)",
    "dice_image_smooth": "Dice (image, s=1e-5)",
}


@dataclass(frozen=True)
class CaseGroup:
    """Cases sharing one label law: radius law on [radius_min, radius_max], lesion present with probability q."""

    name: str
    num_cases: int
    presence: float
    radius_min: float
    radius_max: float
    radius_law: str = "uniform"  # or "log_uniform"

    def __post_init__(self) -> None:
        if self.radius_law not in ("uniform", "log_uniform") or not 0 < self.radius_min < self.radius_max:
            raise InputError(f"need a uniform or log_uniform law on 0 < radius_min < radius_max, got {self}")
        if not 0 < self.presence <= 1:
            raise InputError(f"presence must be in (0, 1], got {self.presence}")

    def radius_cdf(self, radius: np.ndarray) -> np.ndarray:
        """P(R <= radius), clipped to [0, 1]."""
        a, b = self.radius_min, self.radius_max
        if self.radius_law == "uniform":
            cdf = (radius - a) / (b - a)
        else:
            cdf = np.log(np.maximum(radius, 1e-12) / a) / math.log(b / a)
        return np.clip(cdf, 0.0, 1.0)

    def radius_quantile(self, level: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`radius_cdf`: maps U[0, 1] draws to radii."""
        a, b = self.radius_min, self.radius_max
        if self.radius_law == "uniform":
            return a + (b - a) * level
        return a * (b / a) ** level


@dataclass(frozen=True)
class Scenario:
    """Groups of cases trained together (one batch holds annotations of every case)."""

    name: str
    summary: str
    groups: tuple[CaseGroup, ...]


def default_scenarios(cases_per_group: int) -> tuple[Scenario, ...]:
    """Boundary uncertainty (R uniform on [4, 12] and [1, 15], log-uniform on [4, 12]) and presence uncertainty."""
    n = cases_per_group
    return (
        Scenario("boundary", "R ~ U[4, 12], always present", (CaseGroup("all", n, 1.0, 4.0, 12.0),)),
        Scenario(
            "boundary_log",
            "log R ~ U[log 4, log 12], always present",
            (CaseGroup("all", n, 1.0, 4.0, 12.0, "log_uniform"),),
        ),
        Scenario("boundary_wide", "R ~ U[1, 15], always present", (CaseGroup("all", n, 1.0, 1.0, 15.0),)),
        Scenario(
            "presence",
            "R ~ U[4, 12]; half the cases always present, half present with q = 0.3; batches mix both",
            (CaseGroup("certain", n, 1.0, 4.0, 12.0), CaseGroup("uncertain", n, 0.3, 4.0, 12.0)),
        ),
    )


# ------------------------------------------------------------------------------------------ label model


def pixel_distances(image_size: int = IMAGE_SIZE, centre: tuple[float, float] = LESION_CENTRE) -> np.ndarray:
    """Distance of every pixel centre to the lesion centre, ``(H, W)`` float64."""
    ys, xs = np.mgrid[0:image_size, 0:image_size] + 0.5
    return np.hypot(xs - centre[0], ys - centre[1])


def foreground_probability(distances: np.ndarray, group: CaseGroup) -> np.ndarray:
    """Exact ``p*(x) = q P(R >= d(x))``."""
    return group.presence * (1.0 - group.radius_cdf(distances))


def lesion_size_law(distances: np.ndarray, group: CaseGroup) -> tuple[np.ndarray, np.ndarray]:
    """Exact law of |Y|: sizes (float64) and their probabilities; size 0 carries ``1 - q``.

    ``|Y| = n(R) = #{x: d(x) <= R}`` is constant between consecutive pixel distances, so each such interval
    of ``[r_min, r_max]`` carries its probability under the radius law.
    """
    sorted_distances = np.sort(distances.ravel())
    inside = sorted_distances[(sorted_distances > group.radius_min) & (sorted_distances < group.radius_max)]
    edges = np.concatenate([[group.radius_min], inside, [group.radius_max]])
    sizes = np.searchsorted(sorted_distances, edges[:-1], side="right").astype(np.float64)
    probabilities = group.presence * np.diff(group.radius_cdf(edges))
    return np.concatenate([[0.0], sizes]), np.concatenate([[1.0 - group.presence], probabilities])


def expected_volume(distances: np.ndarray, group: CaseGroup) -> float:
    """E|Y| = sum of p*(x), exact (equal to the mean of :func:`lesion_size_law`)."""
    return float(foreground_probability(distances, group).sum())


def volume_sd(distances: np.ndarray, group: CaseGroup) -> float:
    """Standard deviation of |Y| over annotations, exact."""
    sizes, probabilities = lesion_size_law(distances, group)
    mean = (sizes * probabilities).sum()
    return float(math.sqrt(max((sizes**2 * probabilities).sum() - mean**2, 0.0)))


def sample_labels(
    distances: torch.Tensor,
    group: CaseGroup,
    samples_per_case: int,
    generator: torch.Generator,
    sampling: str = "stratified",
) -> torch.Tensor:
    """Annotations ``(num_cases * samples_per_case, 1, H, W)`` float32, case-major, drawn from the label law.

    ``stratified``: per case, the radius and presence levels are ``(perm(j) + U_j) / k`` with independent
    random permutations (Latin hypercube), so each annotation is exactly a draw from the law while the
    ``k`` annotations of a case cover it evenly. ``iid``: independent draws.
    """
    shape = (group.num_cases, samples_per_case)
    if sampling == "iid":
        radius_levels = torch.rand(shape, generator=generator)
        presence_levels = torch.rand(shape, generator=generator)
    elif sampling == "stratified":
        strata = [torch.argsort(torch.rand(shape, generator=generator), dim=1) for _ in range(2)]
        radius_levels = (strata[0] + torch.rand(shape, generator=generator)) / samples_per_case
        presence_levels = (strata[1] + torch.rand(shape, generator=generator)) / samples_per_case
    else:
        raise InputError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    radius = group.radius_quantile(radius_levels).reshape(-1, 1, 1)
    present = (presence_levels < group.presence).reshape(-1, 1, 1)
    return ((distances.unsqueeze(0) <= radius) & present).unsqueeze(1).float()


# ---------------------------------------------------------------------------------- exact expected losses


def expected_image_dice(probabilities: np.ndarray, distances: np.ndarray, group: CaseGroup, smooth: float) -> float:
    """Exact expected per-image soft Dice of one probability map over the group's label law.

    Annotations are nested discs: with pixels sorted by distance, ``sum(p * y) = cumsum(p)[|Y| - 1]``.
    """
    order = np.argsort(distances.ravel(), kind="stable")
    cumulative = np.concatenate([[0.0], np.cumsum(probabilities.ravel()[order])])
    sizes, weights = lesion_size_law(distances, group)
    total = cumulative[-1]
    dice = (2 * cumulative[sizes.astype(np.int64)] + smooth) / np.maximum(total + sizes + smooth, 1e-7)
    return float(dice @ weights)


def _disc_image_dice(sizes: np.ndarray, probabilities: np.ndarray, num_pixels: int, smooth: float) -> np.ndarray:
    """Expected per-image Dice given present, of the 0/1 disc of the ``m`` nearest pixels, m = 0..num_pixels."""
    present = sizes > 0
    sizes, weights = sizes[present], probabilities[present] / probabilities[present].sum()
    disc = np.arange(num_pixels + 1, dtype=np.float64)[:, None]
    dice = (2 * np.minimum(disc, sizes) + smooth) / np.maximum(disc + sizes + smooth, 1e-7)
    return dice @ weights


def ideal_volumes(scenario: Scenario, distances: np.ndarray | None = None) -> dict[str, dict[str, dict]]:
    """Volumes of each loss's exact minimiser of the expected loss, ``{loss: {group: {"soft", "hard", ...}}}``.

    CE: ``p*``. Per-image Dice: best nested 0/1 disc (no soft map does better: checked by a direct
    optimisation of the expected loss in tests/test_volume_bias.py); with smoothing also the global
    minimiser. Batch Dice: best threshold on p* pooled over the scenario's cases, large-batch limit.
    """
    distances = pixel_distances() if distances is None else distances
    num_pixels = distances.size
    result: dict[str, dict[str, dict]] = {name: {} for name in LOSSES}
    laws = {group.name: lesion_size_law(distances, group) for group in scenario.groups}
    maps = {group.name: foreground_probability(distances, group).ravel() for group in scenario.groups}
    for group in scenario.groups:
        sizes, probabilities = laws[group.name]
        p_star = maps[group.name]
        result["ce"][group.name] = {"soft": float(p_star.sum()), "hard": float((p_star > 0.5).sum())}
        disc_dice = _disc_image_dice(sizes, probabilities, num_pixels, smooth=0.0)
        best = int(np.argmax(disc_dice))
        result["dice_image"][group.name] = {
            "soft": float(best),
            "hard": float(best),
            "dice": group.presence * disc_dice[best],
        }
        smooth_dice = _disc_image_dice(sizes, probabilities, num_pixels, smooth=SMOOTHING)
        reachable = int(np.argmax(smooth_dice[1:])) + 1
        q = group.presence
        score_reachable = q * smooth_dice[reachable] + (1 - q) * SMOOTHING / (reachable + SMOOTHING)
        score_empty = q * smooth_dice[0] + (1 - q)
        result["dice_image_smooth"][group.name] = {
            "soft": float(reachable),
            "hard": float(reachable),
            "dice": float(score_reachable),
            "global_minimiser_volume": 0.0 if score_empty > score_reachable else float(reachable),
            "global_minimiser_dice": float(max(score_empty, score_reachable)),
        }
    # batch Dice: F(t) = 2 sum_g n_g E[min(m_g, |Y_g|)] / sum_g n_g (m_g + E|Y_g|), m_g = #{p*_g > t}
    thresholds = np.unique(np.concatenate([[1.0], *maps.values()]))
    numerator = np.zeros(len(thresholds))
    denominator = np.zeros(len(thresholds))
    discs = {}
    for group in scenario.groups:
        sizes, probabilities = laws[group.name]
        discs[group.name] = (maps[group.name][None, :] > thresholds[:, None]).sum(1).astype(np.float64)
        numerator += group.num_cases * 2 * (np.minimum(discs[group.name][:, None], sizes) @ probabilities)
        denominator += group.num_cases * (discs[group.name] + (sizes * probabilities).sum())
    batch_dice = numerator / np.maximum(denominator, 1e-12)
    best = int(np.argmax(batch_dice))
    for group in scenario.groups:
        volume = float(discs[group.name][best])
        result["dice_batch"][group.name] = {
            "soft": volume,
            "hard": volume,
            "dice": float(batch_dice[best]),
            "threshold": float(thresholds[best]),
        }
    return result


def expected_loss(
    loss_name: str, maps: dict[str, np.ndarray], scenario: Scenario, distances: np.ndarray | None = None
) -> float:
    """Exact expected training loss of per-case probability maps ``{group: (n, H, W)}`` (batch Dice: large batch)."""
    distances = pixel_distances() if distances is None else distances
    groups = {group.name: group for group in scenario.groups}
    if loss_name == "dice_batch":
        overlap = sum((maps[g] * foreground_probability(distances, groups[g])).sum() for g in maps)
        total = sum(maps[g].sum() + groups[g].num_cases * expected_volume(distances, groups[g]) for g in maps)
        return float(1 - 2 * overlap / total)
    per_case = []
    for name, stack in maps.items():
        group = groups[name]
        for probabilities in stack:
            if loss_name == "ce":
                p_star = foreground_probability(distances, group)
                p = np.clip(probabilities, 1e-12, 1 - 1e-12)
                per_case.append(float(-(p_star * np.log(p) + (1 - p_star) * np.log(1 - p)).mean()))
            else:
                smooth = SMOOTHING if loss_name == "dice_image_smooth" else 0.0
                per_case.append(1 - expected_image_dice(probabilities, distances, group, smooth))
    return float(np.mean(per_case))


def ideal_maps(scenario: Scenario, loss_name: str, distances: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-case probability maps of the exact (reachable) minimiser, ``{group: (n, H, W)}``."""
    distances = pixel_distances() if distances is None else distances
    ideal = ideal_volumes(scenario, distances)[loss_name]
    order = np.argsort(distances.ravel(), kind="stable")
    maps = {}
    for group in scenario.groups:
        if loss_name == "ce":
            single = foreground_probability(distances, group)
        else:
            flat = np.zeros(distances.size)
            flat[order[: int(ideal[group.name]["soft"])]] = 1.0
            single = flat.reshape(distances.shape)
        maps[group.name] = np.repeat(single[None], group.num_cases, axis=0)
    return maps


# ------------------------------------------------------------------------------------------- tolerance


def volume_tolerance(
    group: CaseGroup, steps: int, samples_per_case: int, learning_rate: float, sampling: str = "stratified"
) -> float:
    """Tolerance (pixels) on a group's mean trained volume: 4 s.d. of the SGD noise of the final iterate + 2 px.

    Near its optimum, Adam divides a logit's gradient by its noise level ``s`` (s.d. of the per-step mean of
    ``p - y`` over the case's ``k`` annotations): ``s^2 = p(1-p)/k`` for i.i.d. draws, ``<= 1/(4 k^2)``
    stratified (only the stratum holding the pixel's edge is random). Only annotations with a lesion inform
    the boundary (per-image Dice gets no gradient at all from the others), so ``k`` is taken as ``q k``.
    Linearising ``p - p* = p(1-p) dz``: ``dz <- dz - lr (c dz + xi)``, ``c = p(1-p)/s``, an Ornstein-Uhlenbeck
    process with ``var(p) = lr s p(1-p)/2``. With the cosine schedule, ``lr ~ lr0 (pi u / 2T)^2`` with ``u``
    steps left, the iterate stops tracking when ``lr c u ~ 1``, at ``u* = (4 T^2 / (pi^2 lr0 c))^(1/3)``:
    the noise freezes at that ``lr``. Worst cases: ``p(1-p) = 1/4``, and every pixel of the uncertain ring
    (area ``pi (b^2 - a^2)``) erring together (they see the same radii), so the per-case volume s.d. is
    ``ring * sd(p)``; the mean over the ``n`` independent cases of a group divides it by ``sqrt(n)``. The
    2 px cover the minimiser's granularity (whole pixels). This bounds noise, not a lack of convergence:
    results.json reports the exact expected-loss gap of every trained map, and the s.d. over cases to
    compare with this bound.
    """
    if sampling not in SAMPLINGS:
        raise InputError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    spread = 0.25
    informative = max(group.presence * samples_per_case, 1.0)
    noise = math.sqrt(spread / informative) if sampling == "iid" else 1 / (2 * informative)
    relaxation = spread / noise
    frozen_steps = min((4 * steps**2 / (math.pi**2 * learning_rate * relaxation)) ** (1 / 3), steps)
    frozen_lr = learning_rate * (math.pi * frozen_steps / (2 * steps)) ** 2
    pixel_sd = math.sqrt(frozen_lr * noise * spread / 2)
    ring = math.pi * (group.radius_max**2 - group.radius_min**2)
    return 4 * ring * pixel_sd / math.sqrt(group.num_cases) + 2.0


# ------------------------------------------------------------------------------------------------ training


def train_free_logits(
    scenario: Scenario,
    loss: _Loss,
    steps: int,
    samples_per_case: int,
    learning_rate: float,
    seed: int,
    sampling: str = "stratified",
    log_every: int = 0,
    log_prefix: str = "",
) -> dict[str, np.ndarray]:
    """Optimise one logit map per case (initialised at 0) with Adam; final probabilities ``{group: (n, H, W)}``.

    Every step draws ``samples_per_case`` annotations per case (the same stream for every loss of a scenario:
    common random numbers) and evaluates ``loss`` once on the whole batch.
    """
    generator = torch.Generator().manual_seed(seed)
    distances = torch.from_numpy(pixel_distances()).float()
    num_cases = sum(group.num_cases for group in scenario.groups)
    logits = torch.zeros(num_cases, 1, IMAGE_SIZE, IMAGE_SIZE, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for step in range(steps):
        labels = torch.cat(
            [sample_labels(distances, group, samples_per_case, generator, sampling) for group in scenario.groups]
        )
        value = loss(logits.repeat_interleave(samples_per_case, dim=0), labels)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        schedule.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"{log_prefix}step {step + 1}/{steps} loss {value.item():.4f}", flush=True)
    probabilities = torch.sigmoid(logits.detach())[:, 0].double().numpy()
    result, start = {}, 0
    for group in scenario.groups:
        result[group.name] = probabilities[start : start + group.num_cases]
        start += group.num_cases
    return result


def summarise_group(probabilities: np.ndarray, group: CaseGroup, expected: float) -> dict:
    """Soft / hard volumes (mean, s.d. over cases), errors relative to E|Y|, lesion-free false-positive share.

    All annotations of a case share its prediction, so the share of lesion-free annotations on which the hard
    prediction shows a lesion is the share of cases with a non-empty hard prediction (q is equal within a group).
    """
    soft = probabilities.sum((1, 2))
    hard = (probabilities > 0.5).sum((1, 2)).astype(np.float64)
    summary = {
        "soft_volume": float(soft.mean()),
        "soft_volume_sd": float(soft.std(ddof=1)) if len(soft) > 1 else 0.0,
        "hard_volume": float(hard.mean()),
        "hard_volume_sd": float(hard.std(ddof=1)) if len(hard) > 1 else 0.0,
        "soft_relative_error": float(soft.mean() / expected - 1),
        "hard_relative_error": float(hard.mean() / expected - 1),
        "soft_volume_per_case": [float(v) for v in soft],
    }
    if group.presence < 1:
        summary["lesion_free_false_positive_share"] = float((hard > 0).mean())
    return summary


def _run_scenario(
    scenario: Scenario,
    seed: int,
    loss_names: Sequence[str],
    steps: int,
    samples_per_case: int,
    learning_rate: float,
    sampling: str,
    verbose: bool,
) -> dict:
    distances = pixel_distances()
    ideal = ideal_volumes(scenario, distances)
    groups = {}
    for group in scenario.groups:
        groups[group.name] = {
            **{key: value for key, value in asdict(group).items() if key != "name"},
            "expected_volume": expected_volume(distances, group),
            "volume_sd": volume_sd(distances, group),
            "tolerance": volume_tolerance(group, steps, samples_per_case, learning_rate, sampling),
        }
    entry: dict = {"summary": scenario.summary, "groups": groups, "ideal": ideal, "losses": {}}
    for loss_name in loss_names:
        tic = time.perf_counter()
        prefix = f"[{scenario.name}/{loss_name}] "
        maps = train_free_logits(
            scenario,
            LOSSES[loss_name](),
            steps,
            samples_per_case,
            learning_rate,
            seed,
            sampling,
            log_every=steps // 2 if verbose else 0,
            log_prefix=prefix,
        )
        measured: dict = {
            group.name: summarise_group(maps[group.name], group, groups[group.name]["expected_volume"])
            for group in scenario.groups
        }
        minimum = expected_loss(loss_name, ideal_maps(scenario, loss_name, distances), scenario, distances)
        measured["expected_loss"] = expected_loss(loss_name, maps, scenario, distances)
        measured["expected_loss_gap"] = measured["expected_loss"] - minimum
        measured["seconds"] = time.perf_counter() - tic
        entry["losses"][loss_name] = measured
        if verbose:
            print(f"{prefix}done in {measured['seconds']:.1f} s", flush=True)
    return entry


def run_study(
    steps: int = 4000,
    cases_per_group: int = 8,
    samples_per_case: int = 8,
    learning_rate: float = 0.05,
    seed: int = 0,
    sampling: str = "stratified",
    scenarios: Sequence[str] | None = None,
    losses: Sequence[str] | None = None,
    verbose: bool = True,
) -> dict:
    """Train every loss on every scenario; return all numbers (settings, exact theory, measurements) as a dict."""
    chosen = [s for s in default_scenarios(cases_per_group) if scenarios is None or s.name in scenarios]
    loss_names = list(LOSSES) if losses is None else list(losses)
    if not chosen or any(name not in LOSSES for name in loss_names) or sampling not in SAMPLINGS:
        raise InputError(f"bad scenarios {scenarios}, losses {loss_names} or sampling {sampling!r}")
    results: dict = {
        "settings": {
            "steps": steps,
            "cases_per_group": cases_per_group,
            "samples_per_case": samples_per_case,
            "learning_rate": learning_rate,
            "optimiser": "Adam (default betas), cosine decay to 0, logits initialised at 0",
            "sampling": sampling,
            "seed": seed,
            "image_size": IMAGE_SIZE,
            "lesion_centre_xy": list(LESION_CENTRE),
            "smoothing": SMOOTHING,
            "losses": loss_names,
            "torch": torch.__version__,
        },
        "scenarios": {},
    }
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and does not fight other jobs for cores
    try:
        for index, scenario in enumerate(chosen):
            results["scenarios"][scenario.name] = _run_scenario(
                scenario, seed + 1000 * index, loss_names, steps, samples_per_case, learning_rate, sampling, verbose
            )
    finally:
        torch.set_num_threads(threads)
    results["settings"]["wall_seconds"] = time.perf_counter() - started
    return _rounded(results)


# ------------------------------------------------------------- the hippocampus label law (real volumes)
#
# The same calculation for the law of custom_losses.label_uncertainty, which the hippocampus bundles train
# on with label_uncertainty_width = w: an annotation is the label with its outer boundary moved by r and its
# anterior/posterior cut by s, r and s independent and uniform on [-w, w] (phi, psi: its signed distances).
# Expectations over (r, s) are means over the midpoint grid of `quadrature` x `quadrature` shifts (the
# shifts' law to the width of a grid cell). Voxels with the same (phi, psi) have the same class in every
# annotation (a "cell"), so a loss's minimiser gives them the same prediction. Minimisers:
#
# - CE: p*, so the soft volume is the expected volume E|Y_c| (no bias); its hard (argmax) volume is not.
# - Per-image soft Dice (the bundles' SoftDiceLoss: mean over anterior and posterior of each class's Dice
#   D_c = 2 |Yhat_c & Y_c| / (|Yhat_c| + |Y_c|)): the 0/1 map maximising E_{r,s}[(D_1 + D_2) / 2]. As the
#   controlled study's best disc, it is searched among the law's own annotations first (the quadrants
#   {phi < t, psi < u}, a grid of `resolution` steps of [-w, w] per shift, refined around its best), then
#   improved cell by cell (each cell to the class, or background, that raises the expectation most, until
#   no cell moves): a local maximum. Free per-voxel logits trained on the expected loss end there too
#   (tests/test_volume_bias.py); the quadrant alone is not the minimiser here (on a small ellipsoid at
#   w = 2 its volume is 7 % larger than the free optimum's).
# - Batch soft Dice, large-batch limit: sum over volumes before the ratio, so the expectation is
#   2 sum z_c p*_c / (sum z_c + sum p*_c) per class, linear-fractional: the optimum puts a voxel in the class
#   c with the largest positive (p*_c - F_c / 2) / D_c (F_c its class's batch Dice, D_c its denominator),
#   pooled over all the volumes; found by iterating that rule from the argmax of p* to its fixed point.

LAW_CLASSES = ("anterior", "posterior")


def _law_tables(phi: np.ndarray, psi: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``N_A[i, j] = #{phi < levels_i, psi < levels_j}`` and ``N_F[i] = #{phi < levels_i}`` (``levels`` sorted)."""
    n = len(levels) + 1
    below_phi = np.searchsorted(levels, phi.ravel(), side="right")  # phi < levels_i  <=>  i >= below_phi
    below_psi = np.searchsorted(levels, psi.ravel(), side="right")
    counts = np.bincount(below_phi * n + below_psi, minlength=n * n).reshape(n, n).astype(np.float64)
    return counts.cumsum(0).cumsum(1)[:-1, :-1], counts.sum(1).cumsum()[:-1]


def _quadrant_terms(tables, a, b, r, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class (axis 0: anterior, posterior), the overlap, predicted and annotated sizes of the quadrant
    at level indices ``(a, b)`` against the annotation at ``(r, s)`` (index arrays, broadcast together)."""
    anterior, inside = tables
    low = np.minimum(a, r)
    overlap = np.stack([anterior[low, np.minimum(b, s)], inside[low] - anterior[low, np.maximum(b, s)]])
    predicted = np.stack([anterior[a, b], inside[a] - anterior[a, b]])
    annotated = np.stack([anterior[r, s], inside[r] - anterior[r, s]])
    return overlap, predicted, annotated


def _search(objective: Callable[[np.ndarray, np.ndarray], np.ndarray], resolution: int) -> tuple[int, int]:
    """Maximise ``objective(rows, columns)`` (candidate step indices 0..resolution, broadcast) on a coarse grid
    of 21 x 21 steps, then on every step of the window around its best; returns (row, column)."""
    stride = max(resolution // 20, 1)
    coarse = np.arange(0, resolution + 1, stride)
    values = objective(coarse[:, None], coarse[None, :])
    row, column = np.unravel_index(int(np.argmax(values)), values.shape)
    rows = np.arange(max(coarse[row] - stride, 0), min(coarse[row] + stride, resolution) + 1)
    columns = np.arange(max(coarse[column] - stride, 0), min(coarse[column] + stride, resolution) + 1)
    best = np.unravel_index(int(np.argmax(objective(rows[:, None], columns[None, :]))), (len(rows), len(columns)))
    return int(rows[best[0]]), int(columns[best[1]])


def _best_quadrant(phi: np.ndarray, psi: np.ndarray, width: float, shifts: np.ndarray, resolution: int):
    """The quadrant shifts (t, u) of highest expected per-image Dice over the ``shifts`` grid."""
    steps = -width + 2 * width * np.arange(resolution + 1) / resolution
    levels = np.unique(np.concatenate([steps, shifts]))
    step_index, shift_index = np.searchsorted(levels, steps), np.searchsorted(levels, shifts)
    tables = _law_tables(phi, psi, levels)
    # axes: candidate row, candidate column, annotation r, annotation s
    draw_r, draw_s = shift_index.reshape(1, 1, -1, 1), shift_index.reshape(1, 1, 1, -1)

    def image_dice(rows, columns):
        a, b = step_index[rows][..., None, None], step_index[columns][..., None, None]
        overlap, predicted, annotated = _quadrant_terms(tables, a, b, draw_r, draw_s)
        total = predicted + annotated
        return np.divide(2 * overlap, total, out=np.zeros_like(total), where=total > 0).mean(0).mean((-2, -1))

    row, column = _search(image_dice, resolution)
    return float(steps[row]), float(steps[column])


def _image_dice_optimum(
    phi: np.ndarray, psi: np.ndarray, width: float, quadrature: int, resolution: int, max_sweeps: int = 50
) -> tuple[np.ndarray, float, list[float]]:
    """The per-image soft Dice minimiser as a 0/1/2 map, its expected Dice and the quadrant it started from."""
    shifts = -width + 2 * width * (np.arange(quadrature) + 0.5) / quadrature
    start = _best_quadrant(phi, psi, width, shifts, resolution)
    band = phi < width  # elsewhere no annotation has foreground: background is best there
    pairs, cell_of, sizes = np.unique(
        np.stack([phi[band], psi[band]], 1), axis=0, return_inverse=True, return_counts=True
    )
    cell_phi, cell_psi, sizes = pairs[:, 0], pairs[:, 1], sizes.astype(np.float64)
    r, s = np.repeat(shifts, quadrature), np.tile(shifts, quadrature)  # the quadrature's draws
    inside = cell_phi[:, None] < r[None, :]
    front = cell_psi[:, None] < s[None, :]
    member = np.stack([np.zeros_like(inside), inside & front, inside & ~front]).astype(np.float64)
    member *= sizes[None, :, None]  # (class, cell, draw): voxels of the cell in that class of that annotation
    annotated = member[1:].sum(1)  # (2, draws)
    assignment = np.where(cell_phi < start[0], np.where(cell_psi < start[1], 1, 2), 0)
    overlap = np.stack([member[c][assignment == c].sum(0) for c in (1, 2)])  # (2, draws)
    predicted = np.array([sizes[assignment == c].sum() for c in (1, 2)])

    def expected_dice(overlap, predicted):
        total = predicted[..., None] + annotated
        return np.divide(2 * overlap, total, out=np.zeros_like(total), where=total > 0).mean(-2).mean(-1)

    value = float(expected_dice(overlap, predicted))
    for _ in range(max_sweeps):
        moved = False
        for cell in np.argsort(np.abs(cell_phi), kind="stable"):  # the boundary's cells first
            current = assignment[cell]
            base_overlap, base_predicted = overlap.copy(), predicted.copy()
            if current:
                base_overlap[current - 1] -= member[current, cell]
                base_predicted[current - 1] -= sizes[cell]
            options = [(expected_dice(base_overlap, base_predicted), 0)]
            for c in (1, 2):
                trial_overlap, trial_predicted = base_overlap.copy(), base_predicted.copy()
                trial_overlap[c - 1] += member[c, cell]
                trial_predicted[c - 1] += sizes[cell]
                options.append((expected_dice(trial_overlap, trial_predicted), c))
            best_value, best_class = max(options, key=lambda option: option[0])
            if best_class != current and best_value > value + 1e-12:
                assignment[cell], value, moved = best_class, float(best_value), True
                overlap, predicted = base_overlap, base_predicted
                if best_class:
                    overlap[best_class - 1] += member[best_class, cell]
                    predicted[best_class - 1] += sizes[cell]
        if not moved:
            break
    prediction = np.zeros(phi.shape, dtype=np.int64)
    prediction[band] = assignment[cell_of.ravel()]
    return prediction, value, list(start)


def _batch_dice_optimum(probabilities: Sequence[np.ndarray], max_iterations: int = 200) -> list[np.ndarray]:
    """The large-batch soft Dice minimiser (0/1/2 per voxel) of class probabilities ``(3, n_v)`` pooled over
    the volumes (voxels certain to be background may be left out: they stay background)."""
    flat = np.concatenate([p.reshape(3, -1) for p in probabilities], axis=1)
    expected = flat[1:].sum(1)
    assignment = flat.argmax(0)
    for _ in range(max_iterations):
        chosen = np.stack([assignment == c for c in (1, 2)])
        denominator = chosen.sum(1) + expected
        batch_dice = 2 * (chosen * flat[1:]).sum(1) / denominator
        score = (flat[1:] - batch_dice[:, None] / 2) / denominator[:, None]
        updated = np.where(score.max(0) > 0, score.argmax(0) + 1, 0)
        if np.array_equal(updated, assignment):
            break
        assignment = updated
    bounds = np.cumsum([0] + [p[0].size for p in probabilities])
    return [assignment[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _class_volumes(prediction: np.ndarray) -> dict[str, float]:
    return {
        "anterior": float((prediction == 1).sum()),
        "posterior": float((prediction == 2).sum()),
        "whole": float((prediction > 0).sum()),
    }


def label_law_ideal_volumes(
    labels: Sequence, width: float, voxel_volume: float = 1.0, quadrature: int = 64, resolution: int = 200
) -> dict:
    """Each loss's minimiser under the hippocampus label law of ``width`` (voxels), for the volumes ``labels``
    (0/1/2 arrays in the training grid): its class volumes, their bias against the expected volumes, the
    means over the volumes. Losses: ``ce`` (soft: unbiased by construction), ``ce_hard`` (argmax of p*),
    ``dice`` (per image), ``batch_dice`` (large-batch limit over all ``labels``). Volumes times ``voxel_volume``.
    """
    from custom_losses.label_uncertainty import class_probabilities, signed_distances

    names = (*LAW_CLASSES, "whole")
    per_volume, maps = [], []
    for label in labels:
        probabilities = class_probabilities(label, width)
        maps.append(probabilities[:, probabilities[0] < 1])  # the voxels that may be foreground
        expected = {c: float(probabilities[i + 1].sum()) for i, c in enumerate(LAW_CLASSES)}
        expected["whole"] = float(probabilities[1:].sum())
        entry = {"expected": expected, "ce": dict(expected), "ce_hard": _class_volumes(probabilities.argmax(0))}
        if width == 0:  # no uncertainty: every loss's minimiser is the label
            entry["dice"], entry["dice_expected_dice"], entry["dice_start_shifts"] = dict(expected), 1.0, [0.0, 0.0]
        else:
            prediction, value, start = _image_dice_optimum(
                *signed_distances(label, width), width, quadrature, resolution
            )
            entry["dice"], entry["dice_expected_dice"], entry["dice_start_shifts"] = (
                _class_volumes(prediction),
                value,
                start,
            )
        per_volume.append(entry)
    for entry, prediction in zip(per_volume, _batch_dice_optimum(maps), strict=True):
        entry["batch_dice"] = _class_volumes(prediction)

    losses = ("ce", "ce_hard", "dice", "batch_dice")
    for entry in per_volume:
        for key in ("expected", *losses):
            entry[key] = {c: float(v) * voxel_volume for c, v in entry[key].items()}
        entry["bias"] = {loss: {c: entry[loss][c] - entry["expected"][c] for c in names} for loss in losses}
    mean_bias = {loss: {c: float(np.mean([e["bias"][loss][c] for e in per_volume])) for c in names} for loss in losses}
    mean_expected = {c: float(np.mean([e["expected"][c] for e in per_volume])) for c in names}
    return {
        "width": width,
        "quadrature": quadrature,
        "resolution": resolution,
        "volumes": per_volume,
        "mean_expected": mean_expected,
        "mean_bias": mean_bias,
        "mean_relative_bias": {loss: {c: mean_bias[loss][c] / mean_expected[c] for c in names} for loss in losses},
    }


def held_out_labels(data_dir: str | Path, folds: Sequence[int], spatial_size: Sequence[int]) -> list[dict]:
    """The held-out volumes of ``folds``: ``{"image": file name, "label": 0/1/2 array in the training grid
    (padded or cropped to spatial_size as the bundles do), "voxel_ml": voxel volume}``."""
    import nibabel
    from monai.transforms import ResizeWithPadOrCrop

    from custom_losses.data import fold_split

    data_dir = Path(data_dir)
    pad = ResizeWithPadOrCrop(list(spatial_size))
    volumes = []
    for fold in folds:
        for item in fold_split(data_dir / "datalist.json", data_dir, int(fold), "validate", check=False, num_classes=3):
            volume = nibabel.load(item["label"])
            label = np.asarray(volume.dataobj).astype(np.float32)
            voxel_ml = float(np.prod(volume.header.get_zooms()[:3])) / 1000
            padded = pad(torch.from_numpy(label)[None])[0]
            volumes.append({"image": Path(item["image"]).name, "label": np.asarray(padded), "voxel_ml": voxel_ml})
    return volumes


def label_law_theory(
    data_dir: str | Path,
    width: float,
    folds: Sequence[int] = (1,),
    spatial_size: Sequence[int] = (48, 64, 48),
    quadrature: int = 32,
    resolution: int = 200,
) -> dict:
    """:func:`label_law_ideal_volumes` of the held-out volumes of ``folds``, in ml, each volume named."""
    volumes = held_out_labels(data_dir, folds, spatial_size)
    if not volumes:
        raise InputError(f"{data_dir}: no held-out volume in folds {list(folds)}")
    voxel_ml = {v["voxel_ml"] for v in volumes}
    if len(voxel_ml) != 1:
        raise InputError(f"{data_dir}: the volumes' voxel sizes differ ({sorted(voxel_ml)} ml); one is needed")
    result = label_law_ideal_volumes(
        [v["label"] for v in volumes], width, voxel_ml.pop(), quadrature=quadrature, resolution=resolution
    )
    for entry, volume in zip(result["volumes"], volumes, strict=True):
        entry["image"] = volume["image"]
    result.update(folds=[int(f) for f in folds], spatial_size=[int(v) for v in spatial_size], unit="ml")
    return result


def label_law(
    data_dir: str,
    width: float,
    folds: Sequence[int] = (1,),
    spatial_size: Sequence[int] = (48, 64, 48),
    output: str | None = None,
    quadrature: int = 32,
    resolution: int = 200,
) -> None:
    """Each loss's minimiser under the hippocampus label law of ``width`` (label_uncertainty_width) on the
    held-out volumes of ``folds``: print the mean biases against the expected volumes, write ``output`` (JSON).

    Args:
        data_dir: the prepared hippocampus folder (datalist.json inside).
        width: the law's width in voxels (0: no uncertainty, every minimiser is the label).
        folds: the held-out folds whose volumes are computed.
        spatial_size: the bundles' training grid (the law is defined there).
        output: JSON file to write (a study folder's label_law_theory.json is read by its report).
        quadrature: midpoint-grid points per shift for the expectations.
        resolution: steps of [-width, width] per shift in the search of the per-image Dice quadrant.
    """
    result = label_law_theory(data_dir, float(width), list(folds), list(spatial_size), quadrature, resolution)
    for loss, biases in result["mean_bias"].items():
        relative = result["mean_relative_bias"][loss]
        cells = ", ".join(f"{c} {biases[c]:+.3f} ml ({100 * relative[c]:+.1f}%)" for c in biases)
        print(f"{loss:<11} {cells}")
    if output:
        write_label_law_theory(Path(output), result)
        print(f"wrote {output}")


def write_label_law_theory(path: Path, result: dict) -> None:
    """:func:`label_law_theory`'s result as JSON (6 significant digits), written atomically."""
    from custom_losses.atomic import write_json_atomic

    write_json_atomic(path, _rounded(result))


# ----------------------------------------------------------------------------------------------- outputs


def _rounded(value):
    """Floats to 6 significant digits (readable JSON), recursively."""
    if isinstance(value, float | np.floating):
        return float(f"{float(value):.6g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    return value


def plot_results(results: dict, path: Path) -> None:
    """Predicted soft (solid) and hard (hatched) volume per loss, one panel per scenario group, as a PNG.

    Error bars: s.d. over cases. Dashed line: E|Y|. Black tick: the loss's exact minimiser. Top labels: soft
    error versus E|Y| and, for groups with q < 1, the share of lesion-free images given a lesion (FP).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, group) for name, scenario in results["scenarios"].items() for group in scenario["groups"]]
    losses = results["settings"]["losses"]
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 4.4 * rows), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    if len(panels) < axes.size:
        settings = results["settings"]
        note = (
            f"free logits per case, Adam lr {settings['learning_rate']:g} (cosine to 0)\n"
            f"{settings['steps']} steps, {settings['cases_per_group']} cases per group,\n"
            f"{settings['samples_per_case']} {settings['sampling']} annotations per case and step\n"
            f"seed {settings['seed']}, {settings['image_size']}x{settings['image_size']} images"
        )
        axes.flat[-1].text(0.05, 0.6, note, fontsize=9, va="center", family="monospace")
    for ax, (scenario_name, group_name) in zip(axes.flat, panels, strict=False):
        scenario = results["scenarios"][scenario_name]
        group = scenario["groups"][group_name]
        x = np.arange(len(losses))
        for index, loss_name in enumerate(losses):
            measured = scenario["losses"][loss_name][group_name]
            ideal = scenario["ideal"][loss_name][group_name]["soft"]
            colour = colours[index]
            soft, hard = measured["soft_volume"], measured["hard_volume"]
            ax.bar(x[index] - 0.2, soft, 0.4, yerr=measured["soft_volume_sd"], color=colour, capsize=2)
            ax.bar(x[index] + 0.2, hard, 0.4, color="white", edgecolor=colour, hatch="///")
            ax.plot([x[index] - 0.42, x[index] + 0.02], [ideal, ideal], color="black", linewidth=2)
            label = f"{100 * measured['soft_relative_error']:+.0f}%"
            if "lesion_free_false_positive_share" in measured:
                label += f"\nFP {100 * measured['lesion_free_false_positive_share']:.0f}%"
            ax.text(x[index], 0.98, label, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8)
        expected = group["expected_volume"]
        ax.axhline(expected, color="grey", linestyle="--", linewidth=1.2)
        ax.set_xticks(x, [LOSS_LABELS[name] for name in losses], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("volume (pixels)")
        law = "log-uniform" if group["radius_law"] == "log_uniform" else "uniform"
        ax.set_title(
            f"{scenario_name} / {group_name}: R {law} [{group['radius_min']:g}, {group['radius_max']:g}],"
            f" q = {group['presence']:g}; E|Y| = {expected:.0f} px",
            fontsize=9,
        )
        ax.set_ylim(0, ax.get_ylim()[1] * 1.18)
    fig.suptitle(
        "Predicted volume per loss: soft = sum p (solid, ±s.d. over cases), hard = #(p > 0.5) (hatched);"
        " dashed = E|Y|; black tick = the loss's exact minimiser\ntop labels: soft volume error vs E|Y|;"
        " FP = share of lesion-free images given a lesion",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(results: dict) -> str:
    """Plain-text table of the measurements: one row per scenario, group and loss."""
    head = ("scenario/group", "loss", "E|Y|", "soft", "hard", "ideal", "soft err", "hard err", "FP", "loss gap")
    rows = [f"{head[0]:<22} {head[1]:<18}" + "".join(f" {h:>9}" for h in head[2:])]
    for scenario_name, scenario in results["scenarios"].items():
        for group_name, group in scenario["groups"].items():
            for loss_name, measured in scenario["losses"].items():
                values = measured[group_name]
                share = values.get("lesion_free_false_positive_share")
                cells = (
                    f"{group['expected_volume']:.1f}",
                    f"{values['soft_volume']:.1f}",
                    f"{values['hard_volume']:.1f}",
                    f"{scenario['ideal'][loss_name][group_name]['soft']:.1f}",
                    f"{100 * values['soft_relative_error']:+.1f}%",
                    f"{100 * values['hard_relative_error']:+.1f}%",
                    "" if share is None else f"{100 * share:.0f}%",
                    f"{measured['expected_loss_gap']:.1e}",
                )
                rows.append(
                    f"{scenario_name + '/' + group_name:<22} {loss_name:<18}" + "".join(f" {c:>9}" for c in cells)
                )
    return "\n".join(rows)


def run(
    output_dir: str = "runs/volume_bias",
    steps: int = 4000,
    cases_per_group: int = 8,
    samples_per_case: int = 8,
    learning_rate: float = 0.05,
    seed: int = 0,
    sampling: str = "stratified",
    plot: bool = True,
) -> None:
    """Run the study: write OUTPUT_DIR/results.json and OUTPUT_DIR/volume_bias.png, print a table.

    Args:
        output_dir: folder for results.json and volume_bias.png (created).
        steps: Adam steps per loss and scenario (cosine decay to 0).
        cases_per_group: independent cases (logit maps) per group of a scenario.
        samples_per_case: fresh annotations per case and step.
        learning_rate: initial Adam learning rate.
        seed: seed of the annotation stream (scenario i uses seed + 1000 i, the same for every loss).
        sampling: "stratified" (Latin hypercube per case and step) or "iid".
        plot: also write the PNG.
    """
    results = run_study(steps, cases_per_group, samples_per_case, learning_rate, seed, sampling)
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=4, ensure_ascii=False) + "\n")
    if plot:
        plot_results(results, folder / "volume_bias.png")
    print(format_table(results))
    print(f"wrote {folder / 'results.json'}; training took {results['settings']['wall_seconds']:.1f} s", flush=True)


def theory(cases_per_group: int = 8) -> None:
    """Print E|Y|, the s.d. of |Y| and each loss's exact minimiser volume for every scenario (no training)."""
    distances = pixel_distances()
    for scenario in default_scenarios(cases_per_group):
        ideal = ideal_volumes(scenario, distances)
        for group in scenario.groups:
            expected = expected_volume(distances, group)
            print(f"{scenario.name}/{group.name}: E|Y| = {expected:.1f}, sd|Y| = {volume_sd(distances, group):.1f}")
            for name in LOSSES:
                volume = ideal[name][group.name]["soft"]
                print(f"    {name:<18} {volume:7.1f} px  ({100 * (volume / expected - 1):+.1f}%)")


def main(argv: Sequence[str] | None = None) -> int:
    commands = {"run": run, "theory": theory, "label_law": label_law}
    # a bad scenario, law or sampling, or a missing or malformed dataset
    return run_fire(commands, argv, "volume_bias_study.py", (InputError,))


if __name__ == "__main__":
    sys.exit(main())
