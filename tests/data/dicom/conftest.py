"""Shared DICOM test data: flip's synthetic sites and real pydicom test files in a folder."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from flip.data.dicom.datamodule import DicomDataModule
from flip.data.synthetic.dataset import write_synthetic_dicom


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


def volume_module(root: Path, **kwargs) -> DicomDataModule:
    options = {"mode": "volume", "labels": None, "require_labels": False, "key_column": "SeriesInstanceUID",
               "val_fraction": 0.0, "test_fraction": 0.0, **kwargs}  # fmt: skip
    dm = DicomDataModule(min_samples=1, root=root, **options)
    dm.setup()
    return dm


def dicom_linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 linear windowing onto [0, 1], written out independently."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
