"""The synthetic generator writes valid, deterministic, heterogeneous DICOM sites.

Its FHIR export and notes are tested in test_synthetic_multimodal.py."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import UID, ExplicitVRLittleEndian

from flip.data.synthetic.dataset import GENERATOR_VERSION, cache_key, ensure_synthetic_dicom, write_synthetic_dicom

SMALL = {"num_sites": 3, "images_per_site": 40, "image_size": 32, "seed": 0}
REQUIRED_ATTRIBUTES = [
    "PatientID", "PatientName", "PatientSex", "PatientBirthDate", "StudyDate", "StudyTime", "Modality",
    "InstitutionName", "Manufacturer", "ManufacturerModelName", "PixelSpacing", "RescaleSlope",
    "RescaleIntercept", "WindowCenter", "WindowWidth",
]  # fmt: skip


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return write_synthetic_dicom(tmp_path_factory.mktemp("synthetic"), **SMALL)


def site_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("site-*"))


def read_labels(site_dir: Path) -> list[dict]:
    with (site_dir / "labels.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_has_one_folder_per_site_and_a_summary(dataset_dir):
    assert [p.name for p in site_dirs(dataset_dir)] == ["site-1", "site-2", "site-3"]
    summary = json.loads((dataset_dir / "dataset.json").read_text())
    assert summary["generator_version"] == GENERATOR_VERSION == 4
    assert summary["parameters"] == SMALL
    assert [site["name"] for site in summary["sites"]] == ["site-1", "site-2", "site-3"]


def test_files_are_valid_part10_dicom(dataset_dir):
    for site_dir in site_dirs(dataset_dir):
        for path in sorted(site_dir.glob("dicom/*/*.dcm")):
            assert path.read_bytes()[128:132] == b"DICM"
            ds = pydicom.dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            for uid in (ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
                assert UID(uid).is_valid
            assert all(name in ds for name in REQUIRED_ATTRIBUTES)
            assert (ds.Modality, ds.PhotometricInterpretation) == ("CR", "MONOCHROME2")
            assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 12, 0)
            assert ds.pixel_array.shape == (32, 32) and ds.pixel_array.max() <= 4095
            assert ds.InstitutionName == f"Synthetic Hospital {site_dir.name.split('-')[1]}"
            assert ds.PatientID == path.parent.name


def test_uids_are_unique(dataset_dir):
    uids = [row["SOPInstanceUID"] for site_dir in site_dirs(dataset_dir) for row in read_labels(site_dir)]
    assert len(uids) == len(set(uids))


def test_each_site_has_its_own_scanner(dataset_dir):
    scanners = []
    for site_dir in site_dirs(dataset_dir):
        headers = {
            (ds.Manufacturer, float(ds.RescaleSlope), float(ds.RescaleIntercept))
            for ds in map(pydicom.dcmread, sorted(site_dir.glob("dicom/*/*.dcm")))
        }
        assert len(headers) == 1, f"{site_dir.name} mixes scanners"
        scanners.append(headers.pop())
    for field in range(3):  # manufacturer, slope and intercept each differ between sites
        assert len({scanner[field] for scanner in scanners}) == len(scanners)


def test_labels_csv_matches_files(dataset_dir):
    for site_dir in site_dirs(dataset_dir):
        rows = read_labels(site_dir)
        assert list(rows[0]) == ["SOPInstanceUID", "path", "PatientID", "label"]
        assert {row["path"] for row in rows} == {p.relative_to(site_dir).as_posix() for p in site_dir.rglob("*.dcm")}
        for row in rows:
            ds = pydicom.dcmread(site_dir / row["path"], stop_before_pixels=True)
            assert (ds.SOPInstanceUID, ds.PatientID) == (row["SOPInstanceUID"], row["PatientID"])
            assert row["label"] in ("0", "1")


def test_some_patients_have_two_images(dataset_dir):
    patients = [row["PatientID"] for site_dir in site_dirs(dataset_dir) for row in read_labels(site_dir)]
    assert len(set(patients)) < len(patients)


def test_sites_differ_in_size_and_prevalence(dataset_dir):
    sites = json.loads((dataset_dir / "dataset.json").read_text())["sites"]
    for site in sites:
        rows = read_labels(dataset_dir / site["name"])
        assert site["num_images"] == len(rows)
        assert site["num_positive"] == sum(row["label"] == "1" for row in rows)
        assert 0.6 * 40 - 1 <= site["num_images"] <= 1.4 * 40 + 1
    assert len({site["num_images"] for site in sites}) == len(sites)
    assert len({site["prevalence"] for site in sites}) == len(sites)


def test_lesion_films_are_brighter_than_clear_films(dataset_dir):
    """Lesions are faint (a site's own films vary more than that at 40 films), so over every site:
    each film's brightness relative to its site's mean."""
    differences = {"0": [], "1": []}
    for site_dir in site_dirs(dataset_dir):
        rows = read_labels(site_dir)
        films = [pydicom.dcmread(site_dir / row["path"]) for row in rows]
        means = [apply_modality_lut(ds.pixel_array, ds).mean() for ds in films]
        for row, mean in zip(rows, means):
            differences[row["label"]].append(mean - np.mean(means))
    assert np.mean(differences["1"]) > np.mean(differences["0"])


def test_sites_differ_in_lesions_and_in_a_shortcut_of_their_own(dataset_dir):
    """Each site marks its own corner, on more label 1 films than label 0 ones: a model of one site
    can learn a cue that is absent at the others. The other corners stay at the film's background."""
    sites = json.loads((dataset_dir / "dataset.json").read_text())["sites"]
    assert len({(site["lesions"]["sigma"], site["lesions"]["contrast"]) for site in sites}) == len(sites)
    assert [site["lesions"]["marker_corner"] for site in sites] == [0, 1, 2, 3][: len(sites)]
    corners = [(slice(2, 6), slice(2, 6)), (slice(2, 6), slice(26, 30)), (slice(26, 30), slice(2, 6))]
    for site, own in zip(sites, corners):
        marked = {"0": [], "1": []}
        for row in read_labels(dataset_dir / site["name"]):
            ds = pydicom.dcmread(dataset_dir / site["name"] / row["path"])
            pixels = apply_modality_lut(ds.pixel_array, ds)
            others = [pixels[c].mean() for c in corners if c != own]
            marked[row["label"]].append(pixels[own].mean() > max(others) + 0.3 * 1500 * site["scanner"]["gain"])
        assert np.mean(marked["1"]) > np.mean(marked["0"]) + 0.2, site["name"]


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    first = all_files(write_synthetic_dicom(tmp_path / "a", **SMALL))
    again = all_files(write_synthetic_dicom(tmp_path / "b", **SMALL))
    other = all_files(write_synthetic_dicom(tmp_path / "c", **{**SMALL, "seed": 1}))
    assert first == again
    for suffix in (".dcm", ".ndjson", ".txt", ".csv", ".json"):
        assert any(path.endswith(suffix) for path in first), suffix
    for path in ("site-1/fhir/Observation.ndjson", "site-1/fhir/DocumentReference.ndjson", "site-1/notes/labels.csv"):
        assert first[path] != other[path]
    first_films = {path: data for path, data in first.items() if path.endswith(".dcm")}
    other_films = {path: data for path, data in other.items() if path.endswith(".dcm")}
    assert set(first_films.values()).isdisjoint(other_films.values())


def test_ensure_generates_once_and_then_reuses_the_cache(tmp_path, caplog):
    params = {**SMALL, "num_sites": 1}
    with caplog.at_level(logging.INFO, logger="flip.data"):
        first = ensure_synthetic_dicom(tmp_path, **params)
    assert first == tmp_path / "synthetic_dicom" / cache_key(**params)
    assert [r.getMessage() for r in caplog.records] == [f"generating synthetic DICOM data into {first}"]
    stamps = {p: p.stat().st_mtime_ns for p in first.rglob("*")}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flip.data"):
        second = ensure_synthetic_dicom(tmp_path, **params)
    assert second == first and not caplog.records
    assert {p: p.stat().st_mtime_ns for p in second.rglob("*")} == stamps
    assert [p.name for p in (tmp_path / "synthetic_dicom").iterdir()] == [first.name]


def test_ensure_replaces_an_incomplete_folder(tmp_path):
    params = {**SMALL, "num_sites": 1}
    target = tmp_path / "synthetic_dicom" / cache_key(**params)
    target.mkdir(parents=True)
    (target / "partial.dcm").write_bytes(b"interrupted")
    assert ensure_synthetic_dicom(tmp_path, **params) == target
    assert not (target / "partial.dcm").exists()
    assert (target / "site-1" / "labels.csv").is_file()
    assert (target / "site-1" / "fhir" / "Patient.ndjson").is_file()
    assert (target / "site-1" / "notes" / "labels.csv").is_file()


def test_cache_key_depends_on_every_parameter():
    keys = {cache_key(**SMALL)} | {cache_key(**{**SMALL, name: value + 1}) for name, value in SMALL.items()}
    assert len(keys) == len(SMALL) + 1
