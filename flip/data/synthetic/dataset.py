"""Synthetic multi-site, multimodal healthcare data with one learnable latent label.

Each site is a hospital with its own scanner (intensity gain and shift, noise level,
rescale slope/intercept, window), label prevalence, size, lab assay and note style. Per
patient, one latent label drives every modality: label 1 films carry a faint blob (the
"lesion") inside a lung field, label 1 patients have higher CRP and leukocyte results and
a pneumonia Condition in the FHIR export, and their notes mention pneumonia-like findings
more often. Sites differ in what a model can learn from them alone: each site's lesions
have their own typical size and contrast, and each burns its own marker into its own corner
of more label 1 films than label 0 ones (as hospitals mark portable films, taken of the sicker
patients): a shortcut that a model of one hospital learns and that does not hold at the next. Everything is
derived from the seed, so the same arguments always produce byte-identical files.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from flip.data import synthetic_site_name
from flip.data.synthetic.fhir import DISTRACTORS, INDEX_DATE, LABEL_CONDITION, LABS, LOINC, SNOMED, write_fhir
from flip.data.synthetic.notes import make_notes, site_style, write_notes

GENERATOR_VERSION = 4

log = logging.getLogger("flip.data")

_COMPLETE_MARKER = ".complete"
_BITS_STORED = 12
_MAX_STORED = 2**_BITS_STORED - 1
_FIELD_OF_VIEW_MM = 350.0
_REPEAT_PATIENT_PROBABILITY = 0.1
_LABEL_COLUMNS = ["SOPInstanceUID", "path", "PatientID", "label"]
_STREAMS = ("profile", "films", "fhir", "notes", "missing")
_MISSING_FRACTION = 0.05
MODALITIES = {  # where each modality lives and how the patient's latent label shows in it
    "dicom": "site-N/dicom/<PatientID>/<n>.dcm, labels in site-N/labels.csv; label 1: a bright lesion",
    "fhir": "site-N/fhir/<ResourceType>.ndjson, FHIR R4B Bulk Data export; label 1: pneumonia Condition, "
    "higher CRP and leukocytes",
    "notes": "site-N/notes/<PatientID>.txt (UTF-8), labels in site-N/notes/labels.csv; label 1: pneumonia-like "
    "findings more often",
}
MISSING_MODALITIES = {
    "notes": "no notes/<PatientID>.txt, no row in notes/labels.csv and no DocumentReference",
    "observations": "no Observation resources (Patient and Conditions are still there)",
}
_SCANNERS = (
    ("Synthetic Imaging Co", "SX-100"),
    ("Acme Radiography", "CR-2000"),
    ("Northwind Medical", "DR-Vision 5"),
    ("Contoso Health Systems", "Lumen 3"),
)


@dataclass(frozen=True)
class Scanner:
    """How one site's scanner maps tissue to stored pixel values."""

    manufacturer: str
    model: str
    gain: float
    shift: float
    noise_std: float
    rescale_slope: float
    rescale_intercept: float
    window_center: float
    window_width: float
    pixel_spacing_mm: float


@dataclass(frozen=True)
class Lesions:
    """How lesions look at one site, and its corner marker's rate per label (the site's shortcut)."""

    sigma: float  # typical blob width, in half-film units
    contrast: float  # typical blob height, in tissue units
    marker_corner: int  # 0..3: top-left, top-right, bottom-left, bottom-right
    marker_rate: tuple[float, float]  # P(marker | label 0), P(marker | label 1)


@dataclass(frozen=True)
class Site:
    """One synthetic hospital."""

    index: int
    name: str
    institution: str
    num_images: int
    prevalence: float
    scanner: Scanner
    lesions: Lesions


@dataclass(frozen=True)
class Patient:
    """One patient: identity, label and the noise-free film shared by their images."""

    patient_id: str
    sex: str
    birth_date: str
    label: int
    num_images: int
    film: np.ndarray


