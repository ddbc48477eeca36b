"""DicomDataModule and its pixel, series, label and cache parts on synthetic sites and on real
pydicom test files (copied, and where a case needs it re-written with changed headers or pixels)."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid

from flip.data import default_cache_dir
from flip.data.base import split_by_patient
from flip.data.dicom.datamodule import DicomDataModule, load_image, read_manifest
from flip.data.dicom import pixels as dicom_pixels
from flip.data.dicom.files import GEOMETRY_KEYWORDS, HEADER_KEYWORDS, header_text
from flip.data.dicom.pixels import load_frames
from flip.data.synthetic.dataset import write_synthetic_dicom
from flip.models.volume import VolumeClassifier

SMALL = {"num_sites": 2, "images_per_site": 40, "image_size": 32, "seed": 1}


def pydicom_file(name: str) -> Path:
    return Path(get_testdata_file(name, download=False))


DATA = pydicom_file("CT_small.dcm").parent  # pydicom's bundled test files


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return write_synthetic_dicom(tmp_path_factory.mktemp("synthetic"), **SMALL)


@pytest.fixture(scope="module")
def synthetic_site(synthetic_root) -> DicomDataModule:
    dm = DicomDataModule(min_samples=1, root=synthetic_root, site="site-1", image_size=32, batch_size=8, seed=3)
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
    (tmp_path / "notes.bin").write_bytes(pydicom_file("crayons.icc").read_bytes())  # not DICOM
    (tmp_path / "README.txt").write_text("a sidecar: neither read nor reported\n")
    (tmp_path / "index").mkdir()
    shutil.copy(DATA / "dicomdirtests" / "DICOMDIR", tmp_path / "index" / "DICOMDIR")  # an index, by name
    shutil.copy(DATA / "dicomdirtests" / "DICOMDIR-bigEnd", tmp_path / "index" / "catalogue")  # by SOP class
    labelled = ["ct.dcm", "mr/mr.dcm", "mr/cr/IM0001", "plan.dcm", "rgb.dcm", "mr/truncated.dcm", "notes.bin"]
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


def test_second_setup_does_not_read_files_again(synthetic_root, tmp_path):
    site = shutil.copytree(synthetic_root / "site-2", tmp_path / "site-2")
    dm = DicomDataModule(min_samples=1, root=site, image_size=32)
    dm.setup("fit")
    train = dm.datasets["train"]
    shutil.rmtree(site / "dicom")
    dm.setup("test")
    assert dm.datasets["train"] is train


def test_synthetic_parameters_generate_into_the_cache(tmp_path):
    params = {**SMALL, "num_sites": 1}
    dm = DicomDataModule(min_samples=1, synthetic=params, site="site-1", cache_dir=tmp_path, image_size=32)
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


def test_missing_label_column_is_reported(real_folder):
    with pytest.raises(ValueError, match="missing column"):
        DicomDataModule(min_samples=1, root=real_folder, key_column="path", label_column="diagnosis").setup()


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


# -- pixels: colour, palette, bit depths, compression, frames, transfer syntaxes


def bt601(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of [..., 3] values."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def test_rgb_is_bt601_grey_or_three_channels():
    ds = pydicom.dcmread(pydicom_file("SC_rgb_small_odd.dcm"))  # 3x3 RGB, 8 bits
    rgb = ds.pixel_array.astype(np.float64) / 255
    np.testing.assert_allclose(load_image(ds, 3)[0].numpy(), bt601(rgb), atol=1e-6)
    np.testing.assert_allclose(load_image(ds, 3, channels=3).numpy(), rgb.transpose(2, 0, 1), atol=1e-6)


def test_ybr_full_422_is_converted_as_the_standard_says():
    ds = pydicom.dcmread(pydicom_file("SC_ybr_full_422_uncompressed.dcm"))
    ybr = pydicom.pixels.pixel_array(ds, raw=True).astype(np.float64)  # Y, Cb, Cr with the 4:2:2 expanded
    y, cb, cr = ybr[..., 0], ybr[..., 1] - 128, ybr[..., 2] - 128
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)  # PS3.3 C.7.6.3.1.2
    rgb = np.clip(rgb, 0, 255) / 255
    image = load_image(ds, 100, channels=3).numpy()
    np.testing.assert_allclose(image, rgb.transpose(2, 0, 1), atol=0.51 / 255)  # pydicom rounds to uint8
    np.testing.assert_allclose(load_image(ds, 100)[0].numpy(), bt601(rgb), atol=0.51 / 255)


def test_palette_colour_is_looked_up_in_the_lut():
    ds = pydicom.dcmread(pydicom_file("examples_palette.dcm"))  # 8-bit indices, 16-bit LUT entries
    entries, first, bits = ds.RedPaletteColorLookupTableDescriptor
    luts = [np.frombuffer(ds[f"{c}PaletteColorLookupTableData"].value, dtype="<u2") for c in ("Red", "Green", "Blue")]
    index = np.clip(ds.pixel_array.astype(np.int64) - first, 0, entries - 1)
    rgb = np.stack([lut[index] for lut in luts], axis=-1) / (2**bits - 1)
    grey = torch.from_numpy(bt601(rgb)).float()[None, None]
    expected = torch.nn.functional.interpolate(grey, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    np.testing.assert_allclose(load_image(ds, 32)[0].numpy(), expected[0, 0].numpy(), atol=1e-5)


def independent_grey(ds: pydicom.Dataset) -> np.ndarray:
    """Rescale, then the header window (DICOM linear) or min-max, then MONOCHROME1 inversion."""
    values = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    if "WindowCenter" in ds:
        unit = dicom_linear_window(values, float(ds.WindowCenter), float(ds.WindowWidth))
    else:
        unit = (values - values.min()) / (values.max() - values.min())
    return 1 - unit if ds.PhotometricInterpretation == "MONOCHROME1" else unit


@pytest.mark.parametrize(
    ("name", "bits", "signed"),
    [
        ("liver_1frame.dcm", 1, 0),  # SEG, 1 bit packed
        ("image_dfl.dcm", 8, 0),  # deflated transfer syntax
        ("6278", 12, 0),  # MONOCHROME1 CR
        ("693_J2KI.dcm", 14, 1),  # JPEG 2000, header window
        ("CT_small.dcm", 16, 1),
        ("MR_small_bigendian.dcm", 16, 1),  # big endian, header window
        ("rtdose_1frame.dcm", 32, 0),
    ],
)
def test_bit_depths_and_signedness_match_an_independent_computation(name, bits, signed):
    ds = pydicom.dcmread(pydicom_file(name))
    assert (ds.BitsStored, ds.PixelRepresentation) == (bits, signed)
    image = load_image(ds, ds.Rows)
    assert image.shape == (1, ds.Rows, ds.Columns)
    np.testing.assert_allclose(image[0].numpy(), independent_grey(ds), atol=2e-6)


def test_lossless_compression_decodes_to_the_uncompressed_image():
    reference = load_image(pydicom.dcmread(pydicom_file("MR_small.dcm")), 64)
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_expb.dcm"):
        ds = pydicom.dcmread(pydicom_file(name))
        assert torch.equal(load_image(ds, 64), reference), ds.file_meta.TransferSyntaxUID.name


def test_frames_option_picks_the_first_the_middle_or_all_frames():
    ds = pydicom.dcmread(pydicom_file("rtdose.dcm"))  # 15 frames of 10x10, no window: min-max over what is decoded
    frames = ds.pixel_array.astype(np.float64)

    def min_max(values):
        return (values - values.min()) / (values.max() - values.min())

    np.testing.assert_allclose(load_image(ds, 10, frames="first")[0].numpy(), min_max(frames[0]), atol=1e-6)
    np.testing.assert_allclose(load_image(ds, 10)[0].numpy(), min_max(frames[7]), atol=1e-6)
    everything = load_frames(ds, 10, frames="all")
    assert everything.shape == (15, 1, 10, 10)
    np.testing.assert_allclose(everything[:, 0].numpy(), min_max(frames), atol=1e-6)


def test_frames_all_makes_one_item_per_frame(tmp_path):
    shutil.copy(pydicom_file("SC_rgb_rle_2frame.dcm"), tmp_path / "cine.dcm")
    write_csv(tmp_path / "labels.csv", [{"path": "cine.dcm", "label": 1}])
    dm = DicomDataModule(min_samples=1, root=tmp_path, key_column="path", image_size=8, frames="all", val_fraction=0, test_fraction=0)
    dm.setup()
    assert dm.num_items_found == 2 and dm.label_counts == {1: 2}
    images = dm.datasets["train"].tensors[0]
    rgb = pydicom.dcmread(tmp_path / "cine.dcm").pixel_array.astype(np.float32) / 255
    expected = torch.nn.functional.interpolate(torch.from_numpy(bt601(rgb))[:, None].float(), size=(8, 8), mode="bilinear", antialias=True)
    np.testing.assert_allclose(images.numpy(), expected.numpy(), atol=1e-5)
    assert dm.files_used == ["cine.dcm"]


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ("LINEAR_EXACT", lambda v, c, w: np.clip((v - c) / w + 0.5, 0, 1)),
        ("SIGMOID", lambda v, c, w: 1 / (1 + np.exp(-4 * (v - c) / w))),
    ],
)
def test_voi_lut_functions_of_the_header(function, expected):
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.VOILUTFunction = function
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    image = load_image(ds, 128, window_center=40, window_width=400)
    np.testing.assert_allclose(image[0].numpy(), expected(hounsfield, 40, 400), atol=2e-6)


def test_a_voi_lut_sequence_applies_when_the_header_has_no_window():
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    del ds.WindowCenter, ds.WindowWidth
    lut = np.round(65535 * (np.arange(4096) / 4095) ** 0.5).astype(np.uint16)  # a gamma curve
    item = pydicom.Dataset()
    item.LUTDescriptor, item.LUTData = [4096, 0, 16], lut.tolist()
    ds.VOILUTSequence = [item]
    looked_up = lut[np.clip(ds.pixel_array, 0, 4095)].astype(np.float64)
    expected = (looked_up - looked_up.min()) / (looked_up.max() - looked_up.min())
    np.testing.assert_allclose(load_image(ds, 64)[0].numpy(), expected, atol=1e-6)


def with_transfer_syntax(source: Path, target: Path, uid: str) -> Path:
    """A copy of a real explicit VR little endian file whose file meta claims another transfer
    syntax (written element by element: pydicom's save_as refuses syntaxes it does not know)."""
    ds = pydicom.dcmread(source)
    assert ds.original_encoding == (False, True)
    ds.file_meta.TransferSyntaxUID = uid
    with target.open("wb") as raw:
        out = DicomFileLike(raw)
        out.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(out, ds.file_meta)
        out.is_little_endian, out.is_implicit_VR = True, False
        write_dataset(out, ds)
    return target


@pytest.mark.parametrize(
    ("uid", "reason"),
    [
        ("1.2.840.10008.1.2.4.112", "no decoder installed for JPEG XL (1.2.840.10008.1.2.4.112): pydicom has none for it"),
        ("1.2.840.10008.1.2.4.92", "no decoder installed for JPEG 2000 Part 2 Multi-component Image Compression "
                                   "(Lossless Only) (1.2.840.10008.1.2.4.92): pydicom has none for it"),
    ],
)  # fmt: skip
def test_a_transfer_syntax_without_decoder_is_skipped_with_its_name(tmp_path, uid, reason):
    with_transfer_syntax(pydicom_file("SC_rgb_jpeg_gdcm.dcm"), tmp_path / "new.dcm", uid)
    shutil.copy(pydicom_file("CT_small.dcm"), tmp_path / "ct.dcm")
    dm = DicomDataModule(min_samples=1, root=tmp_path, labels=None, require_labels=False, image_size=8, val_fraction=0, test_fraction=0)
    dm.setup()
    assert dm.skipped == [("new.dcm", reason)]
    assert dm.transfer_syntaxes[reason.removeprefix("no decoder installed for ").split(" (1.2")[0]] == 1


# -- 3-D series

CT5N = DATA / "dicomdirtests" / "98892001" / "CT5N"  # five 16x16 CT slices 2.5 mm apart, InstanceNumber against z
MR2 = DATA / "dicomdirtests" / "98892003" / "MR2"  # localizers: slices of one series in three orientations


def copy_series(folder: Path, source: Path = CT5N) -> list[Path]:
    """The series' files under scrambled names in nested folders (order must come from the headers)."""
    paths = []
    for index, path in enumerate(sorted(source.iterdir(), reverse=True)):
        target = folder / f"part{index % 2}" / f"x{(index * 7919) % 101:03d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
        paths.append(target)
    return paths


def relabelled_series(folder: Path, index: int, patient: str) -> str:
    """A copy of CT5N as a new series (new Series/SOP Instance UIDs, patient); its SeriesInstanceUID."""
    series_uid = generate_uid(entropy_srcs=["series", str(index)])
    for path in sorted(CT5N.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.PatientID = series_uid, patient
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, path.name])
        ds.PixelData = np.roll(ds.pixel_array, index, axis=1).tobytes()  # the same anatomy, shifted
        (folder / series_uid).mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / series_uid / f"{path.name}.dcm")
    return series_uid


