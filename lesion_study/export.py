"""Export a bundle of the collection as a MONAI Model Zoo zip that needs only PyPI packages.

    python scripts/export_bundle.py --bundle=polyp_ce                    # weights of bundles/polyp_ce/models/fold1
    python scripts/export_bundle.py --bundle=polyp_ce --fold=2 --run_dir=study/polyp/runs/polyp_ce/seed0
    python scripts/export_bundle.py --bundle=polyp_ce --noweights        # configs and code only

The zip holds ``<bundle>/`` with ``configs/``, ``docs/``, ``LICENSE``, the ``custom_losses`` code the configs use
(vendored in ``scripts/custom_losses/``) and, with weights, ``models/model.pt``, ``models/model.ts`` and
``large_files.yml``. Users get it with ``python -m monai.bundle download --name <bundle> --url <zip url>``.

The configs reach the vendored code as ``@custom_losses``, an item that imports ``scripts/custom_losses`` from the
folder next to ``configs/`` under a name unique to that folder. ``$import scripts`` would not do: MONAI evaluates
import statements in ``initialize()``, before ``run()`` puts the bundle root on ``sys.path``, so it fails with
``--bundle_root`` from another folder and in ``monai.bundle.load``, and it can import another ``scripts`` package.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import inspect
import json
import re
import shutil
import sys
import tempfile
import zipfile
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch
from monai.bundle import ConfigParser, ckpt_export

import custom_losses
from custom_losses.atomic import replace_atomically
from custom_losses.handlers import EVALUATED_MODEL_FILES, checkpoint_mismatch
from lesion_study.command import run_fire
from lesion_study.paths import BUNDLES_DIR
from lesion_study.study.layout import ReportInputError, read_settings, settings_file
from lesion_study.study.plan import top_level_id

PACKAGE = "custom_losses"
PACKAGE_DIR = Path(custom_losses.__file__).resolve().parent
VENDOR_DIR = "scripts"  # bundle folder that holds the vendored package, as in the Model Zoo
LARGE_FILES = ("models/model.pt", "models/model.ts")
# present only for a study: it needs the five fold models, while an export ships one model
STUDY_ONLY_CONFIGS = ("evaluate_ensemble.json",)
# modules whose versions metadata.json records in fields of their own
MODULES_WITH_METADATA_FIELD = {"torch", "monai", "numpy"}
# components named in configs whose imports MONAI makes only when they are used
CONFIG_COMPONENT_MODULES = {
    "PILReader": "PIL",
    "PILWriter": "PIL",
    "NibabelReader": "nibabel",
    "NibabelWriter": "nibabel",
    "ITKReader": "itk",
    "ITKWriter": "itk",
    "TensorBoardStatsHandler": "tensorboard",
    "TensorBoardImageHandler": "tensorboard",
    "MLFlowHandler": "mlflow",
}

# Config items that import the vendored package. `bundle_code_dir`: the folder holding configs/ of the
# ConfigWorkflow being built (run, --bundle_root, monai.bundle.load, create_workflow all make one), else
# `bundle_root` (ckpt_export and verify_net_in_out parse configs without a workflow).
LOADER_IMPORTS = ["$import os", "$import runpy", "$import sys", "$import traceback", "$import monai"]
LOADER_ITEMS = {
    "bundle_code_dir": "$next((d for d in [str(w.config_root_path.absolute().parent) for w in "
    "(f.f_locals.get('self') for f, _ in traceback.walk_stack(sys._getframe())) "
    "if isinstance(w, monai.bundle.ConfigWorkflow)] + [os.path.abspath(@bundle_root)] "
    f"if os.path.isfile(os.path.join(d, '{VENDOR_DIR}', '{PACKAGE}', '__init__.py'))), os.path.abspath(@bundle_root))",
    PACKAGE: f"$runpy.run_path(os.path.join(@bundle_code_dir, '{VENDOR_DIR}', '__init__.py'))"
    f"['load_vendored']('{PACKAGE}')",
}
# with weights: train writes, and evaluate/infer read, <output_dir>/models/model.pt (the Model Zoo layout)
MODEL_ZOO_CHECKPOINT_IDS = {
    "ckpt_dir": "$os.path.join(@output_dir, 'models')",
    "checkpoint": "$os.path.join(@ckpt_dir, 'model.pt')",
}
BARE_REFERENCE = re.compile(rf"(?<![\w.@'\"]){PACKAGE}\b")
# ids of a training run that say where and on which machine it ran, not what the model is: a run's other
# overrides (image size, network, precision, ...) are carried into the exported configs
MACHINE_IDS = {
    "bundle_root",
    "output_dir",
    "dataset_dir",
    "datalist_file",
    "ckpt_dir",
    "checkpoint",
    "log_dir",
    "finetune_checkpoint",
    "logging_file",
    "meta_file",
    "device",
    "num_workers",
    "cache_rate",
    "resume",
}

VENDOR_INIT = f'''"""Python code shipped with this bundle: ``{PACKAGE}``, usable without installing it.