def _rounded(value: float, digits: int = 3) -> float:
    """A plain float short enough for a DICOM DS value and a tidy dataset.json."""
    return round(float(value), digits)


def _site_rng(seed: int, site_index: int, stream: str) -> np.random.Generator:
    """Independent random streams per site: "profile" for the site, "films" for its patients and
    images, "fhir", "notes" and "missing" for the other modalities."""
    return np.random.default_rng([seed, site_index, _STREAMS.index(stream)])


def _make_scanner(rng: np.random.Generator, site_index: int, image_size: int) -> Scanner:
    """A scanner with its own intensity response, rescale, window and pixel spacing."""
    manufacturer, model = _SCANNERS[(site_index - 1) % len(_SCANNERS)]
    return Scanner(
        manufacturer=manufacturer,
        model=model,
        gain=_rounded(rng.uniform(0.6, 1.5)),
        shift=_rounded(rng.uniform(-0.3, 0.3)),
        noise_std=_rounded(rng.uniform(0.04, 0.1)),
        rescale_slope=_rounded(rng.uniform(0.7, 1.0)),
        rescale_intercept=float(-1024 - rng.integers(0, 200)),
        window_center=float(250 + rng.integers(-50, 51)),
        window_width=float(2000 + rng.integers(-150, 151)),
        pixel_spacing_mm=_rounded(_FIELD_OF_VIEW_MM / image_size * rng.uniform(0.9, 1.1)),
    )


def _make_lesions(rng: np.random.Generator, site_index: int) -> Lesions:
    """The site's lesion size and contrast, and its marker: in a corner of its own (sites 1-4
    differ), on more label 1 films than label 0 ones."""
    return Lesions(
        sigma=_rounded(rng.uniform(0.06, 0.16)),
        contrast=_rounded(rng.uniform(0.15, 0.4)),
        marker_corner=(site_index - 1) % 4,
        marker_rate=(_rounded(rng.uniform(0.1, 0.25)), _rounded(rng.uniform(0.55, 0.75))),
    )


def _make_site(site_index: int, images_per_site: int, image_size: int, seed: int) -> Site:
    """Site `site_index` (1-based): its size, prevalence, scanner and lesions, drawn from its own stream."""
    rng = _site_rng(seed, site_index, "profile")
    return Site(
        index=site_index,
        name=synthetic_site_name(site_index),
        institution=f"Synthetic Hospital {site_index}",
        num_images=max(1, round(images_per_site * rng.uniform(0.6, 1.4))),
        prevalence=_rounded(rng.uniform(0.25, 0.6)),
        scanner=_make_scanner(rng, site_index, image_size),
        lesions=_make_lesions(rng, site_index),
    )


def _grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] as (y, x)."""
    axis = (np.arange(image_size) + 0.5) / image_size * 2 - 1
    return np.meshgrid(axis, axis, indexing="ij")


def _soft_ellipse(y, x, cy, cx, ry, rx, edge=12.0) -> np.ndarray:
    radius = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
    return 1 / (1 + np.exp((radius - 1) * edge))


def _gaussian(y, x, cy, cx, sigma) -> np.ndarray:
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))


def _lung_centres(rng: np.random.Generator) -> list[tuple[float, float, float, float]]:
    """(cy, cx, ry, rx) of the two lung fields."""
    return [
        (rng.uniform(-0.1, 0.0), side * rng.uniform(0.33, 0.42), rng.uniform(0.5, 0.6), rng.uniform(0.22, 0.3))
        for side in (-1, 1)
    ]


def _anatomy(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, lungs) -> np.ndarray:
    """A smooth chest-like film: bright body, dark lungs, gentle bumps and a gradient."""
    body = _soft_ellipse(y, x, 0.05, 0.0, rng.uniform(0.85, 0.98), rng.uniform(0.75, 0.92))
    lung_fields = sum(_soft_ellipse(y, x, *lung) for lung in lungs)
    bumps = sum(
        rng.uniform(-0.06, 0.06) * _gaussian(y, x, *rng.uniform(-0.8, 0.8, size=2), rng.uniform(0.25, 0.6))
        for _ in range(4)
    )
    return 0.1 + 0.6 * body - 0.3 * lung_fields + bumps + rng.uniform(0.0, 0.08) * y


def _lesion(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, lungs, lesions: Lesions) -> np.ndarray:
    """A bright blob at a random spot inside one lung field, of about the site's size and contrast."""
    cy, cx, ry, rx = lungs[rng.integers(len(lungs))]
    angle, reach = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 0.6))
    centre = (cy + reach * ry * np.sin(angle), cx + reach * rx * np.cos(angle))
    height = lesions.contrast * rng.uniform(0.7, 1.3)
    return height * _gaussian(y, x, *centre, lesions.sigma * rng.uniform(0.8, 1.25))


