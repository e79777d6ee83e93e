"""Which loss for my lesion task? Train the loss bundles of a dataset, evaluate them, report.

    python scripts/run_study.py demo                                   # synthetic data, CPU, ~10 min
    python scripts/run_study.py polyp --data_dir=DATA/polyp --folds=[1] --epochs=40 --device=cuda
    python scripts/run_study.py polyp --data_dir=DATA/polyp --folds=[1,2,3,4,5] --ensemble=True
    python scripts/run_study.py report --output_dir=study/polyp        # rebuild the report only
    python scripts/run_study.py polyp --data_dir=DATA/polyp --gpus=[0,1,2,3] --tracking=mlflow  # scale out:
    python scripts/run_study.py polyp --data_dir=DATA/polyp --launcher=slurm --slurm_partition=gpu  # README

Each (bundle, seed, fold) runs in its own process through MONAI's bundle API (``monai.bundle.run`` on the
bundle's own configs) and writes into ``OUTPUT/runs/<bundle>/seed<s>/`` (``models/``, ``eval/``, ``logs/``),
with its console output in ``OUTPUT/runs/<bundle>/seed<s>/fold<k>.log`` and the bundle overrides it was
trained with in ``fold<k>_settings.json`` (``export_bundle.py`` carries them into a shared bundle). A
finished stage (training: ``model_final.pt``; evaluation: ``summary.json``) is skipped when the study is run
again, and a training interrupted mid-run continues from its last resume checkpoint, so an interrupted study
resumes.
A failed run is reported and the others go on; the exit status is 1 if any run failed.
The report: ``results.csv``, ``results.md`` and PNG plots in ``OUTPUT``, with every loss compared image
by image with a reference loss (``--reference=ce``): mean differences with bootstrap intervals, Wilcoxon
and McNemar p-values, Holm-corrected.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script: make `scripts` importable
    sys.path.insert(0, str(REPO))

from scripts import study_tracking  # noqa: E402
from scripts.bundlegen.specs import DATASETS as DATASET_SPECS  # noqa: E402
from scripts.bundlegen.specs import DatasetSpec, SpecError, load_dataset_spec  # noqa: E402
from scripts.study_launch import (  # noqa: E402
    Job,
    LaunchError,
    SlurmOptions,
    check_cuda,
    check_launch,
    end_with_study,
    format_seconds,
    outcome,
    run_child,
    run_parallel,
    run_sequential,
    submit_array,
)
from scripts.study_layout import (  # noqa: E402
    ReportInputError,
    discover_runs,
    read_settings,
    run_path,
    settings_file,
)

STUDY_DATASETS = (*DATASET_SPECS, "demo")
STUDY_RECORD = "study.json"  # what the last study command ran, so that `report` alone rebuilds the same page
# The demo's settings, chosen from measured validation curves to converge inside 10 minutes on a 2-core CPU
# (README "What the demo measured"); tests/test_demo_settings.py keeps them within that measured budget.
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
    # provisional: 30 epochs from scratch (he trained 12 from ImageNet weights) until measured validation
    # curves show where they flatten; the lead engineer measures and sets it (docs/galdran_recipe.md)
    "epochs": 30,
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
            "dbce_radius": 2,  # 5 px at 352 px is 1.8 px at 128 px wide: provisional until the R sweep
        },
        "footulcer": GALDRAN_RECIPE
        | {
            "image_size": [128, 128],  # FUSeg's photographs are square (512x512): aspect kept, as he keeps it
            "dbce_radius": 1,  # 5 px at 512 px is 1.25 px at 128 px
        },
    },
}


class StudyError(ValueError):
    """A study that cannot start: the message names what is missing or wrong."""


def bundle_prefix(dataset: str) -> str:
    """The dataset part of its bundles' names (``<prefix>_<loss>``); the demo runs the polyp bundles."""
    return "polyp" if dataset == "demo" else dataset