The configs import it with ``load_vendored("{PACKAGE}")``, running this file with ``runpy`` from the folder
next to ``configs/``: that works from any working directory, with ``--bundle_root`` and in ``monai.bundle.load``,
and leaves ``sys.path`` alone. The package gets a module name unique to this folder, so an installed
``{PACKAGE}`` or another bundle's copy never meets it in ``sys.modules``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from types import ModuleType


def load_vendored(package: str) -> ModuleType:
    """Import the package folder ``package`` next to this file, once per process, and return it."""
    directory = os.path.join(os.path.dirname(os.path.abspath(__file__)), package)
    name = f"{{package}}__vendored_{{hashlib.sha256(directory.encode()).hexdigest()[:10]}}"
    if name in sys.modules:
        return sys.modules[name]
    init = os.path.join(directory, "__init__.py")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[directory])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
'''


class ExportError(ValueError):
    """A bundle that cannot be exported; the message names the file and the problem."""


def vendored_modules(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The package's modules that ``__init__.py`` needs: its relative-import closure (no tests, no caches)."""
    needed, pending = set(), [package_dir / "__init__.py"]
    while pending:
        path = pending.pop()
        if path in needed:
            continue
        needed.add(path)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            parts = node.module.split(".") if node.module else []
            # `from .a import b`: module a, and b too when it is a submodule; `from . import b`: module b
            for candidate in ([parts] if parts else []) + [[*parts, alias.name] for alias in node.names]:
                for found in (base.joinpath(*candidate).with_suffix(".py"), base.joinpath(*candidate, "__init__.py")):
                    if found.is_file() and package_dir in found.parents:
                        pending.append(found)
    return sorted(needed)


def package_version(package_dir: Path = PACKAGE_DIR) -> str:
    found = re.search(r'^__version__ = "([^"]+)"', (package_dir / "__init__.py").read_text(), re.MULTILINE)
    if not found:
        raise ExportError(f"{package_dir / '__init__.py'} defines no __version__")
    return found.group(1)


def rewrite_references(value: object, where: str) -> object:
    """``value`` with every reference to the installed package turned into the ``@custom_losses`` item."""
    if isinstance(value, dict):
        rewritten = {}
        for key, item in value.items():
            if key == "_target_" and isinstance(item, str) and item.startswith(f"{PACKAGE}."):
                rewritten[key] = f"$@{item}"
            else:
                rewritten[key] = rewrite_references(item, f"{where}#{key}")
        return rewritten
    if isinstance(value, list):
        return [rewrite_references(item, f"{where}#{index}") for index, item in enumerate(value)]
    if isinstance(value, str) and value.startswith("$"):
        value = value[:1] + BARE_REFERENCE.sub(f"@{PACKAGE}", value[1:])
    if isinstance(value, str) and BARE_REFERENCE.search(value.replace(f"@{PACKAGE}", "")):
        raise ExportError(f"{where}: cannot rewrite the reference to {PACKAGE} in {value!r}")
    return value


def exported_config(config: dict, where: str, with_weights: bool) -> dict:
    """A bundle config reading the vendored package, and with weights pointing at ``models/model.pt``."""
    imports = config.get("imports")
    if imports is not None:
        config = {**config, "imports": [line for line in imports if not BARE_REFERENCE.search(line)]}
    config = rewrite_references(config, where)
    if with_weights:
        config.update({key: value for key, value in MODEL_ZOO_CHECKPOINT_IDS.items() if key in config})
    if imports is None:
        return config
    imports = config["imports"] + [line for line in LOADER_IMPORTS if line not in config["imports"]]
    loader = {key: config.get(key, value) for key, value in LOADER_ITEMS.items()}
    return {"imports": imports, **loader, **{k: v for k, v in config.items() if k not in ("imports", *loader)}}


def canonical_distribution(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_modules(configs: dict[str, dict], meta: dict, code: list[Path]) -> set[str]:
    """Top-level modules the bundle imports: the vendored code's module-level imports, config import statements,
    readers/writers/handlers named in the configs, and nibabel for NIfTI data."""
    modules = set()
    for path in code:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    text = json.dumps(configs)
    modules.update(re.findall(r'"\$(?:import|from) (\w+)', text))
    modules.update(module for name, module in CONFIG_COMPONENT_MODULES.items() if re.search(rf"\b{name}\b", text))
    if re.search(r"nii|nifti", str(meta.get("data_type", "")), re.IGNORECASE):
        modules.add("nibabel")
    return {m for m in modules if m not in sys.stdlib_module_names and m not in MODULES_WITH_METADATA_FIELD}


def required_packages(configs: dict[str, dict], meta: dict, code: list[Path]) -> dict[str, str]:
    """``required_packages_version``: the recorded pins without ``custom_losses``, plus every PyPI distribution
    the bundle imports (at the version installed here)."""
    packages = {k: v for k, v in meta.get("required_packages_version", {}).items() if k != PACKAGE}
    known = {canonical_distribution(name) for name in packages}
    providers = importlib_metadata.packages_distributions()
    for module in sorted(third_party_modules(configs, meta, code)):
        if module not in providers:
            raise ExportError(f"the bundle imports {module}, which no installed distribution provides")
        distribution = canonical_distribution(providers[module][0])
        if distribution not in known:
            packages[distribution] = importlib_metadata.version(distribution)
            known.add(distribution)
    return packages


def carried_overrides(overrides: dict) -> dict:
    """The overrides of a training run that describe the model (all but :data:`MACHINE_IDS`)."""
    return {key: value for key, value in overrides.items() if top_level_id(key) not in MACHINE_IDS}


def with_overrides(configs: dict[str, dict], overrides: dict, where: str) -> dict[str, dict]:
    """``configs`` with each override set (MONAI's id syntax) in the configs that stand alone (with
    ``imports``: train.json, inference.json) and define its top-level id; the others are merged over
    train.json and get it from there. Every override must land somewhere."""
    configs = copy.deepcopy(configs)
    for key, value in overrides.items():
        landed = []
        for name, config in configs.items():
            if "imports" not in config or top_level_id(key) not in config:
                continue
            parser = ConfigParser(config)
            try:
                parser[key] = copy.deepcopy(value)
            except (KeyError, IndexError, ValueError) as error:
                raise ExportError(f"{where}: cannot set {key} in {name}: {error}") from error
            configs[name] = parser.get()
            landed.append(name)
        if not landed:
            raise ExportError(f"{where}: {key} is an id of none of the bundle's configs ({', '.join(configs)})")
    return configs


def spatial_shape(inference: dict) -> list[int]:
    """The network input's spatial shape of an inference config (its ``spatial_size``, overrides applied)."""
    parser = ConfigParser({key: inference[key] for key in ("image_size", "spatial_size") if key in inference})
    return [int(size) for size in parser.get_parsed_content("spatial_size")]


def exported_metadata(
    meta: dict, configs: dict[str, dict], code: list[Path], fold: int | None, overrides: dict | None = None
) -> dict:
    meta = copy.deepcopy(meta)
    meta["required_packages_version"] = required_packages(configs, meta, code)
    shape = spatial_shape(configs["inference.json"])
    for tensors in meta["network_data_format"].values():
        for tensor in tensors.values():
            if "spatial_shape" in tensor:
                tensor["spatial_shape"] = list(shape)
    note = f"exported by scripts/export_bundle.py: {PACKAGE} {package_version()} vendored in {VENDOR_DIR}/{PACKAGE}"
    if fold is not None:
        note += f", weights of fold {fold}"
    if overrides:
        note += f" trained with {json.dumps(overrides)}"
    changelog = meta.setdefault("changelog", {})
    changelog[meta["version"]] = f"{changelog[meta['version']]}; {note}" if meta["version"] in changelog else note
    return meta


def export_notes(bundle: str, version: str, fold: int | None, overrides: dict | None = None) -> str:
    """The section appended to the exported docs/README.md."""
    if fold is None:
        weights = "- No weights: train first; checkpoints go to `<output_dir>/models/fold<k>/` as above.\n"
    else:
        which = "last epoch's" if (overrides or {}).get("evaluation_model") == "final" else "best validation"
        weights = f"""- `models/model.pt`: state dict of the {which} model of fold {fold}; `models/model.ts`:
  the same network in TorchScript; `large_files.yml`: their sha256.
- Evaluation and inference read `<output_dir>/models/model.pt` (default: the shipped model). Training writes
  its checkpoints to `<output_dir>/models/`: pass `--output_dir` to keep the shipped model, e.g. to fine-tune it
  with `--config_file "['configs/train.json','configs/finetune.json']" --dataset_dir MY_DATA --output_dir finetuned`.
- `evaluate_ensemble.json` is left out: it needs the five fold models of a study.
"""
        if overrides:
            settings = ", ".join(f"`{key}` {json.dumps(value)}" for key, value in overrides.items())
            weights += f"- The model was trained with {settings}: the configs and metadata say so.\n"
    return f"""
## Exported bundle

Made by `scripts/export_bundle.py` of the lesion-loss collection. It needs only the PyPI packages of
`configs/metadata.json`: nothing to install from the collection, whatever the commands above say.

- `{VENDOR_DIR}/{PACKAGE}/` is a copy of `{PACKAGE}` {package_version()}. The configs reach it as `@{PACKAGE}`,
  imported from the `{VENDOR_DIR}/` folder next to `configs/` (item `bundle_code_dir`), so the bundle runs from
  any folder, with `--bundle_root`, and through `monai.bundle.load`, without `PYTHONPATH`.
{weights}
```bash
python -m monai.bundle download --name {bundle} --version {version} --bundle_dir DIR \\
    --url URL_OF/{bundle}_v{version}.zip
python -c "from monai.bundle import load; print(load(name='{bundle}', bundle_dir='DIR', model_file='models/model.pt'))"
```
"""


def model_state(checkpoint: Path) -> dict:
    """The network's state dict from a ``CheckpointSaver`` file (plain or ``{"model": ...}``)."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ExportError(f"checkpoint {checkpoint} is unreadable: {error}") from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"checkpoint {checkpoint} holds no state dict")
    return state


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def large_files_yml(bundle_dir: Path) -> str:
    """Model Zoo ``large_files.yml``: path, url (none: the files are in the zip), sha256 of each file."""
    lines = ["large_files:"]
    for relative in LARGE_FILES:
        lines += [f'  - path: "{relative}"', '    url: ""', f'    hash_val: "{sha256(bundle_dir / relative)}"']
        lines.append('    hash_type: "sha256"')
    return "\n".join(lines) + "\n"


def write_weights(bundle_dir: Path, checkpoint: Path) -> None:
    """``models/model.pt``, ``models/model.ts`` (from the exported configs and vendored code) and their hashes."""
    configs = bundle_dir / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser["bundle_root"] = str(bundle_dir)
    state = model_state(checkpoint)
    mismatch = checkpoint_mismatch(state, parser.get_parsed_content("network_def"))
    if mismatch:
        raise ExportError(
            f"checkpoint {checkpoint} does not fit the network_def of the exported inference.json ({mismatch}): "
            "the overrides it was trained with are not those recorded (or passed with --overrides)"
        )
    (bundle_dir / "models").mkdir()
    torch.save(state, bundle_dir / LARGE_FILES[0])
    ckpt_export(
        net_id="network_def",
        filepath=str(bundle_dir / LARGE_FILES[1]),
        ckpt_file=str(bundle_dir / LARGE_FILES[0]),
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        bundle_root=str(bundle_dir),
    )
    (bundle_dir / "large_files.yml").write_text(large_files_yml(bundle_dir))


def stage_bundle(
    source: Path, bundle_dir: Path, checkpoint: Path | None, fold: int | None, overrides: dict | None = None
) -> None:
    """Write the exported bundle into the empty folder ``bundle_dir``; ``checkpoint`` of ``fold``, or no weights;
    ``overrides``: the ids the checkpoint was trained with, set in the exported configs."""
    with_weights = checkpoint is not None
    code = vendored_modules()
    shutil.copy2(source / "LICENSE", bundle_dir / "LICENSE")
    shutil.copytree(source / "docs", bundle_dir / "docs")
    (bundle_dir / VENDOR_DIR / PACKAGE).mkdir(parents=True)
    (bundle_dir / VENDOR_DIR / "__init__.py").write_text(VENDOR_INIT)
    for path in code:
        target = bundle_dir / VENDOR_DIR / PACKAGE / path.relative_to(PACKAGE_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)

    configs, others = {}, []
    for path in sorted((source / "configs").iterdir()):
        if with_weights and path.name in STUDY_ONLY_CONFIGS:
            continue
        if path.suffix == ".json" and path.name != "metadata.json":
            configs[path.name] = exported_config(json.loads(path.read_text()), str(path), with_weights)
        elif path.name != "metadata.json":
            others.append(path)
    configs = with_overrides(configs, overrides or {}, f"overrides of {checkpoint}")
    meta = json.loads((source / "configs" / "metadata.json").read_text())
    configs["metadata.json"] = exported_metadata(meta, configs, code, fold, overrides)
    (bundle_dir / "configs").mkdir()
    for name, config in configs.items():
        (bundle_dir / "configs" / name).write_text(json.dumps(config, indent=4) + "\n")
    for path in others:
        shutil.copy2(path, bundle_dir / "configs" / path.name)
    readme = bundle_dir / "docs" / "README.md"
    readme.write_text(readme.read_text() + export_notes(source.name, meta["version"], fold, overrides))
    if with_weights:
        write_weights(bundle_dir, checkpoint)


def write_zip(bundle_dir: Path, zip_path: Path) -> None:
    """Zip ``bundle_dir`` with its name as the top folder; the zip appears only when complete."""
    with replace_atomically(zip_path, "wb") as handle, zipfile.ZipFile(handle, "w") as archive:
        for path in sorted(bundle_dir.rglob("*")):
            if path.is_file():  # weights barely deflate (8%, seconds per 100 MB): stored as they are
                compression = zipfile.ZIP_STORED if path.suffix in (".pt", ".ts") else zipfile.ZIP_DEFLATED
                archive.write(path, path.relative_to(bundle_dir.parent).as_posix(), compression)


def recorded_overrides(run: Path, fold: int) -> dict:
    """The overrides a run recorded when its training started (``scripts/run_study.py``)."""
    try:
        overrides = read_settings(run, fold)
    except ReportInputError as error:
        raise ExportError(str(error)) from None
    if overrides is None:
        raise ExportError(
            f"{settings_file(run, fold)} does not exist: how this model was trained is unknown (the study runner "
            "records it); pass --overrides='{\"image_size\": 128, ...}' with the ids it was trained with, or "
            "--overrides={} for the bundle's defaults"
        )
    return overrides


def export_bundle(
    bundle: str,
    fold: int = 1,
    output_dir: str = "dist",
    bundles_dir: str | None = None,
    run_dir: str | None = None,
    weights: bool = True,
    overwrite: bool = False,
    overrides: dict | str | None = None,
) -> Path:
    """Write OUTPUT_DIR/<bundle>_v<version>.zip, the bundle in the Model Zoo layout, and return its path.

    Args:
        bundle: name of the bundle, a folder of ``bundles_dir`` (e.g. polyp_ce).
        fold: the fold whose evaluated checkpoint is shipped as models/model.pt: RUN_DIR/models/fold<fold>/model.pt
            (the best validation epoch), or model_final.pt when the run was evaluated with its last epoch
            (``evaluation_model`` final, as in the galdran_cpu setting).
        output_dir: folder of the zip (created if needed).
        bundles_dir: folder of the bundles (default: this repo's bundles/).
        run_dir: folder with the trained models/ (default: the bundle folder; the study runner writes
            study/<dataset>/runs/<bundle>/seed<s>/).
        weights: ship the trained weights; --noweights exports configs and code only.
        overwrite: replace an existing zip.
        overrides: the bundle overrides the model was trained with (default: RUN_DIR/fold<fold>_settings.json,
            which the study runner writes); those that describe the model (image size, network, ...: all but
            where and on which machine it ran) are set in the exported configs and metadata.
    """
    source = (Path(bundles_dir) if bundles_dir else BUNDLES_DIR) / bundle
    meta_file = source / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise ExportError(f"unknown bundle {bundle!r}: {meta_file} does not exist")
    version = json.loads(meta_file.read_text())["version"]
    zip_path = Path(output_dir) / f"{bundle}_v{version}.zip"
    if zip_path.exists() and not overwrite:
        raise ExportError(f"{zip_path} exists (pass --overwrite to replace it)")
    checkpoint = None
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except ValueError as error:
            raise ExportError(f"--overrides {overrides!r} is not a JSON object: {error}") from error
    if overrides is not None and not isinstance(overrides, dict):
        raise ExportError(f'--overrides must be a JSON object such as {{"image_size": 128}}, got {overrides!r}')
    if weights:
        run = Path(run_dir) if run_dir else source
        best = run / "models" / f"fold{fold}" / EVALUATED_MODEL_FILES["best"]
        if not best.is_file():  # an untrained fold: said before its missing settings record
            raise ExportError(f"checkpoint {best} does not exist (train fold {fold}, set --run_dir, or --noweights)")
        if overrides is None:
            overrides = recorded_overrides(run, fold)
        # the model the run was evaluated with (custom_losses.handlers.EVALUATED_MODEL_FILES)
        chosen = overrides.get("evaluation_model", "best")
        if chosen not in EVALUATED_MODEL_FILES:
            raise ExportError(f"evaluation_model must be one of {', '.join(EVALUATED_MODEL_FILES)}, got {chosen!r}")
        checkpoint = run / "models" / f"fold{fold}" / EVALUATED_MODEL_FILES[chosen]
        if not checkpoint.is_file():
            raise ExportError(
                f"checkpoint {checkpoint} does not exist (train fold {fold}, set --run_dir, or --noweights)"
            )
    overrides = carried_overrides(overrides or {})
    with tempfile.TemporaryDirectory() as staging:
        bundle_dir = Path(staging) / bundle
        bundle_dir.mkdir()
        stage_bundle(source, bundle_dir, checkpoint, fold if weights else None, overrides)
        write_zip(bundle_dir, zip_path)
    return zip_path


def main(argv: list[str] | None = None) -> int:
    """Command line: print the zip's path, or one line ``error: ...`` and return 1 on bad input."""

    def export_command(*args, **kwargs) -> None:
        print(export_bundle(*args, **kwargs))

    export_command.__doc__ = export_bundle.__doc__
    export_command.__signature__ = inspect.signature(export_bundle)
    return run_fire(export_command, argv, "export_bundle.py", (ExportError,))


if __name__ == "__main__":
    sys.exit(main())
