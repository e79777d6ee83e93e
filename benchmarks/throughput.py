"""Training and evaluation speed of the bundles against the ceiling, in one run.

    python benchmarks/throughput.py --device=cuda --data_dir=DATA   # DATA/polyp, DATA/footulcer prepared
    python benchmarks/throughput.py --device=cpu --image_size=64 --epochs=2        # CPU smoke run, synthetic data
    python benchmarks/throughput.py --device=cpu --data_dir=DATA --data_only=True  # data side only, real sizes

Ceiling: the bundle's network, batch, precision and input size trained on tensors already on the device
(no data loading, no handlers). Bundle: the bundle's own train.json (MONAI datasets, dataloaders,
transforms, SupervisedTrainer, handlers) on the prepared data. Reported: images/s after the first epoch,
the first-epoch overhead, evaluation images/s, peak GPU memory, and the ratios (bundle / ceiling,
DBCE / CE). Without ``--data_dir`` a synthetic dataset is made and prepared like the real one.

Also, to show where a pipeline can fall behind the device: the images/s the bundle's data pipeline alone
delivers (cache, ThreadDataLoader, BatchAugmentation; no network), the augmentation's cost per image on
one CPU core as MONAI's per-image transforms and as BatchAugmentation on a batch, and the Python cost per
batch of post-processing item by item (decollated) against the whole batch at once.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import fire
import torch
from ignite.engine import Events

REPO = Path(__file__).resolve().parents[1]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bundle_parser(bundle: Path, device: torch.device, precision: str, image_size: int | None):
    """The bundle's train.json on ``device`` in ``precision`` (at ``image_size``, 2D)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser["device"] = str(device)
    parser["precision"] = precision
    if image_size is not None and "image_size" in parser.config:
        parser["image_size"] = image_size
    return parser


