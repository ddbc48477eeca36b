"""The multimodal join on flip's synthetic sites: one item per patient, missing modalities masked or dropped."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import validate
from flip.data.synthetic.dataset import write_synthetic_dicom
from flip.training import build_datamodule, build_model

SMALL = {"num_sites": 2, "images_per_site": 40, "image_size": 32, "seed": 4}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_synthetic_dicom(tmp_path_factory.mktemp("synthetic"), **SMALL)


def config(root: Path, *overrides: str):
    return validate(resolve_recipe("multimodal_synthetic_local"), [
        f"data.root={root}", "data.site=site-1", "data.min_samples=1", "data.batch_size=8", *overrides,
    ])


def missing_patients(root: Path, modality: str) -> set[str]:
    dataset = json.loads((root / "dataset.json").read_text())
    site = next(s for s in dataset["sites"] if s["name"] == "site-1")
    return set(site["missing"][modality])


def test_one_item_per_patient_with_a_mask_for_missing_notes(root):
    cfg = config(root)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    tensors = [t for split in datamodule.datasets.values() for t in [split.tensors]]
    image, features, text, mask, labels = (torch.cat(column) for column in zip(*tensors))
    assert image.shape[1:] == (1, 32, 32) and text.dtype == torch.int64
    assert mask.shape[1] == 3 and set(mask[:, 0].tolist()) == {1.0}
    no_note = missing_patients(root, "notes")
    assert int((mask[:, 2] == 0).sum()) == len(no_note) > 0
    assert torch.all(text[mask[:, 2] == 0] == 0)
    assert datamodule.num_items_found == len(labels) == datamodule.sources["tabular"].num_items_found


def test_drop_policy_skips_patients_missing_a_modality_with_the_reason(root):
    datamodule = build_datamodule(config(root, "data.missing=drop"))
    datamodule.setup("fit")
    reasons = {path: reason for path, reason in datamodule.skipped if path.startswith("patient ")}
    for patient in missing_patients(root, "notes"):
        assert reasons[f"patient {patient}"] == "missing text (data.missing: drop)"
    assert all(mask.min() == 1 for mask in (split.tensors[3] for split in datamodule.datasets.values() if len(split)))


def test_fusion_model_trains_on_the_join(root):
    cfg = config(root)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg)
    trainer = L.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.state.finished


def test_modalities_must_agree_between_data_and_model(root):
    from flip.experiment.validate import config_problems

    problems = config_problems(resolve_recipe("multimodal_synthetic_local"), [
        "data.text=null", "data.label_from=text", "data.missing=sometimes",
    ])
    assert problems == [
        "data.label_from: 'text' is not a configured modality (image, tabular)",
        "data.missing: must be drop or mask, got 'sometimes'",
        "model.modalities: ['image', 'tabular', 'text'] must equal the data's modalities ['image', 'tabular']",
    ]
