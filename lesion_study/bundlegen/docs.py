"""docs/README.md of a bundle and the bundles/README.md index."""

from __future__ import annotations

from pathlib import Path

from .specs import DATASETS, LOSSES, RESULTS_DIR, DatasetSpec, measured_results, reference_text

DOCS_2D = {
    "model": "FlexibleUNet with a {spec.backbone} encoder trained from scratch (no pretrained weights), input "
    "{spec.image_size}x{spec.image_size} RGB scaled to [0, 1], one output channel (lesion logit); random flips, "
    "rotation, scale and colour jitter.",
    "pipeline": "Data pipeline, built to keep a GPU busy: the decoded, resized images are cached once on the "
    "training device (`CacheDataset`, filled by `num_workers` threads; about 2 MB per 352x352 image, 4 MB at "
    "512x512; lower `cache_rate` to cache less); a `ThreadDataLoader` assembles batches there; "
    "`custom_losses.augment.BatchAugmentation`, the trainer's `prepare_batch` (`train#augmentation`), augments "
    "each batch on the device with parameters drawn per image from the distributions of MONAI's `RandFlipd`, "
    "`RandAffined`, `RandScaleIntensityd`, `RandShiftIntensityd` and `RandAdjustContrastd` (MONAI's per-image "
    "transforms cost about 12 ms per 352x352 image on one CPU core). The network runs channels_last and cuDNN "
    "autotunes its convolutions (`cudnn_benchmark`, default true). Training and validation post-process whole "
    "batches (`decollate` false): `engine.state.output` is one dict of batch tensors, so a handler added to "
    "`train#handlers` reads `output['loss']`.",
    "evaluate_outputs": "eval/fold1/per_image.csv and eval/fold1/summary.json (the test set)",
    "ensemble": "# ensemble of the five fold models -> eval/ensemble/\n"
    "python -m monai.bundle run \\\n"
    "    --config_file \"['configs/train.json','configs/evaluate.json','configs/evaluate_ensemble.json']\" \\\n"
    "    --dataset_dir DATA/{spec.name}\n\n",
    "inference": "segment every .jpg/.png of a folder -> predictions/<name>_seg.png at the input size",
    "size_id": "image_size",
    "unit": "pixels (a disk)",
    "checks": "an unreadable or corrupt image, a grayscale image, a mask of another size than its image, a mask "
    "whose values would all fall under the > 127 threshold",
    "evaluation": "`evaluate.json` writes, at threshold 0.5 and the prepared resolution, one CSV row per test image "
    "and a summary: Dice and IoU on lesion images; Dice over all images with Galdran's convention (both masks "
    "empty = 1, exactly one empty = 0); the share of images predicted empty (ideal: the share of lesion-free "
    "images); on lesion-free images the share with any predicted lesion (image-level false-positive rate) and "
    "the mean false-positive area; on lesion images the signed relative area error from the thresholded mask "
    "and from the sum of probabilities; the expected calibration error of the lesion probability (20 bins).",
}

DOCS_3D = {
    "model": "3D UNet (MONAI `UNet`, channels 16-256, 4 down-samplings, residual units) trained from scratch, "
    "input padded/cropped to {spec.spatial_size_3d}, intensities z-scored per volume, one output per class "
    "(softmax); random rotation, scaling and intensity jitter (no flips: they would swap anterior and "
    "posterior).",
    "pipeline": "Data pipeline: the deterministic transforms are cached (`CacheDataset`), MONAI's per-volume random "
    "transforms run in `num_workers` data-loader processes (the volumes are small).",
    "evaluate_outputs": "eval/fold1/per_volume.csv, eval/fold1/summary.json and eval/fold1/predictions/*.nii.gz "
    "(the held-out fold)",
    "ensemble": "",
    "inference": "segment every .nii/.nii.gz of a folder -> predictions/<name>_seg.nii.gz with the input's affine",
    "size_id": "spatial_size",
    "unit": "voxels (a ball)",
    "checks": "an unreadable or corrupt volume, a label of another shape than its image, a label with classes the "
    "bundle does not know",
    "evaluation": "`evaluate.json` runs the held-out fold, maps probabilities and labels back to each volume's own "
    "grid, saves the argmax labels as NIfTI with the input's affine, and writes one CSV row per volume and a "
    "summary, per class (anterior, posterior) and for the whole hippocampus: Dice of the argmax; volume in ml "
    "(voxel size from the header) of the label, of the argmax mask (hard) and of the sum of probabilities "
    "(soft); signed, absolute and relative volume errors; Bland-Altman bias and 95% limits of agreement (hard "
    "and soft); the expected volume of each class under the training label law (`label_uncertainty_width`; the "
    "label's volume at 0) and the hard and soft errors against it; the expected calibration error of the "
    "whole-hippocampus probability (20 bins). The controlled "
    "study behind the volume-bias question (known expected volumes, CE vs per-image and batch soft Dice) is "
    "`scripts/volume_bias_study.py` in the repository, with its result in `docs/volume_bias.png`.",
}


