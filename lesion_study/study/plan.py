"""A study's plan: which dataset, bundles, folds, seeds and settings, and the runs that follow from them.

``plan_study`` turns the study command's options into a :class:`Plan` (every check that can fail before a
run starts is made here); ``planned_jobs`` lists the runs still to do, each one child command
(``python -m lesion_study.study run_bundle``), and the status of those finished earlier.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lesion_study.bundlegen.specs import DATASETS as DATASET_SPECS
from lesion_study.bundlegen.specs import DatasetSpec, load_dataset_spec
from lesion_study.paths import BUNDLES_DIR, REPO
from lesion_study.study import tracking as study_tracking
from lesion_study.study.launch import Job, RunState, RunStatus, check_cuda, check_launch
from lesion_study.study.layout import (
    WEIGHTS_NOT_KEPT,
    read_settings,
    read_study_record,
    run_path,
    stage_done,
    weights_not_kept,
)


class StudyError(ValueError):
    """A study that cannot start: the message names what is missing or wrong."""


# The demo's settings, chosen from measured validation curves to converge inside 10 minutes on a 2-core CPU
# (docs/demo.md); tests/test_demo_settings.py keeps them within that measured budget.
DEMO_SETTINGS = {
    "epochs": 30,
    "batch_size": 8,
    "val_batch_size": 16,
    "image_size": 64,
    "num_workers": 0,
    "learning_rate": 5e-4,
    "network_def#backbone": "resnet10",
    "network_def#decoder_channels": [128, 64, 32, 16, 8],
}


# Galdran et al.'s training recipe (train_losses.py, utils/get_loaders.py of agaldran/lesion_losses_ood): NAdam at
# 3e-4 without weight decay, cosine annealing to 1e-8 stepped per iteration over the whole training, batch 8,
# ImageNet input normalisation, his augmentation, the last epoch's model evaluated.
GALDRAN_RECIPE = {
    # 45 epochs from scratch (he trained 12 from ImageNet weights): on polyp fold 1 neither 20 nor 30 came within
    # 0.01 of the longer runs' last validation Dice for CE, so the longest measured (docs/galdran_recipe.md)
    "epochs": 45,
    "batch_size": 8,
    "val_batch_size": 16,
    "num_workers": 2,
    "optimizer_name": "nadam",
    "learning_rate": 3e-4,
    "weight_decay": 0.0,
    "lr_schedule": "cosine_iteration",
    "lr_min": 1e-8,
    "augmentation": "galdran",
    "input_normalization": "imagenet",
    "evaluation_model": "final",
}
# Named reduced-scale settings (--setting=NAME): bundle overrides per dataset, measured on the 2-core CPU of
# the development machine (see docs/results/). Explicit --epochs, --device and overrides win over them.
SETTINGS = {
    "cpu": {
        "polyp": {"image_size": 128, "epochs": 14, "batch_size": 16, "val_batch_size": 16, "num_workers": 2},
        # 128 px: 1.4% of FUSeg's 1062 wounds vanish when 512 px masks are resized, no image loses its wound
        "footulcer": {"image_size": 128, "epochs": 12, "batch_size": 16, "val_batch_size": 16, "num_workers": 2},
        # native size, the spec's network; batch 8 gives twice the updates per epoch at the same CPU cost
        "hippocampus": {"epochs": 12, "batch_size": 8, "val_batch_size": 16, "num_workers": 2},
    },
    # Galdran et al.'s recipe (agaldran/lesion_losses_ood) as far as the bundles go, on the CPU and from
    # scratch; field by field, and what differs from his, in docs/galdran_recipe.md
    "galdran_cpu": {
        "polyp": GALDRAN_RECIPE
        | {
            "image_size": [96, 128],  # his 480x640 (height x width, the frames' 3:4 aspect) divided by 5
            # the sweep R in {1, 2, 3, 5} on fold 1 validation: 5 highest, validation Dice rising with R
            # (docs/results/polyp_galdran_dbce_radius_cpu.md)
            "dbce_radius": 5,
        },
        "footulcer": GALDRAN_RECIPE
        | {
            "image_size": [128, 128],  # FUSeg's photographs are square (512x512): aspect kept, as he keeps it
            "dbce_radius": 5,  # the polyp sweep's R (smaller radii were worse there); not swept on foot ulcers
        },
    },
}


def bundle_names(dataset: StudyDataset | str, bundles: list[str] | str | None, bundles_dir: Path) -> list[str]:
    """Bundle folders to run: ``<prefix>_<loss>`` for the chosen losses (default: every loss of the dataset)."""
    if isinstance(dataset, str):
        dataset = study_datasets()[dataset]
    prefix = dataset.bundle_prefix
    if bundles is None:
        names = [f"{prefix}_{loss}" for loss in dataset.losses]
    else:
        requested = [bundles] if isinstance(bundles, str) else list(bundles)
        names = [b if b.startswith(prefix + "_") else f"{prefix}_{b}" for b in requested]
    missing = [n for n in names if not (bundles_dir / n / "configs" / "train.json").is_file()]
    if missing:
        raise StudyError(f"no bundle {', '.join(missing)} in {bundles_dir} (train.json missing)")
    return names


def prepare_demo_data(data_root: Path, seed: int = 0) -> Path:
    """Synthetic lesion dataset in the official layouts, prepared exactly as real data."""
    from lesion_study.demo_data import write_demo_layouts
    from lesion_study.prepare.datasets import prepare_polyp

    prepared = data_root / "prepared"
    if (prepared / "datalist.json").is_file():
        return prepared
    kvasir, endotect = write_demo_layouts(data_root / "raw", seed=seed)
    prepare_polyp(kvasir, endotect, prepared, size=DEMO_SETTINGS["image_size"], seed=seed)
    return prepared


def read_json(path: Path) -> object:
    """A JSON file, or a one-line error naming it."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StudyError(f"{path} is not valid JSON: {error}") from None


