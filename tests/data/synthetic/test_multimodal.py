"""The synthetic generator's FHIR export and notes describe the same patients as its DICOM files,
with one latent label behind every modality."""

from __future__ import annotations

import base64
import csv
import datetime
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fhir.resources.R4B import get_fhir_model_class

from flip.data.synthetic.dataset import write_synthetic_dicom

SMALL = {"num_sites": 3, "images_per_site": 60, "image_size": 16, "seed": 0}
RESOURCE_TYPES = ["Condition", "DocumentReference", "Observation", "Patient"]
LOINC, SNOMED, UCUM = "http://loinc.org", "http://snomed.info/sct", "http://unitsofmeasure.org"
LABS = {"1988-5": "mg/L", "6690-2": "10*3/uL"}
PNEUMONIA = "233604007"
LABEL_1_CUES = ["consolidation", "productive cough", "crackles", "pneumonia"]
LABEL_0_CUES = ["clear lung fields", "no acute findings", "chest clear to auscultation"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_synthetic_dicom(tmp_path_factory.mktemp("multimodal"), **SMALL)


@pytest.fixture(scope="module")
def summary(root) -> dict:
    return json.loads((root / "dataset.json").read_text())


def sites(root: Path) -> list[Path]:
    return sorted(root.glob("site-*"))


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def dicom_labels(site_dir: Path) -> dict[str, int]:
    return {row["PatientID"]: int(row["label"]) for row in read_csv(site_dir / "labels.csv")}


def resources(site_dir: Path, resource_type: str) -> list[dict]:
    return [json.loads(line) for line in (site_dir / "fhir" / f"{resource_type}.ndjson").read_text().splitlines()]


def patient_of(resource: dict) -> str:
    reference = resource["subject"]["reference"]
    assert reference.startswith("Patient/")
    return reference.removeprefix("Patient/")


def site_summary(summary: dict, site_dir: Path) -> dict:
    return next(site for site in summary["sites"] if site["name"] == site_dir.name)


def test_each_site_holds_dicom_fhir_and_notes(root):
    for site_dir in sites(root):
        assert sorted(p.name for p in site_dir.iterdir()) == ["dicom", "fhir", "labels.csv", "notes"]
        assert sorted(p.name for p in (site_dir / "fhir").iterdir()) == [f"{name}.ndjson" for name in RESOURCE_TYPES]
        assert all(p.suffix in (".txt", ".csv") for p in (site_dir / "notes").iterdir())


def test_every_fhir_line_is_valid_r4b_and_round_trips(root):
    for site_dir in sites(root):
        for resource_type in RESOURCE_TYPES:
            lines = (site_dir / "fhir" / f"{resource_type}.ndjson").read_text(encoding="utf-8").splitlines()
            assert lines, f"{site_dir.name}: empty {resource_type}.ndjson"
            ids = set()
            for line in lines:
                model_class = get_fhir_model_class(json.loads(line)["resourceType"])
                assert model_class.__name__ == resource_type
                model = model_class.model_validate_json(line)
                assert model.model_dump_json() == line
                assert model_class.model_validate_json(model.model_dump_json()).model_dump() == model.model_dump()
                ids.add(model.id)
            assert len(ids) == len(lines), f"{site_dir.name}: duplicate {resource_type} ids"


def test_fhir_patients_are_the_dicom_patients(root):
    for site_dir in sites(root):
        patients = {p["id"]: p for p in resources(site_dir, "Patient")}
        assert set(patients) == set(dicom_labels(site_dir))
        for path in sorted(site_dir.glob("dicom/*/1.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            patient = patients[ds.PatientID]
            assert patient["gender"] == {"F": "female", "M": "male"}[ds.PatientSex]
            assert patient["birthDate"].replace("-", "") == ds.PatientBirthDate
            assert patient["managingOrganization"]["display"] == ds.InstitutionName
            assert patient["identifier"][0]["value"] == ds.PatientID


def test_references_point_at_patients_of_the_site(root):
    for site_dir in sites(root):
        patients = {p["id"] for p in resources(site_dir, "Patient")}
        for resource_type in ("Observation", "Condition", "DocumentReference"):
            assert {patient_of(r) for r in resources(site_dir, resource_type)} <= patients


def test_observations_are_crp_and_leukocytes_in_the_year_before_the_index_date(root, summary):
    index_date = datetime.date.fromisoformat(summary["fhir"]["index_date"])
    assert index_date == datetime.date(2024, 1, 1)
    for site_dir in sites(root):
        counts = defaultdict(lambda: defaultdict(int))
        for observation in resources(site_dir, "Observation"):
            (coding,) = observation["code"]["coding"]
            assert coding["system"] == LOINC and coding["code"] in LABS
            quantity = observation["valueQuantity"]
            assert (quantity["unit"], quantity["code"], quantity["system"]) == (LABS[coding["code"]],) * 2 + (UCUM,)
            assert quantity["value"] > 0 and observation["status"] == "final"
            when = datetime.datetime.fromisoformat(observation["effectiveDateTime"]).date()
            assert index_date - datetime.timedelta(days=366) <= when < index_date
            counts[patient_of(observation)][coding["code"]] += 1
        missing = set(site_summary(summary, site_dir)["missing"]["observations"])
        assert set(counts) == set(dicom_labels(site_dir)) - missing
        assert all(2 <= n <= 4 for per_lab in counts.values() for n in per_lab.values())
        assert all(set(per_lab) == set(LABS) for per_lab in counts.values())


def test_pneumonia_condition_is_the_dicom_label(root, summary):
    distractors = {c["code"] for c in summary["fhir"]["distractor_conditions"]}
    assert {"44054006", "38341003"} <= distractors and PNEUMONIA not in distractors
    assert summary["fhir"]["label_condition"] == {"system": SNOMED, "code": PNEUMONIA, "display": "Pneumonia"}
    seen = set()
    for site_dir in sites(root):
        pneumonia = set()
        for condition in resources(site_dir, "Condition"):
            (coding,) = condition["code"]["coding"]
            assert coding["system"] == SNOMED and coding["code"] in distractors | {PNEUMONIA}
            seen.add(coding["code"])
            if coding["code"] == PNEUMONIA:
                pneumonia.add(patient_of(condition))
        labels = dicom_labels(site_dir)
        assert pneumonia == {patient for patient, label in labels.items() if label == 1}
    assert len(seen - {PNEUMONIA}) >= 2, "distractor conditions should occur"


def test_labs_are_higher_for_label_1_patients_at_every_site(root):
    pooled = {0: [], 1: []}
    for site_dir in sites(root):
        labels = dicom_labels(site_dir)
        values = defaultdict(lambda: {0: [], 1: []})
        for observation in resources(site_dir, "Observation"):
            code = observation["code"]["coding"][0]["code"]
            values[code][labels[patient_of(observation)]].append(observation["valueQuantity"]["value"])
        crp, wbc = values["1988-5"], values["6690-2"]
        assert np.mean(crp[1]) > np.mean(crp[0]) and np.mean(wbc[1]) > np.mean(wbc[0])
        assert min(crp[1]) < max(crp[0]), "CRP alone should not separate the labels perfectly"
        for label in (0, 1):
            pooled[label] += crp[label]
    assert np.mean(pooled[1]) > 1.5 * np.mean(pooled[0])
    assert np.mean(np.log(pooled[1])) > np.mean(np.log(pooled[0])) + 0.6  # CRP is log-normal


def test_sites_differ_in_assay_and_note_style(summary):
    assays = [site["fhir"]["assay"] for site in summary["sites"]]
    assert len({assay["crp"] for assay in assays}) == len({assay["wbc"] for assay in assays}) == len(assays)
    assert all(0.8 <= assay["crp"] <= 1.25 and abs(assay["wbc"]) <= 0.8 for assay in assays)
    assert [site["notes"]["style"] for site in summary["sites"]] == ["sections", "prose", "terse"]


def test_document_references_carry_the_notes(root, summary):
    for site_dir in sites(root):
        notes = {row["patient"]: row for row in read_csv(site_dir / "notes" / "labels.csv")}
        documents = resources(site_dir, "DocumentReference")
        assert sorted(patient_of(d) for d in documents) == sorted(notes)
        institution = site_summary(summary, site_dir)["institution"]
        for document in documents:
            row = notes[patient_of(document)]
            (content,) = document["content"]
            attachment = content["attachment"]
            assert document["status"] == "current" and document["id"] == row["note_id"]
            assert attachment["contentType"] == "text/plain"
            data = base64.b64decode(attachment["data"], validate=True)
            assert data == (site_dir / "notes" / row["path"]).read_bytes()
            assert attachment["size"] == len(data) and document["custodian"]["display"] == institution


def test_notes_are_utf8_and_labels_csv_matches_them(root):
    for site_dir in sites(root):
        labels = dicom_labels(site_dir)
        path = site_dir / "notes" / "labels.csv"
        assert path.read_text(encoding="utf-8").splitlines()[0] == "note_id,path,patient,label"
        rows = read_csv(path)
        assert {row["path"] for row in rows} == {p.name for p in (site_dir / "notes").glob("*.txt")}
        assert len({row["note_id"] for row in rows}) == len(rows)
        for row in rows:
            text = (site_dir / "notes" / row["path"]).read_bytes().decode("utf-8")
            assert text.strip() and text.endswith("\n")
            assert row["path"] == f"{row['patient']}.txt"
            assert int(row["label"]) == labels[row["patient"]]
        assert any("°C" in (site_dir / "notes" / row["path"]).read_text(encoding="utf-8") for row in rows)


def test_note_wording_carries_the_label_with_noise(root):
    texts = {0: [], 1: []}
    for site_dir in sites(root):
        for row in read_csv(site_dir / "notes" / "labels.csv"):
            texts[int(row["label"])].append((site_dir / "notes" / row["path"]).read_text(encoding="utf-8").lower())

    def rate(cues: list[str], label: int) -> float:
        return float(np.mean([any(cue in text for cue in cues) for text in texts[label]]))

    assert rate(LABEL_1_CUES, 1) > rate(LABEL_1_CUES, 0) + 0.4
    assert rate(LABEL_0_CUES, 0) > rate(LABEL_0_CUES, 1) + 0.3
    for cue in LABEL_1_CUES + LABEL_0_CUES:  # each cue shows up with both labels: learnable, not trivial
        assert 0 < rate([cue], 0) < 1 and 0 < rate([cue], 1) < 1, cue


def test_missing_modalities_are_documented_and_real(root, summary):
    assert set(summary["missing_modalities"]) == {"notes", "observations"}
    for site_dir in sites(root):
        missing = site_summary(summary, site_dir)["missing"]
        patients = set(dicom_labels(site_dir))
        expected = max(1, round(0.05 * len(patients)))
        assert len(missing["notes"]) == len(missing["observations"]) == expected
        assert set(missing["notes"]) <= patients and set(missing["observations"]) <= patients
        for patient in missing["notes"]:
            assert not (site_dir / "notes" / f"{patient}.txt").exists()
            assert (site_dir / "dicom" / patient).is_dir()
        noted = {row["patient"] for row in read_csv(site_dir / "notes" / "labels.csv")}
        assert noted == patients - set(missing["notes"])
        assert {patient_of(o) for o in resources(site_dir, "Observation")} == patients - set(missing["observations"])


def test_dataset_json_counts_every_modality(root, summary):
    assert set(summary["modalities"]) == {"dicom", "fhir", "notes"}
    assert summary["fhir"]["version"] == "R4B"
    assert [lab["unit"] for lab in summary["fhir"]["observations"]] == ["mg/L", "10*3/uL"]
    for site_dir in sites(root):
        site = site_summary(summary, site_dir)
        assert site["fhir"]["resources"] == {name: len(resources(site_dir, name)) for name in RESOURCE_TYPES}
        assert site["notes"]["num_notes"] == len(list((site_dir / "notes").glob("*.txt")))
        labels = dicom_labels(site_dir)
        assert site["num_patients"] == len(labels) and site["num_positive_patients"] == sum(labels.values())
        prevalence = site["num_positive_patients"] / site["num_patients"]
        assert not math.isclose(prevalence, 0.0) and not math.isclose(prevalence, 1.0)