def ct5n_by_position() -> tuple[list[pydicom.Dataset], np.ndarray]:
    """CT5N's slices sorted by z (the normal of their axial orientation), and the windowed volume."""
    slices = sorted((pydicom.dcmread(path) for path in CT5N.iterdir()), key=lambda ds: float(ds.ImagePositionPatient[2]))
    hounsfield = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    return slices, dicom_linear_window(hounsfield, float(slices[2].WindowCenter), float(slices[2].WindowWidth))


def volume_module(root: Path, **kwargs) -> DicomDataModule:
    options = {"mode": "volume", "labels": None, "require_labels": False, "key_column": "SeriesInstanceUID",
               "val_fraction": 0.0, "test_fraction": 0.0, **kwargs}  # fmt: skip
    dm = DicomDataModule(min_samples=1, root=root, **options)
    dm.setup()
    return dm


def test_a_series_is_ordered_by_position_along_the_slice_normal(tmp_path):
    copy_series(tmp_path)
    dm = volume_module(tmp_path, volume_size=[5, 16, 16])
    slices, expected = ct5n_by_position()
    assert [int(ds.InstanceNumber) for ds in slices] == [10, 9, 8, 7, 6]  # not InstanceNumber order
    (volume,) = dm.datasets["train"].tensors[0]
    assert volume.shape == (1, 5, 16, 16)
    np.testing.assert_allclose(volume[0].numpy(), expected, atol=2e-6)
    assert dm.num_items_found == 1 and len(dm.files_used) == 5 and dm.unlabelled == 1
    spacing = dm.volume_spacing[slices[0].SeriesInstanceUID]
    np.testing.assert_allclose(spacing, (2.5, float(slices[0].PixelSpacing[0]), float(slices[0].PixelSpacing[1])), rtol=1e-6)