def example_items(data_dir: Path, per_kind: int) -> list[tuple[str, Path, Path | None]]:
    """(name, image, mask or None) of the first ``per_kind`` test images with a lesion, then without."""
    datalist_file = data_dir / "datalist.json"
    datalist = read_json(datalist_file)
    tests = datalist.get("test", []) if isinstance(datalist, dict) else None
    if not isinstance(tests, list) or not all(isinstance(t, dict) and "image" in t for t in tests):
        raise StudyError(f"{datalist_file}: expected an object whose 'test' is a list of entries with an 'image'")

    def resolve(path: str) -> Path:
        return Path(path) if Path(path).is_absolute() else data_dir / path

    chosen = []
    for lesion_free in (False, True):
        for item in [t for t in tests if t.get("lesion_free") == lesion_free][:per_kind]:
            image, mask = resolve(item["image"]), resolve(item["label"]) if item.get("label") else None
            for kind, path in (("image", image), ("mask", mask)):
                if path is not None and not path.is_file():
                    raise StudyError(f"test {kind} {path} listed in {datalist_file} does not exist")
            chosen.append((f"{'free' if lesion_free else 'lesion'}_{image.name}", image, mask))
    return chosen


def choose_examples(data_dir: Path, out: Path, per_kind: int = 3) -> Path:
    """Copy a few test images with and without a lesion (``OUT/example_images``) and their ground-truth
    masks (``OUT/example_masks``, same names) for the example grid.

    Complete or absent: the set is built in a temporary folder and renamed into place. A set that does not
    hold exactly the chosen images (another dataset, or left half-copied by an earlier version) is built
    again, and the runs' example predictions of it are done again."""
    chosen = example_items(data_dir, per_kind)
    destination, masks = out / "example_images", out / "example_masks"
    if destination.is_dir() and sorted(p.name for p in destination.iterdir()) == sorted(n for n, _, _ in chosen):
        return destination
    replaced = destination.is_dir()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".example_images-", dir=out))
    try:
        for folder in ("images", "masks"):
            (staging / folder).mkdir()
        for name, image, mask in chosen:
            shutil.copy(image, staging / "images" / name)
            if mask is not None:
                shutil.copy(mask, staging / "masks" / name)
        for folder in (destination, masks):
            shutil.rmtree(folder, ignore_errors=True)
        (staging / "masks").rename(masks)
        (staging / "images").rename(destination)  # last: its presence says the set is complete
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if replaced:
        for done in out.glob("runs/*/seed*/examples/fold*/done"):
            done.unlink()
    return destination


# bundle overrides that do not change what a run computes: a run may go on with other values
RESULT_NEUTRAL = ("num_workers", "resume_checkpoint_interval_s", "cache_rate")


