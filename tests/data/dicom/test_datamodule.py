"""DicomDataModule on synthetic sites and on real pydicom test files: items, splits, skips, errors."""

from __future__ import annotations

import csv
import logging
import shutil

import lightning as L
import pydicom
import pytest
import torch

from flip.data.base import split_by_patient
from flip.data.dicom.datamodule import DicomDataModule, read_manifest

from tests.data.dicom.conftest import pydicom_file, write_csv


def test_synthetic_site_loads_every_labelled_image(synthetic_site, synthetic_root):
    rows = list(csv.DictReader((synthetic_root / "site-1" / "labels.csv").open()))
    assert synthetic_site.num_items_found == len(rows)
    assert synthetic_site.skipped == []
    assert synthetic_site.site_name == "site-1"
    positives = sum(row["label"] == "1" for row in rows)
    assert synthetic_site.label_counts == {0: len(rows) - positives, 1: positives}
    sizes = synthetic_site.split_sizes
    assert sizes == tuple(len(synthetic_site.datasets[name]) for name in ("train", "val", "test"))
    assert sum(sizes) == len(rows) and min(sizes) > 0
    images, labels = synthetic_site.datasets["train"].tensors
    assert images.shape[1:] == (1, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.dtype == torch.int64


def test_every_split_holds_both_labels(synthetic_site):
    for dataset in synthetic_site.datasets.values():
        assert set(dataset.tensors[1].tolist()) == {0, 1}


def test_split_keeps_each_patient_in_one_split(synthetic_root):
    manifest = read_manifest(synthetic_root / "site-2" / "labels.csv", "SOPInstanceUID", "label", "PatientID")
    patients = [patient for _, patient, _ in manifest.values()]
    labels = [label for label, _, _ in manifest.values()]
    assert len(set(patients)) < len(patients), "the fixture needs a patient with two images"
    splits = split_by_patient(patients, labels, 0.2, 0.2, seed=0)
    assert sorted(i for indices in splits.values() for i in indices) == list(range(len(patients)))
    owners = [{patients[i] for i in indices} for indices in splits.values()]
    assert all(a.isdisjoint(b) for k, a in enumerate(owners) for b in owners[k + 1 :])


def test_split_is_deterministic_per_seed():
    patients = [f"p{i // 2}" for i in range(60)]
    labels = [i % 3 == 0 for i in range(60)]
    assert split_by_patient(patients, labels, 0.2, 0.2, seed=5) == split_by_patient(patients, labels, 0.2, 0.2, seed=5)
    assert split_by_patient(patients, labels, 0.2, 0.2, seed=5) != split_by_patient(patients, labels, 0.2, 0.2, seed=6)


def test_same_seed_gives_same_batches(synthetic_root, synthetic_site):
    twin = DicomDataModule(min_samples=1, root=synthetic_root, site="site-1", image_size=32, batch_size=8, seed=3)
    twin.setup()
    for split in ("train", "val", "test"):
        for mine, theirs in zip(twin.datasets[split].tensors, synthetic_site.datasets[split].tensors, strict=True):
            assert torch.equal(mine, theirs)
    first_batch, twin_batch = next(iter(synthetic_site.train_dataloader())), next(iter(twin.train_dataloader()))
    assert torch.equal(first_batch[0], twin_batch[0])
    ordered = synthetic_site.datasets["train"].tensors[0][:8]
    assert not torch.equal(first_batch[0], ordered), "the training loader should shuffle"
    assert torch.equal(next(iter(synthetic_site.val_dataloader()))[0], synthetic_site.datasets["val"].tensors[0][:8])
    twin.seed = 4  # the split is already fixed; only the shuffling seed changes
    assert not torch.equal(next(iter(twin.train_dataloader()))[0], first_batch[0])


def test_fingerprint_tracks_labels_but_not_patients(synthetic_root, synthetic_site, tmp_path):
    site = shutil.copytree(synthetic_root / "site-1", tmp_path / "site-1")
    rows = list(csv.DictReader((site / "labels.csv").open()))
    write_csv(site / "labels.csv", [{**row, "PatientID": "anonymous"} for row in rows])
    same = DicomDataModule(min_samples=1, root=site, image_size=32)
    same.setup()
    assert same.fingerprint == synthetic_site.fingerprint
    flipped = [{**rows[0], "label": 1 - int(rows[0]["label"])}, *rows[1:]]
    write_csv(site / "labels.csv", flipped)
    changed = DicomDataModule(min_samples=1, root=site, image_size=32)
    changed.setup()
    assert changed.fingerprint != synthetic_site.fingerprint


def test_fingerprint_follows_content_not_file_names_or_order(synthetic_root, synthetic_site, tmp_path):
    site = shutil.copytree(synthetic_root / "site-1", tmp_path / "site-1", ignore=shutil.ignore_patterns("fhir", "notes"))
    files = sorted((site / "dicom").rglob("*.dcm"))
    for number, path in enumerate(files):  # every file renamed, listed in reverse order
        path.rename(path.with_name(f"renamed-{len(files) - number}.dcm"))
    rows = list(csv.DictReader((site / "labels.csv").open()))
    write_csv(site / "labels.csv", [{key: value for key, value in row.items() if key != "path"} for row in reversed(rows)])
    renamed = DicomDataModule(min_samples=1, root=site, image_size=32)
    renamed.setup()
    assert renamed.fingerprint == synthetic_site.fingerprint and renamed.num_items_found == synthetic_site.num_items_found
    one = next((site / "dicom").rglob("*.dcm"))
    ds = pydicom.dcmread(one)
    ds.PixelData = ds.pixel_array[::-1].tobytes()  # one input file's content changes
    ds.save_as(one)
    changed = DicomDataModule(min_samples=1, root=site, image_size=32)
    changed.setup()
    assert changed.fingerprint != synthetic_site.fingerprint


def test_real_files_load_and_bad_files_are_skipped_with_reasons(real_folder, caplog):
    dm = DicomDataModule(min_samples=1, root=real_folder, key_column="path", image_size=16, val_fraction=0.0, test_fraction=0.0)
    with caplog.at_level(logging.WARNING, logger="flip.data"):
        dm.setup()
    assert dm.num_items_found == 4
    assert dm.label_counts == {0: 3, 1: 1}
    assert dm.site_name == real_folder.name
    reasons = dict(dm.skipped)
    assert sorted(reasons) == ["mr/cr/IM0002", "mr/truncated.dcm", "notes.bin", "plan.dcm"]
    assert reasons["notes.bin"] == "not a DICOM file"
    assert reasons["plan.dcm"] == "no pixel data"
    assert reasons["mr/cr/IM0002"] == "no label for path 'mr/cr/IM0002'"
    assert reasons["mr/truncated.dcm"].startswith("cannot decode Explicit VR Little Endian pixel data: ValueError: ")
    assert "pixel data is less than expected" in reasons["mr/truncated.dcm"]
    assert {r.getMessage() for r in caplog.records} == {f"skipping {p}: {why}" for p, why in dm.skipped}
    # sidecars and DICOMDIR indexes are neither counted nor reported; every other file is one or the other
    assert dm.found_files == 8 == len(dm.files_used) + len(dm.skipped)
    assert sorted(dm.files_used) == ["ct.dcm", "mr/cr/IM0001", "mr/mr.dcm", "rgb.dcm"]
    assert dm.modalities == {"CT": 1, "MR": 2, "CR": 2, "RTPLAN": 1, "OT": 1}
    assert dm.transfer_syntaxes["Explicit VR Little Endian"] == 6 and sum(dm.transfer_syntaxes.values()) == 7


def test_keying_by_sop_instance_uid(real_folder):
    uid = pydicom.dcmread(real_folder / "ct.dcm", stop_before_pixels=True).SOPInstanceUID
    write_csv(real_folder / "labels.csv", [{"SOPInstanceUID": uid, "label": 1}])
    dm = DicomDataModule(min_samples=1, root=real_folder, image_size=16, val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    assert dm.num_items_found == 1 and dm.label_counts == {1: 1}


def test_folder_without_usable_images_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here\n")
    write_csv(tmp_path / "labels.csv", [{"path": "notes.txt", "label": 0}])
    with pytest.raises(ValueError, match=str(tmp_path)):
        DicomDataModule(min_samples=1, root=tmp_path, key_column="path").setup()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "root"),
        ({"root": "x", "window_center": 40}, "window_width"),
        ({"root": "x", "val_fraction": 0.5, "test_fraction": 0.5}, "sum to less than 1"),
        ({"root": "x", "key_column": "Modality"}, "key_column"),
        ({"root": "x", "mode": "volume"}, "key_column must be one of .*SeriesInstanceUID.* in volume mode"),
        ({"root": "x", "mode": "stack"}, "mode"),
        ({"root": "x", "channels": 2}, "channels"),
        ({"root": "x", "frames": "last"}, "frames"),
        ({"root": "x", "mode": "volume", "key_column": "PatientID", "volume_size": [8, 8]}, "volume_size"),
        ({"root": "x", "labels": None}, "no label source"),
        ({"root": "x", "label_attribute": "BodyPart"}, "neither a DICOM keyword nor a tag"),
        ({"root": "x", "label_attribute": "Modality", "label_map": {"CT": -1}}, "label_map"),
        ({"root": "x", "num_classes": 0}, "num_classes"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DicomDataModule(min_samples=1, **kwargs)


class TinyClassifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)
        )

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return torch.nn.functional.cross_entropy(self.net(images), labels)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(images), labels))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_fits_on_the_data_module(synthetic_root, tmp_path):
    dm = DicomDataModule(min_samples=1, root=synthetic_root, site="site-2", image_size=32, batch_size=8)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(TinyClassifier(), datamodule=dm)
    assert trainer.state.finished and trainer.global_step == 2
    assert "val_loss" in trainer.callback_metrics