def test_resampling_to_volume_size_is_trilinear(tmp_path):
    copy_series(tmp_path)
    dm = volume_module(tmp_path, volume_size=[12, 16, 16])
    _, native = ct5n_by_position()
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(native).float()[None, None], size=(12, 16, 16), mode="trilinear", align_corners=False
    )
    np.testing.assert_allclose(dm.datasets["train"].tensors[0].numpy(), expected.numpy(), atol=2e-6)
    smaller = volume_module(tmp_path, volume_size=[3, 8, 8], cache=False)
    assert smaller.datasets["train"].tensors[0].shape == (1, 1, 3, 8, 8)


def test_series_with_inconsistent_slices_are_skipped_with_reasons(tmp_path):
    paths = copy_series(tmp_path / "ct")
    ds = pydicom.dcmread(paths[0])
    ds.PixelData, ds.Rows, ds.Columns = np.ascontiguousarray(ds.pixel_array[::2, ::2]).tobytes(), 8, 8
    ds.save_as(paths[0])
    shutil.copytree(MR2, tmp_path / "mr")
    dm = volume_module(tmp_path, volume_size=[2, 8, 8])
    reasons = dict(dm.skipped)
    assert reasons["ct"] == f"series {ds.SeriesInstanceUID}: inconsistent slice sizes in series: 16x16 (4 slices), 8x8 (1 slice)"
    for first in ("4950", "6273"):  # two localizer series in one folder, each three orientations
        uid = pydicom.dcmread(MR2 / first).SeriesInstanceUID
        assert reasons[f"mr/{first} (+2 more)"] == f"series {uid}: slices have 3 different ImageOrientationPatient values: not one volume"
    assert len(reasons) == 3 and dm.found_files == 12
    assert dm.num_items_found == 1 and dm.files_used == ["mr/15970"]  # a series of one slice is a (thin) volume


