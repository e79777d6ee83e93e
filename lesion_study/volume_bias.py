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
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import fire
import numpy as np
import torch
from torch.nn.modules.loss import _Loss

from custom_losses import CrossEntropyLoss, SoftDiceLoss

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
            raise ValueError(f"need a uniform or log_uniform law on 0 < radius_min < radius_max, got {self}")
        if not 0 < self.presence <= 1:
            raise ValueError(f"presence must be in (0, 1], got {self.presence}")

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
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
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
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
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
        raise ValueError(f"bad scenarios {scenarios}, losses {loss_names} or sampling {sampling!r}")
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
    fire.Fire(
        {"run": run, "theory": theory}, command=list(argv) if argv is not None else None, name="volume_bias_study.py"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