def test_dicom_dir_scans_only_that_folder_and_labels_stay_at_the_site(tmp_path):
    site = tmp_path / "site-1"
    (site / "dicom" / "mr").mkdir(parents=True)
    (site / "fhir").mkdir()
    (site / "notes").mkdir()
    (site / "other").mkdir()
    shutil.copy(pydicom_file("CT_small.dcm"), site / "dicom" / "ct.dcm")
    shutil.copy(pydicom_file("MR_small.dcm"), site / "dicom" / "mr" / "mr.dcm")
    shutil.copy(pydicom_file("crayons.icc"), site / "other" / "profile.icc")
    (site / "fhir" / "Patient.ndjson").write_text('{"resourceType": "Patient", "id": "p1"}\n')
    (site / "notes" / "p1.txt").write_text("no acute findings\n")
    write_csv(site / "notes" / "labels.csv", [{"note": "p1", "label": 0}])
    write_csv(site / "labels.csv", [{"path": "dicom/ct.dcm", "label": 0}, {"path": "dicom/mr/mr.dcm", "label": 1}])
    dm = DicomDataModule(min_samples=1, root=tmp_path, site="site-1", dicom_dir="dicom", key_column="path", image_size=8,
                         val_fraction=0, test_fraction=0)  # fmt: skip
    dm.setup()
    assert dm.found_files == 2 and dm.skipped == [] and dm.label_counts == {0: 1, 1: 1}
    assert dm.files_used == ["dicom/ct.dcm", "dicom/mr/mr.dcm"]
    whole = DicomDataModule(min_samples=1, root=site, key_column="path", image_size=8, val_fraction=0, test_fraction=0)
    whole.setup()  # sidecars (.ndjson, .txt, .csv) are not read; the ICC profile is reported
    assert whole.found_files == 3 and whole.skipped == [("other/profile.icc", "not a DICOM file")]
    with pytest.raises(FileNotFoundError, match="DICOM folder not found"):
        DicomDataModule(min_samples=1, root=site, dicom_dir="images").setup()