# published DBCE radius sweeps, by dataset (docs/results/)
DBCE_SWEEPS = {
    "polyp": "Swept at the `galdran_cpu` setting (96x128 px, fold 1, seed 0): "
    "docs/results/polyp_galdran_dbce_radius_cpu.md in the repository, which chose R = 5 for that setting.",
}


def docs_readme(spec: DatasetSpec, loss_name: str, results_table: str) -> str:
    loss = LOSSES[loss_name]
    bundle = f"{spec.name}_{loss_name}"
    texts = DOCS_3D if spec.kind == "mri3d" else DOCS_2D
    overrides = []
    if loss_name == "dbce":
        if spec.kind == "mri3d":
            size = f"the network input (`spatial_size`, default {list(spec.spatial_size_3d)})"
            scaled = ""
        else:
            size = f"the network input (`image_size`, default {spec.image_size})"
            scaled = (
                f" The radius is not rescaled with `image_size`: {spec.dbce_radius} px at {spec.image_size} px covers "
                f"what {spec.dbce_radius * 128 / spec.image_size:.1f} px covers at 128 px, so set it with the size "
                "(the study's `galdran_cpu` setting does; the `cpu` setting kept the default at 128 px)."
            )
        overrides.append(
            f"- `dbce_radius` (default {spec.dbce_radius}): dilation radius in {texts['unit']} of {size}, not of "
            f"the prepared images.{scaled} Pick it by a sweep on fold 1 validation, one study folder per radius: "
            f"`python scripts/run_study.py {spec.name} --bundles=[dbce] --data_dir=DATA/{spec.name} --dbce_radius=R "
            f"--output_dir=study/{spec.name}_dbce_rR` (add the study's `--setting`) for R in 1, 2, 3, 5, then "
            f"`python scripts/run_study.py sweep study/{spec.name}_dbce_r1 study/{spec.name}_dbce_r2 "
            f"study/{spec.name}_dbce_r3 study/{spec.name}_dbce_r5 --parameter=dbce_radius` (the highest mean last "
            f"validation Dice). {DBCE_SWEEPS.get(spec.name, 'Not swept on this dataset yet.')}"
        )
    if spec.kind == "mri3d":
        overrides.append(
            "- `label_uncertainty_width` (default 0, voxels): train on labels with known uncertainty. Each use of "
            "a training volume draws a new annotation (`custom_losses.label_uncertainty.RandLabelUncertaintyd`, "
            "after the cache, before the spatial augmentation): the outer boundary and the anterior/posterior cut "
            "move by independent shifts uniform on [-w, w] voxels, so each voxel's class probabilities are exact "
            "(a linear ramp across a band of 2w voxels). Evaluation writes each volume's expected class volumes "
            "under the same law (`<class>_expected_ml`, errors `<class>_error_hard_expected_ml` and "
            "`<class>_error_soft_expected_ml`; at 0 they are the label's volumes): pass the same width to "
            "`evaluate.json`. A study: `python scripts/run_study.py "
            f"{spec.name} --data_dir=DATA/{spec.name} --label_uncertainty_width=W --output_dir=study/{spec.name}_wW`."
        )
        overrides.append(
            "- `label_uncertainty_targets` (default `sampled`): `expected` trains on the law's per-voxel class "
            "probabilities themselves (soft labels, `ExpectedLabeld` in place of the drawn annotation) and turns "
            "the Dice terms into the Dice semimetric loss (`SoftDiceLoss(soft_label=True)`, Wang, Blaschko et "
            "al., MICCAI 2023: equal to soft Dice on hard labels, 0 at a prediction equal to a soft label); CE "
            "takes the probabilities as its target. Training Dice is measured against their argmax."
        )
    if loss.schedule:
        overrides.append(
            f"- `alpha_schedule` (default `{loss.schedule}`): `combo`, `linear` or `finetune`, applied by "
            "MONAI's `ParamSchedulerHandler` at the start of every epoch (stateless: right after a resume). "
            "With `finetune`, `model.pt` is the best validation checkpoint of the Dice epochs only "
            "(`custom_losses.schedules.selection_start_epoch`): a fine-tuned model, not an earlier CE epoch."
        )
    loss_overrides = "\n".join(overrides)
    options = training_options(spec)
    model = texts["model"].format(spec=spec)
    ensemble = texts["ensemble"].format(spec=spec)
    return f"""# {bundle}: {spec.title}, {loss.title}

Generated by `scripts/make_bundles.py`; edit the generator, not this file.

## Loss

**{loss.title}** (`{loss.config["_target_"]}`): {loss.description}

References: {"; ".join(reference_text(key) for key in loss.references)}.

## Data

- Training: {spec.train_data}.
- Test: {spec.test_data}.
- Prepare once (writes the prepared copies and `datalist.json`; checks every file first):

```bash
{spec.prepare_command}
```

Licence of the data: see `docs/data_license.txt`.

## Model and training

{model} AdamW, learning rate {spec.learning_rate} with cosine decay, batch {spec.batch_size},
{spec.epochs} epochs. The network runs in bf16 where the device computes it natively (a GPU, or a CPU with
AVX512-BF16 or AMX; losses and metrics stay float32) and in fp32 elsewhere: `--precision auto` (default),
`bf16` or `fp32`. The best validation checkpoint is `models/fold<k>/model.pt`, the last one
`models/fold<k>/model_final.pt`.

{texts["pipeline"]}

## Commands (from this folder, with `custom_losses` installed)

```bash
# train fold 1 (any of 1..5); every id of the config can be overridden the same way
python -m monai.bundle run --config_file configs/train.json --dataset_dir DATA/{spec.name} \\
    --fold 1 --epochs {spec.epochs}

# evaluate -> {texts["evaluate_outputs"]}
python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" \\
    --dataset_dir DATA/{spec.name} --fold 1

{ensemble}# {texts["inference"]}
python -m monai.bundle run --config_file configs/inference.json --input_dir IMAGES --fold 1

# two GPUs (DistributedDataParallel; gloo on CPU)
torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run \\
    --config_file "['configs/train.json','configs/multi_gpu_train.json']" --dataset_dir DATA/{spec.name}

# MLflow tracking (pip install mlflow) of any of these commands: add --tracking mlflow; the store is
# OUTPUT_DIR/mlruns.db (mlflow ui --backend-store-uri sqlite:///ABSOLUTE/OUTPUT_DIR/mlruns.db); TensorBoard: logs/

# fine-tune from a trained model on your own data (matching tensors are loaded, e.g. not a new output layer)
python -m monai.bundle run --config_file "['configs/train.json','configs/finetune.json']" \\
    --dataset_dir MY_DATA --finetune_checkpoint models/fold1/model.pt --output_dir finetuned

# TorchScript export
python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/fold1/model.pt \\
    --meta_file configs/metadata.json --config_file configs/inference.json
```

Common overrides: `fold`, `epochs`, `dataset_dir`, `device` (e.g. `--device cpu`), `output_dir` (where
`models/`, `eval/` and `logs/` go), `batch_size`, `num_workers`, `{texts["size_id"]}`, `learning_rate`,
`cache_rate`, `cudnn_benchmark`.

{loss_overrides}

### Recipe options

Every one is checked first (a bad value stops the run with one line naming it); the defaults are this
bundle's recipe, the other values Galdran et al.'s (`python scripts/run_study.py {spec.name} --setting=galdran_cpu`
sets them together; `docs/galdran_recipe.md` in the repository).

{options}

## Reliability

- **Input checks before training**: a missing or empty `dataset_dir`, a missing datalist, an entry whose
  file does not exist, an image without a label, {texts["checks"]}, and a fold that
  does not exist each stop the run with one line naming the file and the problem.
- **Settings checked first**: every config starts by checking the settings it uses (`epochs`, batch sizes,
  `learning_rate`, a `{texts["size_id"]}` the network cannot take, a `device` this machine lacks, an
  unwritable `output_dir`, `fold`, ...): a bad one stops the run with one line such as
  `error: epochs must be a positive integer, got -1`. Datalist paths that leave `dataset_dir` (`../x.png`,
  absolute paths elsewhere) are refused unless `--allow_external_paths True`.
- **Non-finite loss**: a NaN or infinite training loss stops the run, naming epoch and iteration; the best
  model (`model.pt`) and the last resume checkpoint stay as they were and no `model_final.pt` is written.
- **Interruption**: the end of an epoch saves `models/fold<k>/resume_checkpoint_epoch=<e>.pt` (model,
  optimizer, LR scheduler, trainer state; only the last is kept) once `resume_checkpoint_interval_s`
  (default 60) seconds have passed since the last one, and after the last epoch; 0 saves every epoch (a
  155 MiB file for the 2D network, about 0.2 s to save: a fifth of a fast GPU epoch). Rerun the same
  command with `--resume True` to go on from it to the same `epochs`; loss-weight schedules depend only on
  the epoch, so they resume with it.
  The best-model tracking restarts after a resume: the first validation after it rewrites `model.pt`.
- **Determinism**: `seed` (default 0) seeds Python, NumPy, PyTorch (the 2D batch augmentation draws from it)
  and MONAI's random transforms; two CPU runs with the same seed give identical losses (tested with
  `num_workers=0`). On GPU, cuDNN autotuning and atomic additions in some backward kernels are not
  bit-reproducible; `--cudnn_benchmark False` removes the first. GPU repeatability was not measured for this
  version.
- **Outputs** (`summary.json`, `per_image.csv`, datalists) are written to a temporary file and renamed, so a
  killed run never leaves a file that looks complete.

## Evaluation

{texts["evaluation"]}

## Results

{results_table}
"""


