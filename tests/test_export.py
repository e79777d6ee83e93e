"""Export a trained bundle, download it the Model Zoo way, and run it where custom_losses cannot be imported:
train (fine-tune), evaluate, infer, monai.bundle.load and the TorchScript model; plus the export's bad inputs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out
from monai.utils import set_determinism

from lesion_study.bundlegen.cli import BUNDLES_DIR, SCHEMA_FILE
from lesion_study.export import PACKAGE_DIR, export_bundle, main, vendored_modules
from lesion_study.study.cli import DEMO_SETTINGS, run_bundle
from lesion_study.synthetic import write_prepared_polyp
from tests.test_bundles import run_workflow

REPO = Path(__file__).resolve().parents[1]
BUNDLE = "polyp_ce"
VERSION = json.loads((BUNDLES_DIR / BUNDLE / "configs" / "metadata.json").read_text())["version"]
IMAGE_SIZE = 64
CPU = {"image_size": IMAGE_SIZE, "device": "cpu"}
FAST = {"epochs": 1, "batch_size": 4, "val_batch_size": 4, "num_workers": 0, **CPU}
ISOLATED = "isolated: custom_losses is not importable and the repo is not on sys.path"
# Loaded by every child interpreter (PYTHONPATH): custom_losses stays installed in the venv but cannot be imported.
SITECUSTOMIZE = f"""
import os, sys

class BlockCustomLosses:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] == "custom_losses":
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by tests/test_export.py)", name=name)
        return None

sys.meta_path.insert(0, BlockCustomLosses)
try:
    import custom_losses
except ModuleNotFoundError:
    if {str(REPO)!r} not in [os.path.abspath(p or os.getcwd()) for p in sys.path]:
        print({ISOLATED!r}, file=sys.stderr)
"""
LOAD_AND_COMPARE = f"""
import sys, torch
from monai.bundle import load
bundle_dir, result_file = sys.argv[1:]
network = load(name={BUNDLE!r}, bundle_dir=bundle_dir, model_file="models/model.pt", device="cpu").eval()
scripted, meta, _ = load(name={BUNDLE!r}, bundle_dir=bundle_dir, load_ts_module=True, device="cpu")
image = torch.rand(2, 3, 64, 96)
with torch.no_grad():
    outputs = {{"network": network(image), "scripted": scripted(image)}}