def settings_difference(recorded: dict, current: dict, neutral: tuple[str, ...] = ()) -> tuple[str, str]:
    """The settings that differ, as ``key=value`` lists of the recorded run and of this command ("" when
    none); a key one side does not set is the bundle's default."""
    keys = sorted(k for k in {*recorded, *current} if k not in neutral and recorded.get(k) != current.get(k))

    def listed(settings: dict) -> str:
        return ", ".join(f"{k}={json.dumps(settings[k]) if k in settings else '(bundle default)'}" for k in keys)

    return listed(recorded), listed(current)


def top_level_id(key: str) -> str:
    """``network_def`` of ``network_def#backbone`` or ``network_def::backbone`` (MONAI's id separators)."""
    from monai.bundle.reference_resolver import ReferenceResolver

    return ReferenceResolver.split_id(key)[0]


def check_overrides(overrides: dict, names: list[str], bundles_root: Path) -> None:
    """Every override must be an id of the bundles' configs: a misspelt option (``--learning_rat``) or a
    flag meant for the study would otherwise become a new, unused config id and be silently ignored."""
    known: set[str] = set()
    for name in names:
        for config in sorted((bundles_root / name / "configs").glob("*.json")):
            content = json.loads(config.read_text())
            known.update(content if isinstance(content, dict) else {})
    unknown = sorted(key for key in overrides if top_level_id(key) not in known)
    if unknown:
        raise StudyError(
            f"unknown option(s) {', '.join('--' + k for k in unknown)}: neither an option of run_study.py nor "
            f"an id in the configs of {names[0]} (run_study.py --help lists the options)"
        )


def _int_list(name: str, value: list[int] | tuple[int, ...] | int) -> list[int]:
    values = [value] if isinstance(value, int) else list(value)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise StudyError(f"--{name} must be an integer or a list of integers such as [0,1,2], got {value!r}")
    if len(set(values)) != len(values):
        raise StudyError(f"--{name} lists a value twice: {values}")
    return values


@dataclass(frozen=True)
class StudyDataset:
    """What a study needs of a dataset: its bundles' prefix and losses, its kind, settings it always runs
    with, and, for a dataset made here (``demo``), how to make its data when no ``--data_dir`` is given."""

    name: str
    spec: DatasetSpec
    bundle_prefix: str
    default_settings: dict = field(default_factory=dict)
    make_data: Callable[[Path], Path] | None = None

    @property
    def losses(self) -> tuple[str, ...]:
        return tuple(self.spec.losses)

    @property
    def volumes(self) -> bool:
        """3D volumes, evaluated by cross-validation on held-out folds (no test set)."""
        return self.spec.kind == "mri3d"


def study_datasets() -> dict[str, StudyDataset]:
    """The built-in datasets, and ``demo``: synthetic polyp-like data made here, run with the polyp bundles."""
    datasets = {name: StudyDataset(name, spec, name) for name, spec in DATASET_SPECS.items()}
    datasets["demo"] = StudyDataset("demo", DATASET_SPECS["polyp"], "polyp", DEMO_SETTINGS, prepare_demo_data)
    return datasets


def study_dataset(dataset: str, spec: str | None, bundles_dir: str | None) -> StudyDataset:
    """The dataset named on the command line: built in, or described by ``--spec`` (its bundles in
    ``--bundles_dir``)."""
    if spec is not None:
        own_spec = load_dataset_spec(spec)
        if own_spec.name != dataset:
            raise StudyError(f"{spec} describes dataset {own_spec.name!r}, not {dataset!r}")
        if bundles_dir is None:
            raise StudyError("--spec needs --bundles_dir: where make_bundles.py --dataset_spec wrote the bundles")
        return StudyDataset(dataset, own_spec, dataset)
    known = study_datasets()
    if dataset not in known:
        raise StudyError(f"dataset must be one of {', '.join(known)} (or --spec=FILE), got {dataset!r}")
    return known[dataset]


