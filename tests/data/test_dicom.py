"""DicomDataModule and load_image on synthetic sites and on real pydicom test files."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from flip.data import default_cache_dir
from flip.data.base import split_by_patient
from flip.data.dicom import DicomDataModule, load_image, read_manifest
from flip.data.synthetic import write_synthetic_dicom

SMALL = {"num_sites": 2, "images_per_site": 40, "image_size": 32, "seed": 1}


def pydicom_file(name: str) -> Path:
    return Path(get_testdata_file(name, download=False))


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return write_synthetic_dicom(tmp_path_factory.mktemp("synthetic"), **SMALL)


@pytest.fixture(scope="module")
def synthetic_site(synthetic_root) -> DicomDataModule:
    dm = DicomDataModule(root=synthetic_root, site="site-1", image_size=32, batch_size=8, seed=3)
    dm.setup()
    return dm


@pytest.fixture
def real_folder(tmp_path) -> Path:
    """Real pydicom test files in nested folders, plus files that must be skipped."""
    (tmp_path / "mr" / "cr").mkdir(parents=True)
    shutil.copy(pydicom_file("CT_small.dcm"), tmp_path / "ct.dcm")
    shutil.copy(pydicom_file("MR_small.dcm"), tmp_path / "mr" / "mr.dcm")
    shutil.copy(pydicom_file("6154"), tmp_path / "mr" / "cr" / "IM0001")  # MONOCHROME1 CR, no extension
    shutil.copy(pydicom_file("6247"), tmp_path / "mr" / "cr" / "IM0002")  # not in labels.csv
    shutil.copy(pydicom_file("rtplan.dcm"), tmp_path / "plan.dcm")  # DICOM without pixels
    shutil.copy(pydicom_file("SC_rgb_small_odd.dcm"), tmp_path / "rgb.dcm")  # colour
    (tmp_path / "mr" / "truncated.dcm").write_bytes(pydicom_file("MR_small.dcm").read_bytes()[:5000])
    (tmp_path / "notes.txt").write_text("not a DICOM file\n")
    labelled = ["ct.dcm", "mr/mr.dcm", "mr/cr/IM0001", "plan.dcm", "rgb.dcm", "mr/truncated.dcm", "notes.txt"]
    write_csv(tmp_path / "labels.csv", [{"path": path, "label": i % 2} for i, path in enumerate(labelled)])
    return tmp_path


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def dicom_linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 linear windowing onto [0, 1], written out independently."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


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
    twin = DicomDataModule(root=synthetic_root, site="site-1", image_size=32, batch_size=8, seed=3)
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
    same = DicomDataModule(root=site, image_size=32)
    same.setup()
    assert same.fingerprint == synthetic_site.fingerprint
    flipped = [{**rows[0], "label": 1 - int(rows[0]["label"])}, *rows[1:]]
    write_csv(site / "labels.csv", flipped)
    changed = DicomDataModule(root=site, image_size=32)
    changed.setup()
    assert changed.fingerprint != synthetic_site.fingerprint


def test_second_setup_does_not_read_files_again(synthetic_root, tmp_path):
    site = shutil.copytree(synthetic_root / "site-2", tmp_path / "site-2")
    dm = DicomDataModule(root=site, image_size=32)
    dm.setup("fit")
    train = dm.datasets["train"]
    shutil.rmtree(site / "dicom")
    dm.setup("test")
    assert dm.datasets["train"] is train


def test_synthetic_parameters_generate_into_the_cache(tmp_path):
    params = {**SMALL, "num_sites": 1}
    dm = DicomDataModule(synthetic=params, site="site-1", cache_dir=tmp_path, image_size=32)
    dm.prepare_data()
    dm.setup()
    assert dm.root.parent == tmp_path / "synthetic_dicom"
    assert dm.num_items_found == len(list((dm.root / "site-1").rglob("*.dcm")))


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLIP_CACHE_DIR", str(tmp_path / "flip-cache"))
    assert default_cache_dir() == tmp_path / "flip-cache"
    monkeypatch.delenv("FLIP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "flip"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "flip"


def test_real_files_load_and_bad_files_are_skipped_with_reasons(real_folder, caplog):
    dm = DicomDataModule(root=real_folder, key_column="path", image_size=16, val_fraction=0.0, test_fraction=0.0)
    with caplog.at_level(logging.WARNING, logger="flip.data"):
        dm.setup()
    assert dm.num_items_found == 3
    assert dm.label_counts == {0: 2, 1: 1}
    assert dm.site_name == real_folder.name
    reasons = dict(dm.skipped)
    assert sorted(reasons) == ["mr/cr/IM0002", "mr/truncated.dcm", "notes.txt", "plan.dcm", "rgb.dcm"]
    assert reasons["notes.txt"] == "not a DICOM file"
    assert reasons["plan.dcm"] == "no pixel data"
    assert reasons["mr/cr/IM0002"].startswith("no label")
    assert "RGB" in reasons["rgb.dcm"]
    assert "pixel data is less than expected" in reasons["mr/truncated.dcm"]
    assert {r.getMessage() for r in caplog.records} == {f"skipping {p}: {why}" for p, why in dm.skipped}


def test_keying_by_sop_instance_uid(real_folder):
    uid = pydicom.dcmread(real_folder / "ct.dcm", stop_before_pixels=True).SOPInstanceUID
    write_csv(real_folder / "labels.csv", [{"SOPInstanceUID": uid, "label": 1}])
    dm = DicomDataModule(root=real_folder, image_size=16, val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    assert dm.num_items_found == 1 and dm.label_counts == {1: 1}


def test_rescale_window_and_monochrome1_match_an_independent_computation():
    ds = pydicom.dcmread(pydicom_file("6154"))  # MONOCHROME1, slope 0.684, intercept 200, window 1600/2800
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.Rows == ds.Columns == 16
    values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = 1.0 - dicom_linear_window(values, float(ds.WindowCenter), float(ds.WindowWidth))
    image = load_image(ds, 16)
    assert image.shape == (1, 16, 16)
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-6)


def test_configured_window_overrides_and_min_max_is_the_fallback():
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))  # slope 1, intercept -1024, no window in the header
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    windowed = load_image(ds, 128, window_center=40, window_width=400)
    np.testing.assert_allclose(windowed[0].numpy(), dicom_linear_window(hounsfield, 40, 400), atol=1e-6)
    fallback = load_image(ds, 128)
    expected = (hounsfield - hounsfield.min()) / (hounsfield.max() - hounsfield.min())
    np.testing.assert_allclose(fallback[0].numpy(), expected, atol=1e-6)


def test_load_image_resizes_to_the_requested_size():
    image = load_image(pydicom.dcmread(pydicom_file("MR_small.dcm")), 24)
    assert image.shape == (1, 24, 24) and image.dtype == torch.float32
    assert 0.0 <= image.min() < image.max() <= 1.0


def test_folder_without_usable_images_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here\n")
    write_csv(tmp_path / "labels.csv", [{"path": "notes.txt", "label": 0}])
    with pytest.raises(ValueError, match=str(tmp_path)):
        DicomDataModule(root=tmp_path, key_column="path").setup()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "root"),
        ({"root": "x", "window_center": 40}, "window_width"),
        ({"root": "x", "val_fraction": 0.5, "test_fraction": 0.5}, "sum to less than 1"),
        ({"root": "x", "key_column": "AccessionNumber"}, "key_column"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DicomDataModule(**kwargs)


def test_missing_label_column_is_reported(real_folder):
    with pytest.raises(ValueError, match="missing column"):
        DicomDataModule(root=real_folder, key_column="path", label_column="diagnosis").setup()


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
    dm = DicomDataModule(root=synthetic_root, site="site-2", image_size=32, batch_size=8)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(TinyClassifier(), datamodule=dm)
    assert trainer.state.finished and trainer.global_step == 2
    assert "val_loss" in trainer.callback_metrics