code = sys.modules[type(network).__module__].__file__
torch.save({{"state": network.state_dict(), "code": code, "version": meta["version"], **outputs}}, result_file)
"""


def cli(overrides: dict) -> list[str]:
    return [text for key, value in overrides.items() for text in (f"--{key}", str(value))]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return write_prepared_polyp(
        tmp_path_factory.mktemp("polyp_data"), n_train=10, n_lesion=3, n_lesion_free=2, image_size=IMAGE_SIZE
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, dataset_dir) -> Path:
    """Fold 1 trained for one epoch into a study-style run folder (outputs outside the bundle)."""
    run = tmp_path_factory.mktemp("study") / "runs" / BUNDLE
    run_workflow(BUNDLES_DIR / BUNDLE, ["train.json"], output_dir=str(run), dataset_dir=str(dataset_dir), **FAST)
    return run


@pytest.fixture(scope="module")
def exported(tmp_path_factory, run_dir) -> Path:
    dist = str(tmp_path_factory.mktemp("dist"))
    return export_bundle(BUNDLE, fold=1, output_dir=dist, run_dir=str(run_dir), overrides=FAST)  # no record


@pytest.fixture(scope="module")
def isolated_env(tmp_path_factory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("isolation")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {**os.environ, "PYTHONPATH": str(site)}


def run_isolated(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """``python ARGS`` in a fresh interpreter without custom_losses; its output, after checking it succeeded."""
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert ISOLATED in output, "the child interpreter could import custom_losses or saw the repo"
    return output


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory, exported, isolated_env) -> Path:
    bundle_dir = tmp_path_factory.mktemp("downloads")
    command = ["-m", "monai.bundle", "download", "--name", BUNDLE, "--version", VERSION, "--url", exported.as_uri()]
    run_isolated([*command, "--bundle_dir", str(bundle_dir), "--progress", "False"], bundle_dir, isolated_env)
    return bundle_dir


def zip_member(zip_path: Path, name: str) -> bytes:
    with zipfile.ZipFile(zip_path) as archive:
        return archive.read(f"{BUNDLE}/{name}")


def state_dict(data: bytes) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def test_zip_holds_the_model_zoo_layout(exported):
    assert exported.name == f"{BUNDLE}_v{VERSION}.zip"
    with zipfile.ZipFile(exported) as archive:
        names = set(archive.namelist())
    vendored = {f"{BUNDLE}/scripts/custom_losses/{p.relative_to(PACKAGE_DIR).as_posix()}" for p in vendored_modules()}
    modules = ("__init__", "networks", "handlers/__init__", "handlers/checkpoints", "handlers/evaluation", "data")
    assert {f"{BUNDLE}/scripts/custom_losses/{m}.py" for m in modules} <= vendored
    configs = {f"{BUNDLE}/configs/{p.name}" for p in (BUNDLES_DIR / BUNDLE / "configs").iterdir()}
    configs.remove(f"{BUNDLE}/configs/evaluate_ensemble.json")  # the five fold models of a study are not shipped
    expected = {f"{BUNDLE}/{name}" for name in ("LICENSE", "docs/README.md", "docs/data_license.txt")}
    expected |= {f"{BUNDLE}/{name}" for name in ("scripts/__init__.py", "large_files.yml")}
    expected |= {f"{BUNDLE}/models/model.pt", f"{BUNDLE}/models/model.ts"}
    assert names == expected | configs | vendored
    assert not any("__pycache__" in name or "/tests/" in name or name.endswith(".pyc") for name in names)

    for config in configs - {f"{BUNDLE}/configs/logging.conf"}:
        text = zip_member(exported, config.split("/", 1)[1]).decode()
        bare = re.findall(r"(?<![@'\w])custom_losses\.\w+", text)
        assert not bare, f"{config} still uses the installed package: {bare}"
    meta = json.loads(zip_member(exported, "configs/metadata.json"))
    # scipy: the vendored evaluation writers import the hippocampus label law (scipy.ndimage)
    assert set(meta["required_packages_version"]) == {"pytorch-ignite", "pillow", "tensorboard", "scipy"}
    assert meta["version"] == VERSION and "vendored" in meta["changelog"][VERSION]


def test_exported_metadata_is_valid(exported, tmp_path):
    (tmp_path / "metadata.json").write_bytes(zip_member(exported, "configs/metadata.json"))
    verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(BUNDLES_DIR / SCHEMA_FILE))


def test_large_files_hashes_match(downloaded):
    bundle = downloaded / BUNDLE
    entries = re.findall(
        r'- path: "([^"]+)"\s+url: ""\s+hash_val: "([0-9a-f]{64})"\s+hash_type: "sha256"',
        (bundle / "large_files.yml").read_text(),
    )
    assert [path for path, _ in entries] == ["models/model.pt", "models/model.ts"]
    for path, digest in entries:
        assert hashlib.sha256((bundle / path).read_bytes()).hexdigest() == digest, path


def test_exported_configs_read_models_model_pt(downloaded):
    bundle = downloaded / BUNDLE
    for configs in (["train.json", "evaluate.json"], ["inference.json"]):
        parser = ConfigParser()
        parser.read_config([str(bundle / "configs" / name) for name in configs])
        parser["bundle_root"] = str(bundle)
        assert Path(parser.get_parsed_content("checkpoint")) == bundle / "models" / "model.pt", configs


@pytest.mark.slow
def test_downloaded_bundle_runs_without_custom_losses(
    downloaded, exported, run_dir, dataset_dir, isolated_env, tmp_path
):
    bundle = downloaded / BUNDLE
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    images = dataset_dir.parent / "endotect" / "images"

    # from the bundle folder: inference with the shipped weights
    run = ["-m", "monai.bundle", "run", "--config_file"]
    output = run_isolated([*run, "configs/inference.json", "--input_dir", str(images), *cli(CPU)], bundle, isolated_env)
    assert "Restored all variables from ./models/model.pt" in output
    assert len(list((bundle / "predictions").glob("*_seg.png"))) == len(list(images.glob("*.jpg")))

    # from another folder with --bundle_root: fine-tune the shipped model for one epoch
    finetuned = tmp_path / "finetuned"
    configs = f"['{bundle}/configs/train.json','{bundle}/configs/finetune.json']"
    common = ["--output_dir", str(finetuned), "--dataset_dir", str(dataset_dir), *cli(FAST)]
    output = run_isolated([*run, configs, "--bundle_root", str(bundle), *common], elsewhere, isolated_env)
    assert f"fine-tuning from {bundle / 'models' / 'model.pt'}" in output and "Epoch: 1/1" in output
    assert (finetuned / "models" / "model.pt").is_file()

    # from the bundle folder: evaluate the fine-tuned model
    output = run_isolated([*run, "['configs/train.json','configs/evaluate.json']", *common], bundle, isolated_env)
    assert f"Restored all variables from {finetuned / 'models' / 'model.pt'}" in output
    assert json.loads((finetuned / "eval" / "fold1" / "summary.json").read_text())["num_images"] == 5

    # monai.bundle.load from another folder: the network with the exported weights, and the TorchScript model
    result_file = tmp_path / "loaded.pt"
    run_isolated(["-c", LOAD_AND_COMPARE, str(downloaded), str(result_file)], elsewhere, isolated_env)
    loaded = torch.load(result_file, weights_only=True)
    assert Path(loaded["code"]) == bundle / "scripts" / "custom_losses" / "networks.py"  # the vendored copy
    assert loaded["version"] == VERSION
    shipped = state_dict(zip_member(exported, "models/model.pt"))
    trained = torch.load(run_dir / "models" / "fold1" / "model.pt", weights_only=True)
    assert loaded["state"].keys() == shipped.keys() == trained.keys()
    for key in shipped:
        assert torch.equal(loaded["state"][key], shipped[key]) and torch.equal(shipped[key], trained[key]), key
    torch.testing.assert_close(loaded["scripted"], loaded["network"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_export_carries_the_overrides_the_run_was_trained_with(dataset_dir, tmp_path):
    """A study run at 32 px with the demo's resnet10 network: the exported configs and metadata describe that
    network at that size (not the bundle's 352 px resnet18), and MONAI's verify_net_in_out passes on it."""
    run = tmp_path / "runs" / BUNDLE / "seed0"
    network = {key: value for key, value in DEMO_SETTINGS.items() if key.startswith("network_def")}
    overrides = {**FAST, "image_size": 32, **network, "seed": 0}
    run_bundle(str(BUNDLES_DIR / BUNDLE), str(run), str(dataset_dir), 1, json.dumps(overrides))
    set_determinism(seed=None)
    assert (
        json.loads((run / "fold1_settings.json").read_text())["settings"] == overrides
    )  # recorded when training started

    zip_path = export_bundle(BUNDLE, fold=1, output_dir=str(tmp_path / "dist"), run_dir=str(run))
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp_path / "unzipped")
    bundle = tmp_path / "unzipped" / BUNDLE
    in_repo = json.loads((BUNDLES_DIR / BUNDLE / "configs" / "inference.json").read_text())
    for name in ("train.json", "inference.json"):
        config = json.loads((bundle / "configs" / name).read_text())
        assert config["image_size"] == 32, name
        assert config["network_def"]["backbone"] == "resnet10", name
        assert config["network_def"]["decoder_channels"] == network["network_def#decoder_channels"], name
        assert config["device"] == in_repo["device"], name  # where the run was trained is not carried
    train = json.loads((bundle / "configs" / "train.json").read_text())
    assert (train["epochs"], train["batch_size"], train["num_workers"]) == (1, 4, 4)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    formats = meta["network_data_format"]
    assert formats["inputs"]["image"]["spatial_shape"] == formats["outputs"]["pred"]["spatial_shape"] == [32, 32]
    assert "resnet10" in meta["changelog"][VERSION]
    config_file, meta_file = str(bundle / "configs" / "inference.json"), str(bundle / "configs" / "metadata.json")
    verify_net_in_out("network_def", meta_file, config_file, device="cpu", bundle_root=str(bundle))


def test_code_only_export_keeps_the_fold_layout(tmp_path):
    zip_path = export_bundle(BUNDLE, output_dir=str(tmp_path), weights=False)
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
    assert f"{BUNDLE}/configs/evaluate_ensemble.json" in names and f"{BUNDLE}/scripts/__init__.py" in names
    assert not any(name.startswith(f"{BUNDLE}/models/") for name in names) and f"{BUNDLE}/large_files.yml" not in names
    inference = json.loads(zip_member(zip_path, "configs/inference.json"))
    in_repo = json.loads((BUNDLES_DIR / BUNDLE / "configs" / "inference.json").read_text())
    assert inference["ckpt_dir"] == in_repo["ckpt_dir"] and inference["checkpoint"] == in_repo["checkpoint"]
    assert "weights" not in json.loads(zip_member(zip_path, "configs/metadata.json"))["changelog"][VERSION]


def test_bad_input_fails_with_one_line_and_no_zip(tmp_path, capsys, monkeypatch):
    output_dir = tmp_path / "dist"
    cases = {
        "polyp_nope": ["--bundle=polyp_nope", f"--output_dir={output_dir}"],
        "fold3": [f"--bundle={BUNDLE}", "--fold=3", f"--run_dir={tmp_path}", f"--output_dir={output_dir}"],
    }
    for expected, argv in cases.items():
        assert main(argv) == 1
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("error: ") and expected in error, error
    assert str(tmp_path / "models" / "fold3" / "model.pt") in error

    # a model whose training overrides nobody recorded: its image size and network are unknown
    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / BUNDLE / "configs" / "inference.json"))
    parser["network_def#backbone"] = "resnet10"
    (tmp_path / "models" / "fold2").mkdir(parents=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "models" / "fold2" / "model.pt")
    fold2 = [f"--bundle={BUNDLE}", "--fold=2", f"--run_dir={tmp_path}", f"--output_dir={output_dir}"]
    assert main(fold2) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{tmp_path / 'fold2_settings.json'} does not exist" in error, error
    assert "--overrides" in error
    # ... or recorded wrongly: the resnet10 weights do not fit the bundle's resnet18
    (tmp_path / "fold2_settings.json").write_text('{"settings": {}}')
    assert main(fold2) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "does not fit the network_def" in error, error
    assert not output_dir.exists()

    output_dir.mkdir()
    (output_dir / f"{BUNDLE}_v{VERSION}.zip").write_text("an older export")
    assert main([f"--bundle={BUNDLE}", "--noweights", f"--output_dir={output_dir}"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(output_dir / f"{BUNDLE}_v{VERSION}.zip") in error and "--overwrite" in error
    assert (output_dir / f"{BUNDLE}_v{VERSION}.zip").read_text() == "an older export"
    assert main([f"--bundle={BUNDLE}", "--noweights", f"--output_dir={output_dir}", "--overwrite"]) == 0
    assert zipfile.is_zipfile(output_dir / f"{BUNDLE}_v{VERSION}.zip")

    # a failure while the zip is being written leaves neither a zip nor a temporary file
    (output_dir / f"{BUNDLE}_v{VERSION}.zip").unlink()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("lesion_study.export.zipfile.ZipFile.write", fail)
    with pytest.raises(OSError, match="disk full"):
        export_bundle(BUNDLE, output_dir=str(output_dir), weights=False)
    assert list(output_dir.iterdir()) == []