@dataclass(frozen=True)
class Plan:
    """A checked study: what runs, with which settings, on which data, launched how."""

    dataset: StudyDataset
    names: list[str]
    folds: list[int]
    seeds: list[int]
    settings: dict
    out: Path
    bundles_root: Path
    data_path: Path
    examples_dir: Path | None
    tracking_run: dict | None
    ensemble: bool
    launcher: str
    max_parallel: int
    gpus: list[int] | None

    @property
    def parallel(self) -> int:
        return self.max_parallel if self.gpus is None else len(self.gpus)

    def child_command(self, name: str, seed: int, fold: int, *extra: str) -> list[str]:
        """The command of one run (or, with ``--ensemble_folds``, of a seed's fold ensemble)."""
        command = [sys.executable, "-m", "lesion_study.study", "run_bundle"]
        command += ["--bundle_dir", str(self.bundles_root / name), "--run_dir", str(run_path(self.out, name, seed))]
        command += ["--data_dir", str(self.data_path), "--fold", str(fold)]
        return command + ["--overrides", json.dumps({**self.settings, "seed": seed}), *extra]


def plan_study(
    dataset: str,
    *,
    data_dir: str | None,
    bundles: list[str] | str | None,
    folds: list[int] | int,
    seeds: list[int] | int,
    epochs: int | None,
    device: str | None,
    precision: str,
    output_dir: str | None,
    setting: str | None,
    ensemble: bool,
    examples: bool,
    bundles_dir: str | None,
    spec: str | None,
    finetune_from: str | None,
    max_parallel: int,
    gpus: list[int] | int | None,
    launcher: str,
    tracking: str | None,
    tracking_uri: str | None,
    overrides: dict,
) -> Plan:
    """The study command's options, checked, as a plan (the options are those of ``cli.study``)."""
    chosen = study_dataset(dataset, spec, bundles_dir)
    if ensemble and chosen.volumes:
        raise StudyError(f"{dataset} is evaluated by cross-validation on held-out folds: no test set to ensemble on")
    if setting is not None and dataset not in SETTINGS.get(setting, {}):
        known = ", ".join(f"{name} ({', '.join(sets)})" for name, sets in SETTINGS.items())
        raise StudyError(f"no setting {setting!r} for {dataset}; settings (datasets): {known}")
    if gpus is not None:
        gpus = _int_list("gpus", gpus)
    check_launch(launcher, max_parallel, gpus, None if device is None else str(device))
    if launcher == "local":  # a cluster's GPUs are not visible from where the jobs are submitted
        check_cuda(None if device is None else str(device), gpus)
    if tracking is not None:
        study_tracking.require(tracking)
    out = Path(output_dir or REPO / "study" / dataset).resolve()
    bundles_root = Path(bundles_dir).resolve() if bundles_dir else BUNDLES_DIR
    names = bundle_names(chosen, bundles, bundles_root)
    folds, seeds = _int_list("folds", folds), _int_list("seeds", seeds)
    if ensemble and len(set(folds)) < 2:
        raise StudyError(
            f"--ensemble needs two or more folds, got --folds={folds}: a fold ensemble averages the fold models "
            "(for Galdran's comparison, all five: --folds=[1,2,3,4,5])"
        )
    settings = dict(chosen.default_settings)
    settings.update(SETTINGS[setting][dataset] if setting else {})
    settings.update(overrides)
    if epochs is not None:
        settings["epochs"] = int(epochs)
    if device is not None:
        settings["device"] = str(device)
    from custom_losses.precision import PRECISIONS

    if precision not in PRECISIONS:
        raise StudyError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    settings["precision"] = precision  # recorded in study.json, the report and MLflow even when auto
    if finetune_from is not None:
        if not Path(finetune_from).is_file():
            raise StudyError(f"--finetune_from {finetune_from} does not exist (a trained model.pt)")
        settings["finetune_checkpoint"] = str(Path(finetune_from).resolve())
    if "seed" in settings:
        raise StudyError("set training seeds with --seeds=[...], not --seed")
    check_overrides(overrides, names, bundles_root)

    if data_dir is not None:
        data_path = Path(data_dir).resolve()
    elif chosen.make_data is not None:
        data_path = chosen.make_data(out / "data")
    else:
        raise StudyError(f"{dataset}: --data_dir is required (prepare it with scripts/prepare_data.py)")
    if not (data_path / "datalist.json").is_file():
        raise StudyError(f"{data_path / 'datalist.json'} does not exist (prepare it with scripts/prepare_data.py)")
    examples_dir = choose_examples(data_path, out) if examples and not chosen.volumes else None

    tracking_run = None
    if tracking is not None:
        tracking_run = {"uri": tracking_uri or study_tracking.default_uri(out), "experiment": out.name}
        study_tracking.ensure_experiment(tracking_run["uri"], out.name, out / "mlartifacts")
    return Plan(
        chosen,
        names,
        folds,
        seeds,
        settings,
        out,
        bundles_root,
        data_path,
        examples_dir,
        tracking_run,
        ensemble,
        launcher,
        max_parallel,
        gpus,
    )