def bundle_names(
    dataset: str, bundles: list[str] | str | None, bundles_dir: Path, spec: DatasetSpec | None = None
) -> list[str]:
    """Bundle folders to run: ``<dataset>_<loss>`` for the chosen losses (default: every loss)."""
    prefix = bundle_prefix(dataset)
    if bundles is None:
        names = [f"{prefix}_{loss}" for loss in (spec or DATASET_SPECS[prefix]).losses]
    else:
        requested = [bundles] if isinstance(bundles, str) else list(bundles)
        names = [b if b.startswith(prefix + "_") else f"{prefix}_{b}" for b in requested]
    missing = [n for n in names if not (bundles_dir / n / "configs" / "train.json").is_file()]
    if missing:
        raise StudyError(f"no bundle {', '.join(missing)} in {bundles_dir} (train.json missing)")
    return names


def stage_marker(run_dir: Path, fold: int | str, stage: str) -> Path:
    """The file whose presence says a run's stage has finished."""
    if stage == "train":
        return run_dir / "models" / f"fold{fold}" / "model_final.pt"
    if stage == "evaluate":
        return run_dir / "eval" / f"fold{fold}" / "summary.json"
    if stage == "examples":
        return run_dir / "examples" / f"fold{fold}" / "done"
    raise ValueError(stage)


def stage_done(run_dir: Path, fold: int | str, stage: str) -> bool:
    return stage_marker(run_dir, fold, stage).is_file()


def read_study_record(out: Path) -> dict:
    """The last study command's dataset, bundles, settings and run statuses (empty before the first)."""
    path = out / STUDY_RECORD
    return read_json(path) if path.is_file() else {}