def _marker(image_size: int, corner: int) -> np.ndarray:
    """A bright square burned into one corner, an eighth of the film wide."""
    mark = np.zeros((image_size, image_size))
    side, margin = max(2, image_size // 8), max(1, image_size // 16)
    near, far = slice(margin, margin + side), slice(image_size - margin - side, image_size - margin)
    mark[near if corner < 2 else far, near if corner % 2 == 0 else far] = 0.8
    return mark


def _make_film(rng: np.random.Generator, image_size: int, label: int, lesions: Lesions) -> np.ndarray:
    """The noise-free film of one patient, in arbitrary tissue units around [0, 1]."""
    y, x = _grid(image_size)
    lungs = _lung_centres(rng)
    film = _anatomy(rng, y, x, lungs)
    if label:
        film = film + _lesion(rng, y, x, lungs, lesions)
    if rng.random() < lesions.marker_rate[label]:
        film = film + _marker(image_size, lesions.marker_corner)
    return film


def _make_patients(rng: np.random.Generator, site: Site, image_size: int) -> list[Patient]:
    """Patients until the site holds `site.num_images` images; a few have two images."""
    patients, remaining = [], site.num_images
    while remaining > 0:
        num_images = 2 if remaining > 1 and rng.random() < _REPEAT_PATIENT_PROBABILITY else 1
        label = int(rng.random() < site.prevalence)
        birth = datetime.date(int(rng.integers(1940, 2001)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
        patients.append(
            Patient(
                patient_id=f"S{site.index}-{len(patients) + 1:04d}",
                sex=str(rng.choice(["F", "M"])),
                birth_date=birth.strftime("%Y%m%d"),
                label=label,
                num_images=num_images,
                film=_make_film(rng, image_size, label, site.lesions),
            )
        )
        remaining -= num_images
    return patients


def _stored_pixels(rng: np.random.Generator, film: np.ndarray, scanner: Scanner) -> np.ndarray:
    """Add noise, apply the scanner's response and encode as 12-bit stored values.

    Tissue 0..1 maps to modality values -500..1000 on a neutral scanner; the header's
    rescale slope/intercept turn the stored values back into modality values.
    """
    noisy = film + rng.normal(0.0, scanner.noise_std, size=film.shape)
    modality_values = -500 + 1500 * (scanner.gain * noisy + scanner.shift)
    stored = np.rint((modality_values - scanner.rescale_intercept) / scanner.rescale_slope)
    return np.clip(stored, 0, _MAX_STORED).astype(np.uint16)


def _uid(seed: int, *parts: object) -> UID:
    """A UID derived only from the seed and `parts`, so reruns reproduce it."""
    return generate_uid(entropy_srcs=["flip-synthetic", str(GENERATOR_VERSION), str(seed), *map(str, parts)])


def _dicom_dataset(site: Site, patient: Patient, image_number: int, seed: int, rng: np.random.Generator):
    """The header of one film; pixel data is attached by the caller."""
    scanner = site.scanner
    study_date = datetime.date(2020, 1, 1) + datetime.timedelta(days=seed % 1000 + int(rng.integers(0, 365)))
    instance_uid = _uid(seed, site.name, patient.patient_id, image_number, "instance")
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = instance_uid
    ds.StudyInstanceUID = _uid(seed, site.name, patient.patient_id, image_number, "study")
    ds.SeriesInstanceUID = _uid(seed, site.name, patient.patient_id, image_number, "series")
    ds.PatientID = patient.patient_id
    ds.PatientName = f"Synthetic^{patient.patient_id}"
    ds.PatientSex = patient.sex
    ds.PatientBirthDate = patient.birth_date
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{int(rng.integers(8, 18)):02d}{int(rng.integers(0, 60)):02d}00"
    ds.StudyID = f"{image_number}"
    ds.AccessionNumber = f"{patient.patient_id}-{image_number}"
    ds.ReferringPhysicianName = ""
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = image_number
    ds.InstitutionName = site.institution
    ds.Manufacturer = scanner.manufacturer
    ds.ManufacturerModelName = scanner.model
    ds.PixelSpacing = [scanner.pixel_spacing_mm, scanner.pixel_spacing_mm]
    ds.RescaleSlope = scanner.rescale_slope
    ds.RescaleIntercept = scanner.rescale_intercept
    ds.WindowCenter = scanner.window_center
    ds.WindowWidth = scanner.window_width
    return ds


def _write_film(site_dir: Path, site: Site, patient: Patient, image_number: int, seed: int, rng) -> dict:
    """Write one Part-10 file and return its labels.csv row."""
    ds = _dicom_dataset(site, patient, image_number, seed, rng)
    ds.set_pixel_data(
        _stored_pixels(rng, patient.film, site.scanner), "MONOCHROME2", _BITS_STORED, generate_instance_uid=False
    )
    relative = f"dicom/{patient.patient_id}/{image_number}.dcm"
    (site_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(site_dir / relative, enforce_file_format=True)
    return {
        "SOPInstanceUID": ds.SOPInstanceUID,
        "path": relative,
        "PatientID": patient.patient_id,
        "label": patient.label,
    }


def _write_site(out_dir: Path, site: Site, image_size: int, seed: int) -> tuple[list[dict], dict]:
    """Write one site's films, labels.csv, FHIR export and notes; return its label rows and
    the summary of its other modalities."""
    rng = _site_rng(seed, site.index, "films")
    site_dir = out_dir / site.name
    patients = _make_patients(rng, site, image_size)
    rows = [
        _write_film(site_dir, site, patient, image_number, seed, rng)
        for patient in patients
        for image_number in range(1, patient.num_images + 1)
    ]
    _write_labels(site_dir / "labels.csv", rows)
    missing = _missing(_site_rng(seed, site.index, "missing"), patients)
    style = site_style(site.index)
    notes = make_notes(_site_rng(seed, site.index, "notes"), patients, style, INDEX_DATE, skip=missing["notes"])
    write_notes(site_dir / "notes", notes)
    fhir_rng = _site_rng(seed, site.index, "fhir")
    fhir = write_fhir(site_dir / "fhir", fhir_rng, patients, site.institution, notes, missing["observations"])
    return rows, {"fhir": fhir, "notes": {"num_notes": len(notes), "style": style}, "missing": missing}


def _missing(rng: np.random.Generator, patients: list[Patient]) -> dict[str, list[str]]:
    """PatientIDs without a note and without Observations: about 5% each, at least one."""
    count = max(1, round(_MISSING_FRACTION * len(patients)))
    ids = [patient.patient_id for patient in patients]
    return {name: sorted(str(i) for i in rng.choice(ids, size=count, replace=False)) for name in MISSING_MODALITIES}


def _write_labels(path: Path, rows: list[dict], columns: tuple[str, ...] = _LABEL_COLUMNS) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _site_summary(site: Site, rows: list[dict], modalities: dict) -> dict:
    positives = sum(row["label"] for row in rows)
    patient_labels = {row["PatientID"]: row["label"] for row in rows}
    return {
        "name": site.name,
        "institution": site.institution,
        "num_images": len(rows),
        "num_patients": len(patient_labels),
        "num_positive": positives,
        "num_positive_patients": sum(patient_labels.values()),
        "prevalence": _rounded(positives / len(rows)),
        "target_prevalence": site.prevalence,
        "scanner": asdict(site.scanner),
        "lesions": asdict(site.lesions),
        **modalities,
    }


def _fhir_summary() -> dict:
    return {
        "version": "R4B",
        "index_date": INDEX_DATE.isoformat(),
        "label_condition": LABEL_CONDITION,
        "observations": [{"system": LOINC, "code": lab.code, "display": lab.display, "unit": lab.unit} for lab in LABS],
        "distractor_conditions": [{"system": SNOMED, "code": code, "display": name} for code, name, _ in DISTRACTORS],
    }


def write_synthetic_dicom(
    out_dir, *, num_sites: int = 3, images_per_site: int = 240, image_size: int = 64, seed: int = 0
) -> Path:
    """Write per site `site-N/dicom/<PatientID>/<n>.dcm` with `site-N/labels.csv`, a FHIR R4B export
    `site-N/fhir/<ResourceType>.ndjson` and notes `site-N/notes/<PatientID>.txt` with
    `site-N/notes/labels.csv`, all for the same patients; then `out_dir/dataset.json`, and
    `out_dir/labels.csv`: every site's image rows with paths from `out_dir` and a `site` column,
    for partitioning the pooled data set."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sites = [_make_site(index, images_per_site, image_size, seed) for index in range(1, num_sites + 1)]
    written = {site.name: _write_site(out_dir, site, image_size, seed) for site in sites}
    rows = {name: site_rows for name, (site_rows, _) in written.items()}
    pooled = [{**row, "path": f"{name}/{row['path']}", "site": name} for name, site_rows in rows.items() for row in site_rows]
    _write_labels(out_dir / "labels.csv", pooled, (*_LABEL_COLUMNS, "site"))
    summary = {
        "generator_version": GENERATOR_VERSION,
        "parameters": _parameters(num_sites, images_per_site, image_size, seed),
        "modalities": MODALITIES,
        "fhir": _fhir_summary(),
        "missing_modalities": MISSING_MODALITIES,
        "sites": [_site_summary(site, *written[site.name]) for site in sites],
    }
    (out_dir / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out_dir


def _parameters(num_sites: int, images_per_site: int, image_size: int, seed: int) -> dict:
    return {"num_sites": num_sites, "images_per_site": images_per_site, "image_size": image_size, "seed": seed}


def cache_key(*, num_sites: int = 3, images_per_site: int = 240, image_size: int = 64, seed: int = 0) -> str:
    """Short hex digest of the generator parameters and version."""
    identity = {"generator_version": GENERATOR_VERSION, **_parameters(num_sites, images_per_site, image_size, seed)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def ensure_synthetic_dicom(
    cache_dir, *, num_sites: int = 3, images_per_site: int = 240, image_size: int = 64, seed: int = 0
) -> Path:
    """Return `cache_dir/synthetic_dicom/<key>`, generating it first unless already complete."""
    params = _parameters(num_sites, images_per_site, image_size, seed)
    target = Path(cache_dir) / "synthetic_dicom" / cache_key(**params)
    if (target / _COMPLETE_MARKER).exists():
        return target
    log.info("generating synthetic DICOM data into %s", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write_synthetic_dicom(staging, **params)
        (staging / _COMPLETE_MARKER).write_text(f"{GENERATOR_VERSION}\n")
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _publish(staging: Path, target: Path) -> None:
    """Atomically rename `staging` to `target`; a complete target from a concurrent run wins."""
    if target.exists() and not (target / _COMPLETE_MARKER).exists():
        shutil.rmtree(target)
    try:
        staging.rename(target)
    except OSError:
        if not (target / _COMPLETE_MARKER).exists():
            raise