def test_volumes_are_labelled_by_series_study_or_patient(tmp_path):
    uids = [relabelled_series(tmp_path, index, f"P{index // 2}") for index in range(4)]
    write_csv(tmp_path / "labels.csv", [{"PatientID": "P0", "label": 0}, {"PatientID": "P1", "label": 1}])
    dm = volume_module(tmp_path, key_column="PatientID", labels="labels.csv", require_labels=True, volume_size=[4, 8, 8])
    assert dm.label_counts == {0: 2, 1: 2} and dm.num_items_found == 4 and set(dm.volume_spacing) == set(uids)
    write_csv(tmp_path / "labels.csv", [{"SeriesInstanceUID": uid, "label": i % 2} for i, uid in enumerate(uids[:3])])
    by_series = volume_module(tmp_path, labels="labels.csv", require_labels=True, volume_size=[4, 8, 8])
    assert by_series.label_counts == {0: 2, 1: 1}
    assert by_series.skipped == [(uids[3], f"no label for SeriesInstanceUID {uids[3]!r}")]


def test_volume_classifier_trains_on_volumes(tmp_path):
    for index in range(6):
        relabelled_series(tmp_path, index, f"P{index}")
    dm = volume_module(tmp_path, label_attribute="PatientID", label_map={f"P{i}": i % 2 for i in range(6)},
                       volume_size=[4, 16, 16], batch_size=3, val_fraction=0.0, test_fraction=0.0)  # fmt: skip
    model = VolumeClassifier(channels=(4, 8), hidden=8, metrics=("accuracy",))
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    assert model(dm.datasets["train"].tensors[0]).shape == (6, 2)