def training_options(spec: DatasetSpec) -> str:
    """The recipe ids of a bundle (optimizer, schedule, input size and normalisation, augmentation, evaluated
    model), as a list for its docs."""
    lines = [
        "- `optimizer_name` (default `adamw`): `adamw` (`torch.optim.AdamW`) or `nadam` (`torch.optim.NAdam`);"
        " `weight_decay` (default 1e-4) goes to either, 0 turns it off.",
        "- `lr_schedule` (default `cosine_epoch`): cosine annealing from `learning_rate` to `lr_min` (default 0),"
        " one half cycle over the training, stepped after every epoch (`cosine_epoch`) or after every iteration"
        " (`cosine_iteration`: `epochs` x iterations per epoch steps, the last iteration ends at `lr_min`;"
        " `--resume True` continues the same curve, the schedule's step count is in the resume checkpoint).",
        "- `evaluation_model` (default `best`): the checkpoint `evaluate.json`, `evaluate_ensemble.json` and"
        " `inference.json` read, `best` (`models/fold<k>/model.pt`, the best validation epoch) or `final`"
        " (`models/fold<k>/model_final.pt`, the last epoch); the summary's `checkpoint` names the file.",
    ]
    if spec.kind == "mri3d":
        return "\n".join(lines)
    lines[2:2] = [
        f"- `image_size` (default {spec.image_size}): a square side or `[height, width]` (e.g. `[96, 128]`, a 3:4"
        " frame), each a multiple of 32; images are resized to it for training, evaluation and the ensemble,"
        " inference resizes its predictions back to each input's size, and an exported bundle records it as"
        " the input shape. Pass the same value to every config of a model.",
        "- `augmentation` (default `monai`): the batch augmentation's parameter set"
        " (`custom_losses.augment.PRESETS`): `monai`, flips, rotation within +-0.5 rad (29 degrees) and per-axis"
        " scale 0.8 to 1.2 together with probability 0.5, intensity scale, shift and gamma; `galdran`, flips and"
        " one of rotation within +-15 degrees, magnification 0.95 to 1.2 or a horizontal shift up to 5% of the"
        " width, then torchvision's colour jitter (0.1, 0.1, 0.1, 0.01). One parameter:"
        " `--train#augmentation#rotate_range 0.3`.",
        "- `input_normalization` (default `none`): `imagenet` makes the network subtract ImageNet's mean and divide"
        " by its standard deviation (torchvision's) before its first layer, so training, evaluation, the"
        " ensemble, inference and the TorchScript export all normalise alike; inputs stay in [0, 1]. Pass the"
        " same value to every config of a model.",
        "- `pretrained_encoder` (default `none`): torchvision's ImageNet weights for the resnet18 or resnet34"
        " encoder when training starts: `imagenet` (torchvision's download, cached in `$TORCH_HOME/hub`; needs"
        " the network) or the path of a torchvision state dict (`torch.save(torchvision.models.resnet18("
        "weights='IMAGENET1K_V1').state_dict(), 'resnet18.pth')`). Needs `input_normalization imagenet`. Any"
        " value but `none` builds the encoder in torchvision's layout (1x1-convolution shortcuts), so evaluation"
        " and inference of such a model need the same value (they do not read the weights file).",
    ]
    return "\n".join(lines)


