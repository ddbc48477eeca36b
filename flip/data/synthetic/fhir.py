"""A FHIR R4B Bulk Data style export (one NDJSON file per resource type) for the synthetic patients.

Every resource is built with the `fhir.resources.R4B` models, so each line is valid R4B.
The patient's latent label shifts the CRP and leukocyte values and decides the
pneumonia Condition; distractor Conditions are drawn independently of it.
"""

from __future__ import annotations

import base64
import datetime
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient as FhirPatient

INDEX_DATE = datetime.date(2024, 1, 1)
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
RESOURCE_TYPES = ("Patient", "Observation", "Condition", "DocumentReference")
LABEL_CONDITION = {"system": SNOMED, "code": "233604007", "display": "Pneumonia"}
DISTRACTORS = (  # (code, display, probability), independent of the label
    ("44054006", "Diabetes mellitus type 2", 0.12),
    ("38341003", "Hypertensive disorder", 0.25),
    ("195967001", "Asthma", 0.08),
    ("55822004", "Hyperlipidemia", 0.15),
)
_OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_CLINICAL_STATUS = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_VERIFICATION_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"


@dataclass(frozen=True)
class Lab:
    """A laboratory test: value = base + shift * label + patient and measurement noise.

    On a log scale the site's assay multiplies the value, otherwise it adds to it.
    """

    key: str
    code: str
    display: str
    unit: str
    log_scale: bool
    base: float
    shift: float
    patient_sd: float
    noise_sd: float


LABS = (
    Lab(
        "crp", "1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L",
        log_scale=True, base=math.log(4), shift=1.1, patient_sd=0.7, noise_sd=0.4,
    ),
    Lab(
        "wbc", "6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL",
        log_scale=False, base=7.0, shift=2.0, patient_sd=1.5, noise_sd=1.0,
    ),
)  # fmt: skip


def _concept(system: str, code: str, display: str | None = None) -> CodeableConcept:
    """A validated one-coding concept, shared by many resources (pydantic does not revalidate it)."""
    return CodeableConcept(coding=[{"system": system, "code": code, "display": display}])


_LABORATORY = _concept(_OBSERVATION_CATEGORY, "laboratory")
_LAB_CODES = {lab.key: _concept(LOINC, lab.code, lab.display) for lab in LABS}
_ACTIVE = _concept(_CLINICAL_STATUS, "active")
_CONFIRMED = _concept(_VERIFICATION_STATUS, "confirmed")


def site_assay(rng: np.random.Generator) -> dict[str, float]:
    """The site's assay offsets: a factor for log-scale labs, an offset for the others."""
    draws = {lab.key: rng.uniform(0.8, 1.25) if lab.log_scale else rng.uniform(-0.8, 0.8) for lab in LABS}
    return {key: round(float(value), 3) for key, value in draws.items()}


def write_fhir(fhir_dir: Path, rng: np.random.Generator, patients, institution: str, notes, no_observations) -> dict:
    """Write `fhir_dir/<ResourceType>.ndjson`; return the assay and the resource counts."""
    assay = site_assay(rng)
    resources = {name: [] for name in RESOURCE_TYPES}
    notes_by_patient = {note.patient_id: note for note in notes}
    for patient in patients:
        resources["Patient"].append(_patient(patient, institution))
        if patient.patient_id not in no_observations:
            resources["Observation"] += _observations(rng, patient, assay)
        resources["Condition"] += _conditions(rng, patient)
        if patient.patient_id in notes_by_patient:
            resources["DocumentReference"].append(_document(rng, notes_by_patient[patient.patient_id], institution))
    fhir_dir.mkdir(parents=True, exist_ok=True)
    for name, items in resources.items():
        (fhir_dir / f"{name}.ndjson").write_text("".join(item.model_dump_json() + "\n" for item in items), "utf-8")
    return {"assay": assay, "resources": {name: len(items) for name, items in resources.items()}}


def _reference(patient) -> dict:
    return {"reference": f"Patient/{patient.patient_id}"}


def _timestamp(rng: np.random.Generator, day: datetime.date) -> str:
    return f"{day.isoformat()}T{int(rng.integers(8, 18)):02d}:{int(rng.integers(0, 60)):02d}:00+00:00"