# -- labels

PATIENTS = [DATA / "dicomdirtests" / "77654033", DATA / "dicomdirtests" / "98892001"]  # 2 patients, 3 studies, 7 series


@pytest.fixture
def two_patients(tmp_path) -> Path:
    for folder in PATIENTS:
        shutil.copytree(folder, tmp_path / "site" / folder.name)
    return tmp_path / "site"


def headers() -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path, stop_before_pixels=True) for folder in PATIENTS for path in sorted(folder.rglob("*"))
            if path.is_file()]  # fmt: skip


@pytest.mark.parametrize("column", ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber"])
def test_a_row_keyed_at_a_coarser_level_labels_every_image_under_it(two_patients, column):
    values = sorted({str(ds.get(column)) for ds in headers()})
    label_of = {value: index % 2 for index, value in enumerate(values)}
    write_csv(two_patients / "labels.csv", [{column: value, "label": label} for value, label in label_of.items()])
    dm = DicomDataModule(min_samples=1, root=two_patients, key_column=column, image_size=8, val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    expected = Counter(label_of[str(ds.get(column))] for ds in headers())
    assert dm.label_counts == dict(expected) and dm.num_items_found == 14 and dm.skipped == []


def test_labels_from_a_header_keyword(two_patients):
    dm = DicomDataModule(min_samples=1, root=two_patients, labels=None, label_attribute="BodyPartExamined",
                         label_map={"CSPINE": 0, "HEAD": 1}, image_size=8, val_fraction=0, test_fraction=0)  # fmt: skip
    dm.setup()
    assert dm.label_counts == {0: 3, 1: 4}  # CR films of the c-spine, CT slices of the head
    reasons = dict(dm.skipped)
    assert len(reasons) == 7 and set(reasons.values()) == {"no label: the header has no BodyPartExamined value"}
    unknown = DicomDataModule(min_samples=1, root=two_patients, label_attribute="BodyPartExamined", label_map={"CSPINE": 0},
                              require_labels=False, image_size=8, val_fraction=0, test_fraction=0)  # fmt: skip
    unknown.setup()
    assert unknown.label_counts == {0: 3} and unknown.unlabelled == 7  # no value: unlabelled, not an error here
    assert Counter(reason for _, reason in unknown.skipped) == {
        "unknown label 'HEAD' from BodyPartExamined; allowed: label_map keys ['CSPINE']": 4
    }


def test_labels_from_a_private_tag(tmp_path):
    for name, value in (("CT_small.dcm", "1"), ("MR_small.dcm", "0"), ("rtdose_1frame.dcm", "2")):
        ds = pydicom.dcmread(pydicom_file(name))
        block = ds.private_block(0x0077, "FLIP LABELS", create=True)
        block.add_new(0x01, "LO", value)
        assert block.get_tag(0x01) == 0x00771001
        ds.save_as(tmp_path / name)
    dm = DicomDataModule(min_samples=1, root=tmp_path, labels=None, label_attribute="(0077,1001)", num_classes=2, image_size=8,
                         val_fraction=0, test_fraction=0)  # fmt: skip
    dm.setup()
    assert dm.label_counts == {0: 1, 1: 1}
    assert dm.skipped == [("rtdose_1frame.dcm", "unknown label '2' from (0077,1001); allowed: integers 0..1")]


CHARSET_FILES = Path(pydicom.data.__file__).parent / "charset_files"


@pytest.mark.parametrize(
    "path",
    [pydicom_file(name) for name in ("CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "rtplan.dcm")]
    + [CHARSET_FILES / name for name in ("chrJapMulti.dcm", "chrFrenMulti.dcm", "chrSQEncoding.dcm")],
    ids=lambda path: path.name,
)
def test_header_values_read_from_the_raw_bytes_are_pydicoms(path):
    keywords = (*HEADER_KEYWORDS, *GEOMETRY_KEYWORDS, "RescaleSlope", "RescaleIntercept", "PatientName", "ImageType")
    raw, converted = pydicom.dcmread(path), pydicom.dcmread(path)
    for keyword in keywords:
        value = converted.get(keyword)
        parts = value if isinstance(value, MultiValue) else [] if value is None else [value]
        assert header_text(raw, keyword) == "\\".join(str(part).strip() for part in parts), keyword


def test_label_keys_outside_ascii_are_decoded_with_the_character_set(tmp_path):
    patients = {"ISO_IR 100": "Müller", "ISO_IR 192": "Zoë^Ørsted", "\\ISO 2022 IR 87": "ヤマダ"}  # the last in escapes
    for index, (charset, patient) in enumerate(patients.items()):
        ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
        ds.PatientID, ds.SOPInstanceUID = patient, generate_uid()
        ds.save_as(tmp_path / f"{index}.dcm")
    raw = pydicom.dcmread(tmp_path / "2.dcm").get_item(0x00100020).value
    assert raw.isascii() and b"\x1b" in raw  # ASCII bytes that still need the character set
    write_csv(tmp_path / "labels.csv", [{"PatientID": patient, "label": i % 2} for i, patient in enumerate(patients.values())])
    dm = DicomDataModule(min_samples=1, root=tmp_path, key_column="PatientID", image_size=8, val_fraction=0, test_fraction=0)
    dm.setup()
    assert dm.skipped == [] and dm.label_counts == {0: 2, 1: 1}


def test_rows_without_images_and_unknown_labels_are_reported(real_folder, caplog):
    ct, mr = (pydicom.dcmread(real_folder / name).SOPInstanceUID for name in ("ct.dcm", "mr/mr.dcm"))
    missing = [f"1.2.3.{index}" for index in range(7)]
    rows = [{"SOPInstanceUID": ct, "label": "1"}, {"SOPInstanceUID": mr, "label": "2"}]
    write_csv(real_folder / "labels.csv", rows + [{"SOPInstanceUID": uid, "label": "0"} for uid in missing])
    dm = DicomDataModule(min_samples=1, root=real_folder, num_classes=2, image_size=8, val_fraction=0, test_fraction=0)
    with caplog.at_level(logging.WARNING, logger="flip.data"):
        dm.setup()
    reasons = dict(dm.skipped)
    assert dm.label_counts == {1: 1}
    assert reasons["mr/mr.dcm"] == f"unknown label '2' in labels.csv line 3 (SOPInstanceUID {mr!r}); allowed: integers 0..1"
    shown = ", ".join(repr(uid) for uid in missing[:5])
    assert reasons["labels.csv"] == f"7 of 9 label row(s) match no image found (SOPInstanceUID): {shown}, ..."
    assert sum("match no image" in record.getMessage() for record in caplog.records) == 1


def test_named_labels_map_through_label_map(real_folder):
    rows = [{"path": "ct.dcm", "label": "benign"}, {"path": "mr/mr.dcm", "label": "malignant"}, {"path": "rgb.dcm", "label": "cat"}]
    write_csv(real_folder / "labels.csv", rows)
    dm = DicomDataModule(min_samples=1, root=real_folder, key_column="path", label_map={"benign": 0, "malignant": 1}, image_size=8,
                         val_fraction=0, test_fraction=0)  # fmt: skip
    dm.setup()
    assert dm.label_counts == {0: 1, 1: 1}
    assert dict(dm.skipped)["rgb.dcm"] == "unknown label 'cat' in labels.csv line 4 (path 'rgb.dcm'); allowed: label_map keys ['benign', 'malignant']"


def test_without_a_label_source_every_image_is_unlabelled_not_an_error(real_folder):
    dm = DicomDataModule(min_samples=1, root=real_folder, labels=None, require_labels=False, image_size=8, val_fraction=0, test_fraction=0)
    dm.setup()
    assert dm.num_items_found == dm.unlabelled == 5 and dm.label_counts == {}
    assert sorted(dict(dm.skipped)) == ["mr/truncated.dcm", "notes.bin", "plan.dcm"]
    no_file = DicomDataModule(min_samples=1, root=real_folder, labels="missing.csv", require_labels=False, image_size=8)
    no_file.setup()
    assert no_file.unlabelled == 5 and ("missing.csv", "labels CSV not found: every item is unlabelled") in no_file.skipped
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        DicomDataModule(min_samples=1, root=real_folder, labels="missing.csv", image_size=8).setup()


# -- site layout


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


# -- the decoded cache

def setup_and_report(root: Path, cache: Path) -> dict:
    """Set a module up over `root` with this cache; what a later run would compare."""
    decodes = dicom_pixels.DECODES
    dm = DicomDataModule(min_samples=1, root=root, key_column="path", image_size=16, val_fraction=0, test_fraction=0, cache_dir=cache)
    dm.setup()
    images = dm.datasets["train"].tensors[0]
    return {"decodes": dicom_pixels.DECODES - decodes, "items": dm.num_items_found, "fingerprint": dm.fingerprint,
            "total": float(images.double().sum()), "skipped": [list(pair) for pair in dm.skipped], "hits": dm.cache_hits}  # fmt: skip


def setup_in_a_new_process(root: Path, cache: Path) -> dict:
    """`setup_and_report` in a fresh Python process, as the next round or run would do it."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_dicom import setup_and_report; "
            f"print(json.dumps(setup_and_report({str(root)!r}, {str(cache)!r})))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def rewrite_pixels_keeping_size_and_times(path: Path) -> None:
    """New pixel values, same file size, the old mtime restored: only the content (and ctime) changes."""
    stat = path.stat()
    ds = pydicom.dcmread(path)
    ds.PixelData = (ds.pixel_array[::-1]).tobytes()
    ds.save_as(path)
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_new_process_reads_the_cache_and_a_changed_file_misses(real_folder, tmp_path):
    cache = tmp_path / "cache"
    first = setup_and_report(real_folder, cache)
    assert first["decodes"] == 6 and first["items"] == 4  # every file with pixels, the truncated one too
    again = setup_in_a_new_process(real_folder, cache)  # the next round or run: nothing decoded
    assert again["decodes"] == 0 and again["hits"] == 9  # the DICOMDIR found by its SOP class too
    same = ("items", "fingerprint", "total", "skipped")
    assert {key: again[key] for key in same} == {key: first[key] for key in same}
    assert [path.parent.name for path in cache.rglob("*.pt")] == ["decoded"]
    rewrite_pixels_keeping_size_and_times(real_folder / "ct.dcm")
    changed = setup_and_report(real_folder, cache)
    assert changed["decodes"] == 1 and changed["hits"] == 8
    assert changed["fingerprint"] != first["fingerprint"] and changed["total"] != first["total"]


def test_other_settings_decode_again_and_volumes_are_cached(tmp_path):
    copy_series(tmp_path / "site")
    cache = tmp_path / "cache"
    before = dicom_pixels.DECODES
    first = volume_module(tmp_path / "site", volume_size=[4, 8, 8], cache_dir=cache)
    assert dicom_pixels.DECODES == before + 5
    second = volume_module(tmp_path / "site", volume_size=[4, 8, 8], cache_dir=cache)
    assert dicom_pixels.DECODES == before + 5
    assert torch.equal(first.datasets["train"].tensors[0], second.datasets["train"].tensors[0])
    assert first.volume_spacing == second.volume_spacing
    volume_module(tmp_path / "site", volume_size=[4, 4, 4], cache_dir=cache)
    assert dicom_pixels.DECODES == before + 10 and len(list((cache / "decoded").glob("*.pt"))) == 2
    volume_module(tmp_path / "site", volume_size=[4, 8, 8], cache_dir=cache, cache=False)
    assert dicom_pixels.DECODES == before + 15


def test_a_damaged_cache_is_rebuilt_not_trusted(real_folder, tmp_path):
    def setup() -> DicomDataModule:
        dm = DicomDataModule(min_samples=1, root=real_folder, key_column="path", image_size=16, cache_dir=tmp_path, val_fraction=0, test_fraction=0)
        dm.setup()
        return dm

    before = dicom_pixels.DECODES
    setup()
    (pack,) = (tmp_path / "decoded").glob("*.pt")
    pack.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])
    rebuilt = setup()
    assert dicom_pixels.DECODES == before + 12 and rebuilt.num_items_found == 4
    assert setup().cache_hits == 9 and dicom_pixels.DECODES == before + 12
