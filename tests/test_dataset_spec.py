"""Bundles for your own dataset from a small spec file, and the built-in datasets as such specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from monai.bundle import verify_metadata, verify_net_in_out

from lesion_study.bundlegen import cli as make_bundles
from lesion_study.bundlegen.specs import BUILTIN_DATASETS, DATASETS, SPECS_DIR, SpecError, load_dataset_spec
from lesion_study.study import cli as run_study
from lesion_study.synthetic import write_prepared_polyp

SKIN = {
    "name": "skin",
    "title": "Skin lesion segmentation in dermoscopy",
    "task": "Binary segmentation of skin lesions in dermoscopy images",
    "image_size": 64,
    "data_source": "My clinic's dermoscopy images, prepared with scripts/prepare_data.py folder.",
    "train_data": "400 images with a lesion, 5 folds",
    "test_data": "100 images with a lesion and 30 without",
    "prepare_command": "python scripts/prepare_data.py folder --train_dir=T --test_dir=S --output_dir=DATA/skin",
    "data_license": "Internal data, not distributed.",
    "references": ["Doe J et al. My skin lesion set. 2026"],
    "modality": "dermoscopy (RGB)",
    "losses": ["ce", "dice", "dbce"],
    "epochs": 2,
}


TINY = {"epochs": 1, "batch_size": 4, "val_batch_size": 4, "num_workers": 0, "image_size": 64, "device": "cpu"}


def write_spec(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**SKIN, **changes}))
    return path


def test_builtin_datasets_are_spec_files():
    assert list(DATASETS) == list(BUILTIN_DATASETS)
    for name in BUILTIN_DATASETS:
        assert load_dataset_spec(SPECS_DIR / f"{name}.yaml") == DATASETS[name]
    # and they regenerate today's bundles unchanged (test_bundles.py compares every file)
    assert make_bundles.main(["--check"]) == 0


def test_bundles_from_a_spec_verify(tmp_path):
    spec = write_spec(tmp_path / "skin.yaml")
    out = tmp_path / "my_bundles"
    assert make_bundles.main([f"--dataset_spec={spec}", f"--output_dir={out}"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["skin_ce", "skin_dbce", "skin_dice"]
    bundle = out / "skin_dbce"
    for config in ("train", "evaluate", "evaluate_ensemble", "inference", "multi_gpu_train", "finetune"):
        assert (bundle / "configs" / f"{config}.json").is_file(), config
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["name"] == "Skin lesion segmentation in dermoscopy: Dilated balanced CE"
    assert "Doe J et al. My skin lesion set. 2026" in meta["references"]
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(out / make_bundles.SCHEMA_FILE))
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        n=2,
        any=64,
        device="cpu",
    )
    assert json.loads((bundle / "configs" / "train.json").read_text())["image_size"] == 64
    assert "skin_dice" in (out / "README.md").read_text()
    assert "Skin lesion segmentation" in (bundle / "docs" / "README.md").read_text()
    assert make_bundles.main([f"--dataset_spec={spec}", f"--output_dir={out}", "--check"]) == 0


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"colour": "red"}, "unknown field(s) colour"),
        ({"losses": ["ce", "focal"]}, "unknown loss(es) focal"),
        ({"name": "Skin Lesions"}, "name 'Skin Lesions' must be lower-case"),
        ({"image_size": 0}, "image_size must be a positive integer"),
        ({"kind": "ct3d"}, "kind must be one of rgb2d, mri3d"),
    ],
)
def test_bad_specs_are_named(tmp_path, changes, fragment, capsys):
    spec = write_spec(tmp_path / "bad.yaml", **changes)
    with pytest.raises(SpecError) as error:
        load_dataset_spec(spec)
    assert str(spec) in str(error.value) and fragment in str(error.value) and "\n" not in str(error.value)
    assert make_bundles.main([f"--dataset_spec={spec}", f"--output_dir={tmp_path / 'out'}"]) == 1
    assert capsys.readouterr().err.strip().startswith(f"error: dataset spec {spec}")
    assert not (tmp_path / "out").exists()


def test_missing_field_and_unreadable_spec(tmp_path):
    spec = tmp_path / "short.yaml"
    spec.write_text(yaml.safe_dump({k: v for k, v in SKIN.items() if k != "title"}))
    with pytest.raises(SpecError, match="missing field"):
        load_dataset_spec(spec)
    spec.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="cannot be read"):
        load_dataset_spec(spec)


@pytest.mark.slow
def test_study_on_a_spec_dataset(tmp_path):
    spec = write_spec(tmp_path / "skin.yaml", losses=["ce", "dbce"])
    bundles = tmp_path / "my_bundles"
    assert make_bundles.main([f"--dataset_spec={spec}", f"--output_dir={bundles}"]) == 0
    data = write_prepared_polyp(tmp_path / "data", n_train=10, n_lesion=3, n_lesion_free=2)
    code = run_study.study(
        "skin",
        data_dir=str(data),
        spec=str(spec),
        bundles_dir=str(bundles),
        output_dir=str(tmp_path / "study"),
        **TINY,
    )
    assert code == 0
    report = (tmp_path / "study" / "results.md").read_text()
    assert "## Study `skin`" in report and "### Paired differences to ce" in report and "| dbce | 1 |" in report
    # every loss fine-tuned from the trained CE model instead of trained from scratch
    checkpoint = tmp_path / "study" / "runs" / "skin_ce" / "seed0" / "models" / "fold1" / "model.pt"
    code = run_study.study(
        "skin",
        data_dir=str(data),
        spec=str(spec),
        bundles_dir=str(bundles),
        output_dir=str(tmp_path / "finetuned"),
        finetune_from=str(checkpoint),
        bundles=["dbce"],
        examples=False,
        **TINY,
    )
    assert code == 0
    log = (tmp_path / "finetuned" / "runs" / "skin_dbce" / "seed0" / "fold1.log").read_text()
    assert f"fine-tuning from {checkpoint}" in log  # load_pretrained_weights says how many tensors came
    with pytest.raises(run_study.StudyError, match="--finetune_from .* does not exist"):
        run_study.study("skin", data_dir=str(data), spec=str(spec), bundles_dir=str(bundles), finetune_from="x.pt")
    with pytest.raises(run_study.StudyError, match="needs --bundles_dir"):
        run_study.study("skin", data_dir=str(data), spec=str(spec))
    with pytest.raises(run_study.StudyError, match="describes dataset 'skin', not 'polyp'"):
        run_study.study("polyp", data_dir=str(data), spec=str(spec), bundles_dir=str(bundles))