def planned_jobs(plan: Plan) -> tuple[list[Job], dict[str, RunStatus]]:
    """The runs still to do, and the status of those finished earlier (skipped). An unfinished run asked
    to go on with other settings than it started with is refused."""
    from custom_losses.handlers import resume_checkpoints

    combinations = [(name, seed, fold) for name in plan.names for seed in plan.seeds for fold in plan.folds]
    status: dict[str, RunStatus] = {}
    earlier = read_study_record(plan.out).get("status", {})
    jobs: list[Job] = []
    for index, (name, seed, fold) in enumerate(combinations):
        run_dir = run_path(plan.out, name, seed)
        key = f"{name}/seed{seed}/fold{fold}"
        label = f"[{index + 1}/{len(combinations)}] {name} seed {seed} fold {fold}"
        # a kept record's run has no weights to predict the examples with
        examples = plan.examples_dir and not weights_not_kept(run_dir, fold)
        stages = ["train", "evaluate"] + (["examples"] if examples else [])
        seeded = {**plan.settings, "seed": seed}
        recorded = read_settings(run_dir, fold)
        was, now = settings_difference(recorded or {}, seeded) if recorded else ("", "")
        if all(stage_done(run_dir, fold, s) for s in stages):
            differs = f" with {was} (this command: {now})" if was or now else ""
            print(f"{label}: finished earlier{differs}, skipped", flush=True)
            before = RunStatus.from_record(earlier[key]) if key in earlier else None
            if before is not None and before.ok and before.seconds is not None:  # keep how long it took
                status[key] = RunStatus(RunState.EARLIER, seconds=before.seconds)
            else:
                status[key] = RunStatus(RunState.SKIPPED)
            continue
        models = run_dir / "models" / f"fold{fold}"
        started_training = stage_done(run_dir, fold, "train") or bool(resume_checkpoints(models))
        if recorded and started_training:
            was, now = settings_difference(recorded, seeded, RESULT_NEUTRAL)
            if was or now:
                raise StudyError(
                    f"{key} was trained with {was or '(none)'}, this command asks for {now or '(none)'}: run it with "
                    f"the same settings, or delete {models} to train it again, or choose another --output_dir"
                )
        extra = ["--examples_dir", str(plan.examples_dir)] if plan.examples_dir else []
        if plan.tracking_run:
            loss = name.removeprefix(f"{plan.dataset.bundle_prefix}_")
            tags = {"loss": loss, "dataset": plan.dataset.name, "fold": fold, "seed": seed, "bundle": name}
            run_tracking = {**plan.tracking_run, "run_name": key, "tags": tags, "params": {**plan.settings, **tags}}
            extra += ["--tracking", json.dumps(run_tracking)]
        jobs.append(Job(key, label, plan.child_command(name, seed, fold, *extra), run_dir / f"fold{fold}.log"))
    return jobs, status


def ensemble_jobs(plan: Plan) -> list[Job]:
    """Each seed's fold-ensemble evaluation not done yet (the mean probability of the fold models); refused
    where a fold's weights were not kept (a study restored from its kept record)."""
    jobs = []
    for name in plan.names:
        for seed in plan.seeds:
            run_dir = run_path(plan.out, name, seed)
            if stage_done(run_dir, "ensemble", "evaluate"):
                continue
            lost = [fold for fold in plan.folds if weights_not_kept(run_dir, fold)]
            if lost:
                note = run_dir / "models" / f"fold{lost[0]}" / WEIGHTS_NOT_KEPT
                raise StudyError(
                    f"the fold ensemble of {name} seed {seed} needs every fold's model, and the weights of fold(s) "
                    f"{lost} were not kept ({note}): delete that file of each such fold to train it again, or leave "
                    "out --ensemble"
                )
            command = plan.child_command(name, seed, 0, "--ensemble_folds", json.dumps(plan.folds))
            jobs.append(
                Job(f"{name}/seed{seed}/ensemble", f"{name} seed {seed} ensemble", command, run_dir / "ensemble.log")
            )
    return jobs