def random_batch(parser, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of the bundle's shapes: RGB and a binary mask (2D), one channel and class labels (3D)."""
    spatial = list(parser.get_parsed_content("spatial_size"))
    channels = parser.get_parsed_content("network_def#in_channels")
    classes = parser.get_parsed_content("num_classes")
    images = torch.rand(batch_size, channels, *spatial, device=device)
    if classes == 2:
        labels = (torch.rand(batch_size, 1, *spatial, device=device) > 0.9).float()
    else:
        labels = torch.randint(0, classes, (batch_size, 1, *spatial), device=device).float()
    return images, labels


def ceiling(
    bundle: Path, device: torch.device, image_size: int | None, batch_size: int, steps: int, precision: str = "auto"
) -> dict:
    """Images/s of the bundle's network (on the device, layout and forward precision as the bundle prepares
    it), loss and AdamW on device-resident random batches: what the device can do, with no data pipeline."""
    from custom_losses.precision import memory_format, resolve_precision

    parser = bundle_parser(bundle, device, precision, image_size)
    network = parser.get_parsed_content("network")
    loss_fn = parser.get_parsed_content("loss")  # references such as @dbce_radius resolve here
    images, labels = random_batch(parser, batch_size, device)
    resolved = resolve_precision(precision, device)
    images = images.to(memory_format=memory_format(images.dim() - 2, resolved))
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(network(images), labels).backward()
        optimizer.step()

    for _ in range(2):
        step()
    synchronize(device)
    seconds = []
    for _ in range(steps):  # the median step: robust to a neighbour's burst on a shared machine
        start = time.perf_counter()
        step()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    median = sorted(seconds)[len(seconds) // 2]
    return {"precision": resolved, "images_per_s": round(batch_size / median, 2), "step_ms": round(1e3 * median, 2)}


def training_workflow(bundle: Path, settings: dict, work_dir: Path):
    """The bundle's train.json with ``settings`` (config ids), initialised, writing into ``work_dir``;
    validation off, since training is what is timed."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"),
        output_dir=str(work_dir / bundle.name),
        val_interval=10_000,
        **settings,
    )
    workflow.initialize()
    return workflow


def data_pipeline(workflow, device: torch.device, epochs: int = 2) -> dict:
    """Images/s of the bundle's training data pipeline alone (cached batches through ``prepare_batch``), and
    the fixed cost every training run pays first: checking the split's files, filling the cache."""
    start = time.perf_counter()
    items = len(workflow.parser.get_parsed_content("train#datalist"))  # every file opened and checked
    split_checks_s = time.perf_counter() - start
    start = time.perf_counter()
    workflow.parser.get_parsed_content("train#dataset")  # the cache is filled here
    synchronize(device)
    cache_fill_s = time.perf_counter() - start
    loader = workflow.parser.get_parsed_content("train#dataloader")
    prepare = workflow.parser.get_parsed_content("train#augmentation")
    seconds = []
    for _ in range(epochs):
        synchronize(device)
        start, images = time.perf_counter(), 0
        for batch in loader:
            images += prepare(batch, device)[0].shape[0]
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return {
        "train_items": items,
        "split_checks_s": round(split_checks_s, 2),
        "cache_fill_s": round(cache_fill_s, 2),
        "images_per_s": round(images / min(seconds[1:] or seconds), 2),
    }


def bundle_pipeline(workflow, bundle: Path, settings: dict, device: torch.device, work_dir: Path) -> dict:
    """Epoch times of the bundle's own training workflow (from ``training_workflow``; a cache it already
    holds is reused), then evaluation images/s on the test split."""
    from monai.bundle import ConfigWorkflow

    trainer = workflow.parser.get_parsed_content("train#trainer")
    epoch_seconds: list[float] = []
    marks: dict[str, float] = {}

    def mark(key: str) -> Callable:
        def handler(engine) -> None:
            synchronize(device)
            marks[key] = time.perf_counter()

        return handler

    def epoch_done(engine) -> None:
        synchronize(device)
        epoch_seconds.append(time.perf_counter() - marks["epoch"])

    trainer.add_event_handler(Events.EPOCH_STARTED, mark("epoch"))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, epoch_done)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    workflow.run()
    workflow.finalize()
    images = len(workflow.parser.get_parsed_content("train#dataset"))
    steady = sorted(epoch_seconds[1:])[len(epoch_seconds[1:]) // 2] if len(epoch_seconds) > 1 else epoch_seconds[0]
    result = {
        "train_images": images,
        "epoch_seconds": [round(s, 3) for s in epoch_seconds],
        "images_per_s": round(images / steady, 2),
        "first_epoch_overhead_s": round(epoch_seconds[0] - steady, 3),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        if device.type == "cuda"
        else None,
    }

    evaluation = ConfigWorkflow(
        config_file=[str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")],
        output_dir=str(work_dir / bundle.name),
        checkpoint=str(work_dir / bundle.name / "models" / "fold1" / "model_final.pt"),  # no validation ran
        **settings,
    )
    evaluation.initialize()
    evaluator = evaluation.parser.get_parsed_content("validate#evaluator")
    evaluator.add_event_handler(Events.EPOCH_STARTED, mark("eval"))
    evaluation.run()
    synchronize(device)
    eval_seconds = time.perf_counter() - marks["eval"]
    evaluation.finalize()
    tested = len(evaluation.parser.get_parsed_content("validate#dataset"))
    result["eval_images_per_s"] = round(tested / eval_seconds, 2)
    return result


def checkpoint_cost(bundle: Path, repeats: int = 3) -> dict:
    """Size and save time of the bundle's resume checkpoint (network and AdamW state after one step)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    network = parser.get_parsed_content("network_def")
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-4)
    images, _ = random_batch(parser, 2, torch.device("cpu"))
    network(images).mean().backward()
    optimizer.step()
    state = {"model": network.state_dict(), "optimizer": optimizer.state_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.save(state, path)
            seconds.append(time.perf_counter() - start)
        return {"mib": round(path.stat().st_size / 2**20, 1), "save_s": round(min(seconds), 3)}


def augmentation_cost(image_size: int, batch_size: int, repeats: int = 40) -> dict:
    """ms per image on one CPU core of the bundles' augmentation: MONAI's per-image transforms (what the 2D
    bundles used before) against ``BatchAugmentation`` on a whole batch (what they use, on the device)."""
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    from custom_losses.augment import BatchAugmentation

    keys = ["image", "label"]
    chain = Compose(
        [
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandAffined(keys, prob=0.5, rotate_range=[0.5], scale_range=[0.2, 0.2], mode=["bilinear", "nearest"]),
            RandScaleIntensityd("image", factors=0.15, prob=0.5, channel_wise=True),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5),
            RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.5),
        ]
    ).set_random_state(0)
    item = {"image": torch.rand(3, image_size, image_size), "label": torch.zeros(1, image_size, image_size)}
    batch = {key: torch.stack([value] * batch_size) for key, value in item.items()}
    augmentation = BatchAugmentation()

    def ms_per_image(run: Callable[[], object], images: int) -> float:
        for _ in range(3):
            run()
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        return round(1e3 * (time.perf_counter() - start) / (repeats * images), 2)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monai_ms = ms_per_image(lambda: chain(item), 1)
        batch_ms = ms_per_image(lambda: augmentation(batch), batch_size)
    finally:
        torch.set_num_threads(threads)
    return {"monai_per_image_ms": monai_ms, "batch_augmentation_ms": batch_ms, "ratio": round(monai_ms / batch_ms, 2)}


def postprocessing_host_ms(batch_size: int, repeats: int = 200) -> dict:
    """Python cost of the training post-processing per batch: item by item (decollated) or batched.

    Tiny tensors, so the figure is the per-batch host overhead that a GPU step cannot hide, not arithmetic.
    """
    from monai.data import decollate_batch
    from monai.engines.utils import engine_apply_transform
    from monai.transforms import Activationsd, AsDiscreted, Compose

    post = Compose([Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=0.5)])

    def batch() -> tuple[dict, dict]:
        image, label, pred = (
            torch.rand(batch_size, 3, 8, 8),
            torch.rand(batch_size, 1, 8, 8),
            torch.rand(batch_size, 1, 8, 8),
        )
        return {"image": image, "label": label}, {"image": image, "label": label, "pred": pred, "loss": pred.mean()}

    def decollated() -> None:
        inputs, outputs = batch()
        for item, output in zip(
            decollate_batch(inputs, detach=True), decollate_batch(outputs, detach=True), strict=True
        ):
            engine_apply_transform(item, output, post)

    def batched() -> None:
        engine_apply_transform(*batch(), post)

    result = {}
    for name, run in (("decollated", decollated), ("batched", batched)):
        for _ in range(10):
            run()
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        result[f"{name}_ms"] = round(1e3 * (time.perf_counter() - start) / repeats, 2)
    return result


def _prepared(data_dir: Path, bundle_name: str) -> Path:
    """``data_dir/<dataset>`` when it holds a datalist (one root for all bundles), else ``data_dir`` itself."""
    own = data_dir / bundle_name.split("_")[0]
    chosen = own if (own / "datalist.json").is_file() else data_dir
    if not (chosen / "datalist.json").is_file():
        raise FileNotFoundError(
            f"no prepared dataset for {bundle_name}: neither {own} nor {data_dir} has datalist.json"
        )
    return chosen


def _native_image_size(bundle: Path) -> int | None:
    """The 2D bundles' ``image_size``; None for 3D bundles (they run at their spec's ``spatial_size``)."""
    return json.loads((bundle / "configs" / "train.json").read_text()).get("image_size")


def _is_3d(bundle: Path) -> bool:
    return _native_image_size(bundle) is None


def synthetic_data(root: Path, image_size: int | None, num_train: int) -> Path:
    """A synthetic dataset prepared like the real one: polyp frames (2D) or hippocampus volumes (3D)."""
    from lesion_study.demo_data import write_demo_layouts
    from lesion_study.prepare.datasets import prepare_hippocampus, prepare_polyp
    from lesion_study.synthetic import write_hippocampus_layout

    if (root / "prepared" / "datalist.json").is_file():  # shared by the bundles of one image size
        return root / "prepared"
    if image_size is None:
        raw = write_hippocampus_layout(root / "raw", n_volumes=max(num_train // 4, 10), shape=(35, 51, 35))
        prepare_hippocampus(raw, root / "prepared")
        return root / "prepared"
    kvasir, endotect = write_demo_layouts(root / "raw", num_train=num_train, num_test_lesion=num_train // 4)
    prepare_polyp(kvasir, endotect, root / "prepared", size=image_size)
    return root / "prepared"


def main(
    device: str = "cuda" if torch.cuda.is_available() else "cpu",
    data_dir: str | None = None,
    bundles: tuple[str, ...] = ("polyp_ce", "polyp_dbce", "footulcer_ce", "footulcer_dbce"),
    image_size: int | None = None,
    batch_size: int = 16,
    epochs: int = 3,
    num_workers: int = 4,
    ceiling_steps: int = 30,
    synthetic_images: int = 200,
    output: str = "throughput.json",
    data_only: bool = False,
    precisions: tuple[str, ...] = ("auto",),
    ceiling_precisions: tuple[str, ...] = ("fp32", "bf16"),
) -> None:
    """Measure ceiling and bundle pipeline speed for each bundle; print ratios and write ``output``.

    Args:
        device: ``cuda`` or ``cpu``.
        data_dir: a prepared dataset (``datalist.json``), or a folder with one per dataset (``polyp/``,
            ``footulcer/``, ``hippocampus/``); default: a synthetic one at each bundle's ``image_size``.
        bundles: bundle folder names under ``bundles/`` (2D or 3D).
        image_size: 2D input size (default: each bundle's own, 352 polyp / 512 foot ulcer); 3D bundles run
            at their own spatial size.
        batch_size: training batch size.
        epochs: epochs of each bundle run (the first is reported as overhead, the median of the rest as speed).
        num_workers: data loader workers.
        ceiling_steps: timed steps of each ceiling (their median is reported).
        synthetic_images: training images of the synthetic dataset when no ``data_dir`` is given.
        output: JSON file for every figure.
        data_only: measure only the data side (split checks, cache fill, data pipeline alone, augmentation
            and post-processing costs), e.g. on a CPU at the bundles' real image size.
        precisions: the bundle's ``precision`` for each bundle run, e.g. ``[fp32,bf16]`` to time both
            (the first is the one reported as ``bundle``; ``auto``: what the bundle picks on this device).
        ceiling_precisions: precisions of the ceiling; the fastest one is the device's real ceiling.
    """
    from custom_losses.precision import cpu_computes_bf16, resolve_precision

    dev = torch.device(device)
    torch.backends.cudnn.benchmark = True
    precisions, ceiling_precisions = list(precisions), list(ceiling_precisions)
    report: dict = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.machine()})",
        "cpu_computes_bf16": cpu_computes_bf16(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "epochs": epochs,
        "num_workers": num_workers,
        "bundles": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in bundles:
            bundle = REPO / "bundles" / name
            size = None if _is_3d(bundle) else image_size or _native_image_size(bundle)
            data = (
                _prepared(Path(data_dir), name)
                if data_dir
                else synthetic_data(work / f"data{size or '3d'}", size, synthetic_images)
            )
            settings = {
                "bundle_root": str(bundle),
                "dataset_dir": str(data),
                "device": str(dev),
                "batch_size": batch_size,
                "epochs": epochs,
                "num_workers": num_workers,
                "precision": precisions[0],
                **({} if size is None else {"image_size": size}),
            }
            workflow = training_workflow(bundle, settings, work / "runs")
            result: dict = {"image_size": size}
            if size is not None:  # 3D bundles augment per volume in data-loader workers
                print(f"{name}: data pipeline alone...", flush=True)
                result["data_pipeline"] = data_pipeline(workflow, dev)
            result["resume_checkpoint"] = checkpoint_cost(bundle)
            if data_only:
                report["bundles"][name] = result
                continue
            ceilings = {}
            for precision in ceiling_precisions:
                print(f"{name}: ceiling in {precision}...", flush=True)
                ceilings[precision] = ceiling(bundle, dev, size, batch_size, ceiling_steps, precision)
            result["ceilings"] = ceilings
            fastest = max(ceilings.values(), key=lambda c: c["images_per_s"])
            result["real_ceiling"] = {"precision": fastest["precision"], "images_per_s": fastest["images_per_s"]}
            if "fp32" in ceilings and "bf16" in ceilings:
                result["ceiling_bf16_over_fp32"] = round(
                    ceilings["bf16"]["images_per_s"] / ceilings["fp32"]["images_per_s"], 3
                )
            by_precision = {}
            for index, precision in enumerate(precisions):
                print(f"{name}: bundle pipeline in {precision} ({epochs} epochs)...", flush=True)
                if index:
                    workflow = training_workflow(bundle, {**settings, "precision": precision}, work / f"runs{index}")
                run_settings = {**settings, "precision": precision}
                pipeline = bundle_pipeline(workflow, bundle, run_settings, dev, work / f"runs{index or ''}")
                pipeline["precision"] = resolve_precision(precision, dev)
                same = ceilings.get(pipeline["precision"])
                if same:
                    pipeline["over_ceiling_same_precision"] = round(pipeline["images_per_s"] / same["images_per_s"], 3)
                if "fp32" in ceilings:
                    pipeline["over_fp32_ceiling"] = round(
                        pipeline["images_per_s"] / ceilings["fp32"]["images_per_s"], 3
                    )
                pipeline["over_real_ceiling"] = round(pipeline["images_per_s"] / fastest["images_per_s"], 3)
                by_precision[precision] = pipeline
            result["bundle"] = by_precision[precisions[0]]
            result["bundle_by_precision"] = by_precision
            result["ceiling"] = ceilings.get(result["bundle"]["precision"], fastest)
            result["bundle_over_ceiling"] = round(
                result["bundle"]["images_per_s"] / result["ceiling"]["images_per_s"], 3
            )
            if "fp32" in by_precision and "bf16" in by_precision:
                result["bundle_bf16_over_fp32"] = round(
                    by_precision["bf16"]["images_per_s"] / by_precision["fp32"]["images_per_s"], 3
                )
            report["bundles"][name] = result
            print(json.dumps({name: result}, indent=4), flush=True)
    for dataset in ("polyp", "footulcer", "hippocampus"):
        ce, dbce = report["bundles"].get(f"{dataset}_ce"), report["bundles"].get(f"{dataset}_dbce")
        if ce and dbce and not data_only:
            report[f"{dataset}_dbce_over_ce_images_per_s"] = round(
                dbce["bundle"]["images_per_s"] / ce["bundle"]["images_per_s"], 3
            )
    native_sizes = sorted({s for s in (_native_image_size(REPO / "bundles" / name) for name in bundles) if s})
    report["augmentation_ms_per_image_one_cpu_core"] = {
        str(size): augmentation_cost(size, batch_size) for size in native_sizes
    }
    report["postprocessing_host_ms_per_batch"] = postprocessing_host_ms(batch_size)
    Path(output).write_text(json.dumps(report, indent=4) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "bundles"}, indent=4))
    for name, result in report["bundles"].items():
        data = result.get("data_pipeline")
        if data:
            print(
                f"{name}: {data['train_items']} training items, split checks {data['split_checks_s']} s, cache fill "
                f"{data['cache_fill_s']} s, data pipeline alone {data['images_per_s']} img/s, resume checkpoint "
                f"{result['resume_checkpoint']['mib']} MiB saved in {result['resume_checkpoint']['save_s']} s"
            )
        if data_only:
            continue
        ceilings = ", ".join(f"{p} {c['images_per_s']}" for p, c in result["ceilings"].items())
        print(f"{name}: ceiling (images/s) {ceilings}; real ceiling {result['real_ceiling']['precision']}")
        for precision, pipeline in result["bundle_by_precision"].items():
            print(
                f"{name}: bundle precision={precision} ({pipeline['precision']}) {pipeline['images_per_s']} img/s = "
                f"{pipeline.get('over_ceiling_same_precision', float('nan')):.2f} x its precision's ceiling, "
                f"{pipeline.get('over_fp32_ceiling', float('nan')):.2f} x the fp32 ceiling, "
                f"{pipeline['over_real_ceiling']:.2f} x the real ceiling; eval {pipeline['eval_images_per_s']} img/s, "
                f"first-epoch overhead {pipeline['first_epoch_overhead_s']} s"
            )
        if "bundle_bf16_over_fp32" in result:
            print(f"{name}: bundle bf16 / fp32 = {result['bundle_bf16_over_fp32']:.2f}")


if __name__ == "__main__":
    fire.Fire(main)