@contextmanager
def run_lock(run_dir: Path, name: str) -> Iterator[None]:
    """Hold ``RUN/<name>.lock`` (a run's fold, or its ensemble) for this process, or fail naming its holder.

    A POSIX record lock (``lockf``): the kernel releases it when the process ends however it ends, and the
    data-loader processes it forks do not hold it. The file keeps the holder's PID for the message."""
    try:
        import fcntl
    except ModuleNotFoundError:  # Windows: no lock
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"{name}.lock"
    with open(path, "a+") as lock:
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise StudyError(
                f"{run_dir} {name} is in use by process {holder} ({path}): another study is running it; "
                "wait for it to end or stop it"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def run_bundle(
    bundle_dir: str,
    run_dir: str,
    data_dir: str,
    fold: int,
    overrides: dict | str = "{}",
    examples_dir: str | None = None,
    ensemble_folds: list[int] | str | None = None,
    tracking: dict | str | None = None,
) -> None:
    """One (bundle, fold) in this process: train, evaluate, predict the example images (stages already
    done are skipped). With ``ensemble_folds`` (a JSON list) it only runs the fold-ensemble evaluation.
    ``tracking`` (JSON: uri, experiment, run_name, tags, params): train with MONAI's ``--tracking mlflow``
    into that MLflow run, then add the tags, parameters and evaluation summary to it. One process at a time
    runs a (run folder, fold): a second one fails at once naming the first (:func:`run_lock`)."""
    end_with_study()
    with run_lock(Path(run_dir), "ensemble" if ensemble_folds is not None else f"fold{fold}"):
        _run_stages(bundle_dir, run_dir, data_dir, fold, overrides, examples_dir, ensemble_folds, tracking)


def _run_stages(
    bundle_dir: str,
    run_dir: str,
    data_dir: str,
    fold: int,
    overrides: dict | str,
    examples_dir: str | None,
    ensemble_folds: list[int] | str | None,
    tracking: dict | str | None,
) -> None:
    from monai.bundle import run

    from custom_losses.atomic import write_json_atomic
    from custom_losses.handlers import resume_checkpoints

    bundle, out = Path(bundle_dir), Path(run_dir)
    configs = bundle / "configs"
    overrides = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
    tracking = json.loads(tracking) if isinstance(tracking, str) else tracking
    common = {
        "bundle_root": str(bundle),
        "output_dir": str(out),
        "logging_file": str(configs / "logging.conf"),
        "meta_file": str(configs / "metadata.json"),
        **overrides,
    }
    evaluate = [str(configs / "train.json"), str(configs / "evaluate.json")]
    if ensemble_folds is not None:
        folds = json.loads(ensemble_folds) if isinstance(ensemble_folds, str) else list(ensemble_folds)
        ensemble = evaluate + [str(configs / "evaluate_ensemble.json")]
        run(config_file=ensemble, dataset_dir=data_dir, folds=folds, **common)
        return
    if not stage_done(out, fold, "train"):
        for stale in ("evaluate", "examples"):  # outputs of an earlier model of this run are done again
            stage_marker(out, fold, stale).unlink(missing_ok=True)
        resume = bool(resume_checkpoints(out / "models" / f"fold{fold}"))
        print(f"stage: train {bundle.name} fold {fold}{' (resumed)' if resume else ''}", flush=True)
        if not resume:  # a resumed run keeps the record of its start (the study refuses other settings)
            write_json_atomic(settings_file(out, fold), {"settings": overrides})
        train = [str(configs / "train.json")]
        if "finetune_checkpoint" in overrides:  # start from a trained model (--finetune_from)
            train.append(str(configs / "finetune.json"))
        if tracking:
            logged = {"tracking_uri": tracking["uri"], "experiment_name": tracking["experiment"]}
            logged["run_name"] = tracking["run_name"]
            logged["save_execute_config"] = str(out / f"train_config_fold{fold}.json")  # logged as an artifact
            run(
                config_file=train, dataset_dir=data_dir, fold=fold, resume=resume, tracking="mlflow", **common, **logged
            )
        else:
            run(config_file=train, dataset_dir=data_dir, fold=fold, resume=resume, **common)
    if not stage_done(out, fold, "evaluate"):
        print(f"stage: evaluate {bundle.name} fold {fold}", flush=True)
        run(config_file=evaluate, dataset_dir=data_dir, fold=fold, **common)
    if tracking:
        eval_dir = out / "eval" / f"fold{fold}"
        summary = json.loads((eval_dir / "summary.json").read_text())
        files = [eval_dir / "summary.json", *sorted(eval_dir.glob("per_*.csv"))]  # per_image or per_volume
        study_tracking.record_run(
            tracking["uri"],
            tracking["experiment"],
            tracking["run_name"],
            tracking["tags"],
            tracking["params"],
            summary,
            files,
        )
    if examples_dir and not stage_done(out, fold, "examples"):
        print(f"stage: examples {bundle.name} fold {fold}", flush=True)
        prediction_dir = out / "examples" / f"fold{fold}"
        inference = {k: v for k, v in common.items() if k in ("bundle_root", "output_dir", "logging_file", "meta_file")}
        inference_ids = json.loads((configs / "inference.json").read_text())
        # the overrides inference.json knows (device, image_size, network_def#backbone...), not training's
        inference.update({k: v for k, v in overrides.items() if top_level_id(k) in inference_ids})
        run(
            config_file=str(configs / "inference.json"),
            input_dir=examples_dir,
            prediction_dir=str(prediction_dir),
            fold=fold,
            **inference,
        )
        (prediction_dir / "done").write_text("ok\n")


def prepare_demo_data(data_root: Path, seed: int = 0) -> Path:
    """Synthetic lesion dataset in the official layouts, prepared exactly as real data."""
    from scripts.demo_data import write_demo_layouts
    from scripts.prepare_data import prepare_polyp

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


def study(
    dataset: str,
    data_dir: str | None = None,
    bundles: list[str] | str | None = None,
    folds: list[int] | int = (1,),
    seeds: list[int] | int = (0,),
    epochs: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    output_dir: str | None = None,
    setting: str | None = None,
    reference: str = "ce",
    ensemble: bool = False,
    examples: bool = True,
    bundles_dir: str | None = None,
    spec: str | None = None,
    finetune_from: str | None = None,
    max_parallel: int = 1,
    gpus: list[int] | int | None = None,
    launcher: str = "local",
    wait: bool = True,
    slurm_partition: str | None = None,
    slurm_time_min: int = 120,
    slurm_gpus_per_job: int = 1,
    slurm_cpus_per_job: int = 8,
    slurm_mem_gb: int | None = None,
    tracking: str | None = None,
    tracking_uri: str | None = None,
    **overrides,
) -> int:
    """Train, evaluate and report every chosen loss bundle of ``dataset`` on the chosen folds and seeds.

    Args:
        dataset: ``polyp``, ``footulcer``, ``hippocampus``, or ``demo`` (synthetic polyp-like data made
            here, small settings for a CPU: the README's main job).
        data_dir: the prepared dataset folder (``datalist.json`` inside, see scripts/prepare_data.py);
            for ``demo`` it defaults to ``OUTPUT/data`` and is generated.
        bundles: losses or bundle names (default: all of the dataset), e.g. ``[ce,dice]``.
        folds: folds to train, e.g. ``[1,2,3,4,5]``.
        seeds: training seeds; every (bundle, fold, seed) is its own run, e.g. ``[0,1,2]``.
        epochs: training epochs (default: the bundle's, or the setting's).
        device: ``cpu``, ``cuda``, ``cuda:1``... (default: the bundle's choice).
        precision: the networks' compute precision: ``auto`` (bf16 where the device computes it natively:
            a GPU, or a CPU with AVX512-BF16 or AMX; fp32 elsewhere), ``bf16`` or ``fp32``.
        output_dir: study folder (default ``study/<dataset>``).
        setting: a named reduced-scale setting: ``cpu`` (image size, epochs, batch size for the 2-core
            CPU; see SETTINGS in this file and docs/results/), or ``galdran_cpu`` (Galdran et al.'s recipe at
            96x128 px from scratch, polyp and footulcer; docs/galdran_recipe.md).
        reference: the loss every other loss is compared with, image by image, in the report.
        ensemble: also evaluate the mean probability of the fold models (needs every fold listed).
        examples: predict a few test images per bundle for the example grid.
        bundles_dir: where the bundles live (default: this repo's ``bundles/``).
        spec: your dataset's spec file (``make_bundles.py --dataset_spec``); ``dataset`` is its name and
            ``bundles_dir`` the folder its bundles were written to.
        finetune_from: a trained checkpoint (``model.pt`` of a bundle or of an earlier study) every loss
            starts from instead of from scratch (the bundles' ``finetune.json``: matching tensors are
            loaded, learning rate 1e-4).
        max_parallel: runs at a time on this machine (CPU runs share the cores); with a SLURM launcher,
            the most jobs of the array running at once (default 64).
        gpus: GPUs to spread the runs over, one run per GPU at a time, e.g. ``[0,1,2,3]`` (each run sees
            only its GPU, through ``CUDA_VISIBLE_DEVICES``).
        launcher: ``local`` (this machine), ``slurm`` (one job array through submitit), or
            ``submitit_local`` (submitit's local executor: the SLURM code path without SLURM).
        wait: with a SLURM launcher, wait for the jobs and build the report (False: submit and return;
            build the report later with ``run_study.py report``).
        slurm_partition, slurm_time_min, slurm_gpus_per_job, slurm_cpus_per_job, slurm_mem_gb: resources
            of each SLURM job.
        tracking: ``mlflow``: every run logs to one MLflow experiment named after the study folder
            (MONAI's ``--tracking mlflow`` for training, plus tags, evaluation and report); needs
            ``pip install mlflow``.
        tracking_uri: the MLflow store (default: ``OUTPUT/mlruns.db``, SQLite).
        overrides: any other bundle config id, e.g. ``--batch_size=8 --num_workers=8``.
    """
    own_spec = None
    if spec is not None:
        own_spec = load_dataset_spec(spec)
        if own_spec.name != dataset:
            raise StudyError(f"{spec} describes dataset {own_spec.name!r}, not {dataset!r}")
        if bundles_dir is None:
            raise StudyError("--spec needs --bundles_dir: where make_bundles.py --dataset_spec wrote the bundles")
    elif dataset not in STUDY_DATASETS:
        raise StudyError(f"dataset must be one of {', '.join(STUDY_DATASETS)} (or --spec=FILE), got {dataset!r}")
    volumes = (own_spec or DATASET_SPECS.get(dataset, DATASET_SPECS["polyp"])).kind == "mri3d"
    if ensemble and volumes:
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
    started = time.time()
    out = Path(output_dir or REPO / "study" / dataset).resolve()
    bundles_root = Path(bundles_dir).resolve() if bundles_dir else REPO / "bundles"
    names = bundle_names(dataset, bundles, bundles_root, own_spec)
    folds, seeds = _int_list("folds", folds), _int_list("seeds", seeds)
    settings = dict(DEMO_SETTINGS) if dataset == "demo" else {}
    settings.update(SETTINGS[setting][dataset] if setting else {})
    settings.update(overrides)
    if epochs is not None:
        settings["epochs"] = int(epochs)
    if device is not None:
        settings["device"] = str(device)
    from custom_losses.handlers import resume_checkpoints
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

    if dataset == "demo":
        data_path = Path(data_dir).resolve() if data_dir else prepare_demo_data(out / "data")
    elif data_dir is None:
        raise StudyError(f"{dataset}: --data_dir is required (prepare it with scripts/prepare_data.py)")
    else:
        data_path = Path(data_dir).resolve()
    if not (data_path / "datalist.json").is_file():
        raise StudyError(f"{data_path / 'datalist.json'} does not exist (prepare it with scripts/prepare_data.py)")
    examples_dir = choose_examples(data_path, out) if examples and not volumes else None

    tracking_run = None
    if tracking is not None:
        tracking_run = {"uri": tracking_uri or study_tracking.default_uri(out), "experiment": out.name}
        study_tracking.ensure_experiment(tracking_run["uri"], out.name, out / "mlartifacts")
    print(f"study {dataset}: {len(names)} bundle(s) x {len(seeds)} seed(s) x {len(folds)} fold(s) -> {out}", flush=True)
    combinations = [(name, seed, fold) for name in names for seed in seeds for fold in folds]
    status: dict[str, dict] = {}
    earlier = read_study_record(out).get("status", {})
    jobs: list[Job] = []
    for index, (name, seed, fold) in enumerate(combinations):
        run_dir = run_path(out, name, seed)
        key = f"{name}/seed{seed}/fold{fold}"
        label = f"[{index + 1}/{len(combinations)}] {name} seed {seed} fold {fold}"
        stages = ["train", "evaluate"] + (["examples"] if examples_dir else [])
        recorded = read_settings(run_dir, fold)
        was, now = settings_difference(recorded or {}, {**settings, "seed": seed}) if recorded else ("", "")
        if all(stage_done(run_dir, fold, s) for s in stages):
            differs = f" with {was} (this command: {now})" if was or now else ""
            print(f"{label}: finished earlier{differs}, skipped", flush=True)
            before = earlier.get(key, {})
            if before.get("status", "").startswith("ok") and "seconds" in before:  # keep how long it took
                status[key] = {"status": "ok (an earlier command)", "seconds": before["seconds"]}
            else:
                status[key] = {"status": "skipped (finished earlier)"}
            continue
        models = run_dir / "models" / f"fold{fold}"
        started_training = stage_done(run_dir, fold, "train") or bool(resume_checkpoints(models))
        if recorded and started_training:
            was, now = settings_difference(recorded, {**settings, "seed": seed}, RESULT_NEUTRAL)
            if was or now:
                raise StudyError(
                    f"{key} was trained with {was or '(none)'}, this command asks for {now or '(none)'}: run it with "
                    f"the same settings, or delete {models} to train it again, or choose another --output_dir"
                )
        command = [sys.executable, str(Path(__file__).resolve()), "run_bundle"]
        command += ["--bundle_dir", str(bundles_root / name), "--run_dir", str(run_dir)]
        command += ["--data_dir", str(data_path), "--fold", str(fold)]
        command += ["--overrides", json.dumps({**settings, "seed": seed})]
        if examples_dir:
            command += ["--examples_dir", str(examples_dir)]
        if tracking_run:
            loss = name.removeprefix(f"{bundle_prefix(dataset)}_")
            tags = {"loss": loss, "dataset": dataset, "fold": fold, "seed": seed, "bundle": name}
            run_tracking = {**tracking_run, "run_name": key, "tags": tags, "params": {**settings, **tags}}
            command += ["--tracking", json.dumps(run_tracking)]
        jobs.append(Job(key, label, command, run_dir / f"fold{fold}.log"))

    parallel = max_parallel if gpus is None else len(gpus)
    if launcher != "local":
        at_once = parallel if parallel > 1 else SlurmOptions.array_parallelism
        options = SlurmOptions(
            slurm_partition, slurm_time_min, slurm_gpus_per_job, slurm_cpus_per_job, slurm_mem_gb, at_once
        )
        cluster = "slurm" if launcher == "slurm" else "local"
        submitted = submit_array(jobs, out / "slurm", cluster, options, wait, started) if jobs else {}
        if submitted is None:
            report_command = f"python {Path(__file__).name} report --output_dir={out}"
            print(f"not waiting: build the report when the jobs have ended: {report_command}", flush=True)
            return 0
        status.update(submitted)
    elif parallel > 1 and len(jobs) > 1:
        status.update(run_parallel(jobs, started, parallel, gpus))
    else:
        status.update(run_sequential(jobs, started))

    if ensemble:
        for name in names:
            for seed in seeds:
                run_dir = run_path(out, name, seed)
                if stage_done(run_dir, "ensemble", "evaluate"):
                    continue
                command = [sys.executable, str(Path(__file__).resolve()), "run_bundle", "--bundle_dir"]
                command += [str(bundles_root / name), "--run_dir", str(run_dir), "--data_dir", str(data_path)]
                command += ["--fold", "0", "--overrides", json.dumps({**settings, "seed": seed})]
                command += ["--ensemble_folds", json.dumps(folds)]
                job = Job(
                    f"{name}/seed{seed}/ensemble", f"{name} seed {seed} ensemble", command, run_dir / "ensemble.log"
                )
                code, error_line = run_child(job, started, 0)
                status[job.key] = {"status": outcome(code, error_line)}

    failed = [key for key, value in status.items() if value["status"].startswith("failed")]
    try:
        from custom_losses.atomic import write_text_atomic
        from scripts.study_report import write_report
    except ModuleNotFoundError as error:  # e.g. a bare GPU machine: the runs are done, report elsewhere
        print(
            f"report skipped: {error.name} is not installed; the runs are complete, build the report with "
            f"python scripts/run_study.py report --output_dir={out}",
            flush=True,
        )
    else:
        record = {"dataset": dataset, "bundles": names, "settings": settings, "status": status}
        write_text_atomic(out / STUDY_RECORD, json.dumps(record, indent=4) + "\n")
        write_report(out, names, folds, status, settings=settings, dataset=dataset, seeds=seeds, reference=reference)
        print(f"report: {out / 'results.md'} ({format_seconds(time.time() - started)} in all)", flush=True)
        if tracking_run:
            study_tracking.record_report(tracking_run["uri"], tracking_run["experiment"], out)
            uri = tracking_run["uri"]
            print(f"MLflow: experiment {out.name!r} in {uri}; browse it with: mlflow ui --backend-store-uri {uri}")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their logs)", file=sys.stderr)
        reasons = {status[key]["status"].split(": ", 1)[1] for key in failed if ": " in status[key]["status"]}
        if len(reasons) == 1:  # the same input error everywhere: its one line last
            print(reasons.pop(), file=sys.stderr)
    return 1 if failed else 0