def results_table(spec: DatasetSpec, loss_name: str, results: dict | None) -> str:
    if not results:
        return (
            "Pending: no run of this bundle on the real data has been recorded yet "
            f"(`bundles/results/{spec.name}.json` holds measured results once they exist, written by "
            "`scripts/publish_results.py`)."
        )
    rows = "\n".join(f"| {key} | {value} |" for key, value in results.items() if key != "measured_with")
    table = f"Measured with: {results.get('measured_with', 'unknown')}\n\n| metric | value |\n|---|---|\n{rows}"
    if "dice_all" not in results:
        return table
    return (
        f"{table}\n\nMeans over single models (one per run). `dice_all` is the Dice over all test images, a "
        "lesion-free image scoring 1 if predicted empty and 0 otherwise: the measure of Galdran et al.'s test "
        "figures, which are of five-fold ensembles at full scale; `dice_lesion`, over the lesion images only, is "
        "not comparable with them. The page named above compares in his measures in its section "
        '"Galdran et al.\'s comparison, as he measured it", beside his figures where they are of the same data '
        "(the polyps)."
    )


def index_readme(specs: list[DatasetSpec] | None = None, results_dir: Path = RESULTS_DIR) -> str:
    """``bundles/README.md``: every bundle with its loss, dataset, headline numbers and commands."""
    lines = [
        "# Bundles",
        "",
        "Generated by `scripts/make_bundles.py` (edit the generator, then run it). Each folder is a standard MONAI",
        "bundle; run the commands from inside it, with `custom_losses` installed (`pip install -e .` at the repo",
        "root) or from an exported zip (`scripts/export_bundle.py`), which carries its own copy.",
        "",
        "| bundle | dataset | loss | test Dice (2D: lesion images; 3D: whole structure) | 2D: lesion-free FP rate; "
        "3D: volume error from probabilities | measured with |",
        "|---|---|---|---|---|---|",
    ]
    for spec in DATASETS.values() if specs is None else specs:
        results = measured_results(spec, results_dir)
        for loss_name in spec.losses:
            loss = LOSSES[loss_name]
            measured = results.get(loss_name) or {}
            if spec.kind == "mri3d":
                dice = measured.get("whole_dice", "pending")
                fp_rate = f"{measured['whole_error_soft_ml']} ml" if "whole_error_soft_ml" in measured else "pending"
            else:
                dice = measured.get("dice_lesion", "pending")
                fp_rate = measured.get("lesion_free_fp_rate", "pending")
            source = measured.get("measured_with", "no real-data run yet")
            lines.append(
                f"| [{spec.name}_{loss_name}]({spec.name}_{loss_name}/docs/README.md) | {spec.title} | "
                f"{loss.title} | {dice} | {fp_rate} | {source} |"
            )
    lines += [
        "",
        "## One-line commands (from a bundle folder)",
        "",
        "```bash",
        "python -m monai.bundle run --config_file configs/train.json --dataset_dir DATA --fold 1",
        "python -m monai.bundle run --config_file \"['configs/train.json','configs/evaluate.json']\" "
        "--dataset_dir DATA",
        "python -m monai.bundle run --config_file configs/inference.json --input_dir IMAGES",
        "python -m monai.bundle run --config_file \"['configs/train.json','configs/finetune.json']\" "
        "--dataset_dir MY_DATA --finetune_checkpoint models/fold1/model.pt",
        "```",
        "",
        "All losses of a dataset at once, with a report: `python scripts/run_study.py <dataset> --data_dir DATA`.",
        "`meta_schema_20240725.json` is the Model Zoo metadata schema, kept here because `verify_metadata`",
        "cannot download it offline.",
    ]
    return "\n".join(lines) + "\n"