def _days_before_index(rng: np.random.Generator, low: int, high: int) -> datetime.date:
    """A day between `low` and `high` days (inclusive) before the index date."""
    return INDEX_DATE - datetime.timedelta(days=int(rng.integers(low, high + 1)))


def _patient(patient, institution: str) -> FhirPatient:
    """Demographics matching the DICOM header (PatientID, PatientSex, PatientBirthDate)."""
    born = patient.birth_date
    return FhirPatient(
        id=patient.patient_id,
        identifier=[{"system": "urn:flip:synthetic:patient-id", "value": patient.patient_id}],
        name=[{"family": "Synthetic", "given": [patient.patient_id]}],
        gender="female" if patient.sex == "F" else "male",
        birthDate=f"{born[:4]}-{born[4:6]}-{born[6:]}",
        managingOrganization={"display": institution},
    )


def _lab_value(rng: np.random.Generator, lab: Lab, label: int, patient_effect: float, assay: float) -> float:
    value = lab.base + lab.shift * label + lab.patient_sd * patient_effect + rng.normal(0.0, lab.noise_sd)
    return round(max(0.1, math.exp(value) * assay if lab.log_scale else value + assay), 1)


def _observations(rng: np.random.Generator, patient, assay: dict[str, float]) -> list[Observation]:
    """Two to four results of each lab, spread over the year before the index date."""
    observations = []
    for lab in LABS:
        effect = rng.normal()
        days = sorted((_days_before_index(rng, 1, 365) for _ in range(int(rng.integers(2, 5)))))
        for number, day in enumerate(days, start=1):
            value = _lab_value(rng, lab, patient.label, effect, assay[lab.key])
            resource_id = f"{patient.patient_id}-{lab.key}-{number}"
            observations.append(_observation(resource_id, patient, lab, value, _timestamp(rng, day)))
    return observations


def _observation(resource_id: str, patient, lab: Lab, value: float, when: str) -> Observation:
    return Observation(
        id=resource_id,
        status="final",
        category=[_LABORATORY],
        code=_LAB_CODES[lab.key],
        subject=_reference(patient),
        effectiveDateTime=when,
        valueQuantity={"value": value, "unit": lab.unit, "system": UCUM, "code": lab.unit},
    )


def _conditions(rng: np.random.Generator, patient) -> list[Condition]:
    """Pneumonia (the label) for label-1 patients, plus random distractors for anyone."""
    conditions = []
    if patient.label:
        onset = _days_before_index(rng, 1, 30)
        conditions.append(_condition(f"{patient.patient_id}-pneumonia", patient, LABEL_CONDITION, onset))
    for code, display, probability in DISTRACTORS:
        if rng.random() < probability:
            onset = _days_before_index(rng, 365, 3650)
            coding = {"system": SNOMED, "code": code, "display": display}
            conditions.append(_condition(f"{patient.patient_id}-{code}", patient, coding, onset))
    return conditions


def _condition(resource_id: str, patient, coding: dict, onset: datetime.date) -> Condition:
    return Condition(
        id=resource_id,
        clinicalStatus=_ACTIVE,
        verificationStatus=_CONFIRMED,
        code={"coding": [coding], "text": coding["display"]},
        subject=_reference(patient),
        onsetDateTime=onset.isoformat(),
    )


def _document(rng: np.random.Generator, note, institution: str) -> DocumentReference:
    """The note as an inline base64 text/plain attachment."""
    data = note.text.encode("utf-8")
    encoded = base64.b64encode(data).decode()
    attachment = {"contentType": "text/plain", "language": "en", "data": encoded, "size": len(data)}
    return DocumentReference(
        id=note.note_id,
        status="current",
        docStatus="final",
        type={"coding": [{"system": LOINC, "code": "11506-3", "display": "Progress note"}]},
        subject={"reference": f"Patient/{note.patient_id}"},
        date=_timestamp(rng, _days_before_index(rng, 0, 14)),
        custodian={"display": institution},
        content=[{"attachment": attachment}],
    )