def report(output_dir: str, reference: str = "ce") -> None:
    """Rebuild ``results.csv``, ``results.md`` and the plots of an existing study folder from its saved
    summaries and per-image CSVs (no training), comparing every loss with ``reference``; the dataset,
    settings and run statuses come from ``study.json``, written by the last study command."""
    from scripts.study_report import write_report

    out = Path(output_dir).resolve()
    names, seeds, folds = discover_runs(out)
    order = {f"{name}_{loss}": i for name, spec in DATASET_SPECS.items() for i, loss in enumerate(spec.losses)}
    names.sort(key=lambda n: (order.get(n, len(order)), n))  # the datasets' loss order, CE first
    if not names:
        raise StudyError(f"{out / 'runs'} holds no evaluated run (runs/<bundle>/seed<s>/eval/fold<k>/summary.json)")
    record = read_study_record(out)
    names += [name for name in record.get("bundles", []) if name not in names]  # e.g. a failed one
    write_report(
        out,
        names,
        folds,
        status=record.get("status", {}),
        settings=record.get("settings", {}),
        dataset=record.get("dataset", out.name),
        seeds=seeds,
        reference=reference,
    )
    print(f"report: {out / 'results.md'}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"run_bundle": run_bundle, "report": report}
    try:
        if argv and argv[0] in commands:
            fire.Fire(commands[argv[0]], command=argv[1:], name=argv[0])
            return 0
        if any(arg in ("--help", "-h") for arg in argv):  # with **overrides, fire would take it as one
            argv = ["--", "--help"]
        exit_codes: list[int] = []

        def study_command(*args, **kwargs) -> None:
            exit_codes.append(study(*args, **kwargs))

        study_command.__doc__ = study.__doc__
        study_command.__signature__ = inspect.signature(study)
        fire.Fire(study_command, command=argv, name="run_study.py")
        return exit_codes[0] if exit_codes else 0
    except (StudyError, SpecError, ReportInputError, LaunchError, study_tracking.TrackingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
