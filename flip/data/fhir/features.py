"""The feature spec of `data=fhir` turned into one row of numbers per patient (no torch here).

Input is what `flip.data.fhir.datamodule` extracts from validated resources: patient records and event
records (Observation, Condition, MedicationRequest, Procedure). The column names depend on the
spec alone (`feature_names`), so every site, and the server that builds the model before any
data is seen, agree on the width (`num_features`).
"""

from __future__ import annotations

import datetime
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

from flip.data.fhir.schema import (
    CODE_SET_KINDS,
    GENDERS,
    CodeSetFeatureConfig,
    FhirFeaturesConfig,
    FhirLabelConfig,
    ObservationFeatureConfig,
)

DAY_SECONDS = 86400.0
YEAR_DAYS = 365.25
RESOURCE_OF_KIND = {"conditions": "Condition", "medications": "MedicationRequest", "procedures": "Procedure"}


class PatientRecord(NamedTuple):
    loc: str  # file:line (or file#entry[i]) of the Patient resource
    id: str
    full_url: Optional[str]  # a Bundle entry's fullUrl, for urn:uuid references
    gender: Optional[str]
    birth_date: Optional[str]  # YYYY-MM-DD (partial dates filled with the first day)
    group: str  # a Patient field, for by_site partitions from an attribute
    sha256: str


class EventRecord(NamedTuple):
    type: str  # resourceType
    loc: str
    subject: str  # the subject reference as written
    codes: list  # [[system, code], ...]
    time: Optional[float]  # UTC epoch seconds
    value: Optional[float]  # Observation.valueQuantity.value
    unit: Optional[str]
    unit_code: Optional[str]
    sha256: str


@dataclass(frozen=True)
class Spec:
    features: FhirFeaturesConfig
    label: Optional[FhirLabelConfig]
    missing: str
    index_date: datetime.date


@dataclass
class Row:
    patient: PatientRecord
    values: list[float]
    label: Optional[int]
    resources: list[str]  # sha256 of the patient's resources


# ---------------------------------------------------------------- the spec


def features_from(features: Optional[Mapping]) -> FhirFeaturesConfig:
    """The feature spec as schema dataclasses, defaults filled in (from YAML or Python mappings)."""
    features = dict(features or {})
    observations = [_observation(o) for o in features.pop("observations", None) or []]
    code_sets = {kind: [_code_set(c) for c in features.pop(kind, None) or []] for kind in CODE_SET_KINDS}
    return FhirFeaturesConfig(**features, observations=observations, **code_sets)


def label_from(label: Optional[Mapping]) -> Optional[FhirLabelConfig]:
    if label is None:
        return None
    label = dict(label)
    return FhirLabelConfig(**{**label, "codes": [str(c) for c in label.get("codes") or []]})


def _observation(entry: Mapping) -> ObservationFeatureConfig:
    entry = dict(entry)
    return ObservationFeatureConfig(**{**entry, "code": str(entry.get("code"))})


def _code_set(entry: Mapping) -> CodeSetFeatureConfig:
    entry = dict(entry)
    return CodeSetFeatureConfig(**{**entry, "codes": [str(c) for c in entry.get("codes") or []]})


def feature_names(features: FhirFeaturesConfig, missing: str) -> list[str]:
    """Column names in order: age, gender one-hot, observations, conditions, medications, procedures."""
    names = ["age", *(["age_missing"] if missing == "mean" else [])] if features.age else []
    names += [f"gender_{g}" for g in GENDERS] if features.gender else []
    for o in features.observations:
        names += [o.name, *([f"{o.name}_missing"] if _can_be_missing(o) and missing == "mean" else [])]
    return names + [c.name for kind in CODE_SET_KINDS for c in getattr(features, kind)]


def continuous_columns(features: FhirFeaturesConfig, missing: str) -> list[int]:
    """Indices of the columns worth standardising: age and observation values (not 0/1 columns)."""
    names = feature_names(features, missing)
    wanted = {o.name for o in features.observations} | ({"age"} if features.age else set())
    return [index for index, name in enumerate(names) if name in wanted]


def num_features(data_cfg: Mapping) -> int:
    """The input width a `data=fhir` config gives, known without reading any data."""
    return len(feature_names(features_from(data_cfg.get("features")), data_cfg.get("missing", "mean")))


def _can_be_missing(o: ObservationFeatureConfig) -> bool:
    return o.aggregate != "count"


# ---------------------------------------------------------------- records to rows


def patient_rows(
    patients: list[PatientRecord], events: list[EventRecord], spec: Spec, skip: Callable[[str, str], None]
) -> list[Row]:
    """One row per usable patient, sorted by id; unusable records are reported (once) through `skip`."""
    skip = _once(skip)
    patients = _unique_patients(patients, skip)
    by_patient = _events_by_patient(events, patients, skip)
    end = _epoch(spec.index_date + datetime.timedelta(days=1))
    rows = []
    for pid in sorted(patients):
        patient, own = patients[pid], by_patient.get(pid, [])
        values = [*_demographics(patient, spec), *_observation_values(own, spec.features, end, skip)]
        values += _code_set_values(own, spec.features, end)
        label = _label(own, spec.label) if spec.label is not None else None
        rows.append(Row(patient, values, label, [patient.sha256, *(e.sha256 for e in own)]))
    return _apply_missing(rows, spec, skip)


def _once(skip: Callable[[str, str], None]) -> Callable[[str, str], None]:
    """`skip` that reports each (place, reason) once, however many features look at it."""
    seen: set[tuple[str, str]] = set()

    def report(loc: str, reason: str) -> None:
        if (loc, reason) not in seen:
            seen.add((loc, reason))
            skip(loc, reason)

    return report


def _unique_patients(patients: list[PatientRecord], skip: Callable[[str, str], None]) -> dict[str, PatientRecord]:
    unique: dict[str, PatientRecord] = {}
    for patient in patients:
        if patient.id in unique:
            skip(patient.loc, f"Patient/{patient.id} appears again (first at {unique[patient.id].loc})")
        else:
            unique[patient.id] = patient
    return unique


def _events_by_patient(
    events: list[EventRecord], patients: dict[str, PatientRecord], skip: Callable[[str, str], None]
) -> dict[str, list[EventRecord]]:
    urls = {p.full_url: pid for pid, p in patients.items() if p.full_url}
    grouped = defaultdict(list)
    for event in events:
        pid = _patient_of(event.subject, urls)
        if pid in patients:
            grouped[pid].append(event)
        else:
            skip(event.loc, f"{event.type} refers to {event.subject!r}, which is not a Patient in this export")
    return grouped


def _patient_of(reference: str, urls: dict[str, str]) -> Optional[str]:
    """The Patient id of a reference: Patient/<id>, an absolute .../Patient/<id>, or a Bundle fullUrl."""
    if reference in urls:
        return urls[reference]
    parts = reference.split("/_history/")[0].split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == "Patient" else None


def _demographics(patient: PatientRecord, spec: Spec) -> list[Optional[float]]:
    values: list[Optional[float]] = []
    if spec.features.age:
        values.append(_age(patient.birth_date, spec.index_date))
    if spec.features.gender:
        gender = patient.gender if patient.gender in GENDERS else "unknown"
        values += [float(gender == g) for g in GENDERS]
    return values


def _age(birth_date: Optional[str], index_date: datetime.date) -> Optional[float]:
    if birth_date is None:
        return None
    return (index_date - datetime.date.fromisoformat(birth_date)).days / YEAR_DAYS


def _observation_values(
    events: list[EventRecord], features: FhirFeaturesConfig, end: float, skip: Callable[[str, str], None]
) -> list[Optional[float]]:
    observations = [e for e in events if e.type == "Observation"]
    return [_aggregate(o, _window_values(observations, o, end, skip)) for o in features.observations]


def _window_values(
    events: list[EventRecord], feature: ObservationFeatureConfig, end: float, skip: Callable[[str, str], None]
) -> list[tuple[float, int, Optional[float]]]:
    """(time, order, value) of the matching Observations in the window; bad ones reported."""
    start, found = end - feature.window_days * DAY_SECONDS, []
    for order, event in enumerate(events):
        if not _matches(event.codes, feature.system, (feature.code,)):
            continue
        if event.time is None:
            skip(event.loc, f"Observation with code {feature.code} has no effective time")
        elif not start <= event.time < end:
            continue
        elif feature.unit is not None and feature.unit not in (event.unit, event.unit_code):
            skip(event.loc, f"Observation with code {feature.code} has unit {_unit_text(event)}, expected {feature.unit!r}")
        elif feature.aggregate == "count":
            found.append((event.time, order, None))
        elif event.value is None:
            skip(event.loc, f"Observation with code {feature.code} has no valueQuantity value")
        else:
            found.append((event.time, order, event.value))
    return found


def _unit_text(event: EventRecord) -> str:
    if event.unit_code and event.unit_code != event.unit:
        return f"{event.unit!r} (code {event.unit_code!r})"
    return repr(event.unit)


def _aggregate(feature: ObservationFeatureConfig, found: list[tuple[float, int, Optional[float]]]) -> Optional[float]:
    if feature.aggregate == "count":
        return float(len(found))
    if not found:
        return None
    values = [value for _, _, value in found]
    if feature.aggregate == "latest":
        return max(found, key=lambda f: (f[0], f[1]))[2]
    if feature.aggregate == "mean":
        return math.fsum(values) / len(values)
    return min(values) if feature.aggregate == "min" else max(values)


def _code_set_values(events: list[EventRecord], features: FhirFeaturesConfig, end: float) -> list[float]:
    values = []
    for kind in CODE_SET_KINDS:
        resource = RESOURCE_OF_KIND[kind]
        for feature in getattr(features, kind):
            start = end - feature.window_days * DAY_SECONDS if feature.window_days else -math.inf
            hit = any(
                e.type == resource and _matches(e.codes, feature.system, feature.codes)
                and (e.time is None or start <= e.time < end)
                for e in events
            )
            values.append(float(hit))
    return values


def _label(events: list[EventRecord], label: FhirLabelConfig) -> int:
    return int(any(e.type == label.resource and _matches(e.codes, label.system, label.codes) for e in events))


def _matches(codes: list, system: Optional[str], wanted: tuple | list) -> bool:
    for sys, code in codes:  # a loop, not any(...): called for every event and feature
        if code in wanted and (system is None or sys == system):
            return True
    return False


def _apply_missing(rows: list[Row], spec: Spec, skip: Callable[[str, str], None]) -> list[Row]:
    """Fill or drop missing values as `spec.missing` says; mean adds a 0/1 indicator after each column."""
    names = _value_names(spec.features)
    missing_at = [i for i, name in enumerate(names) if name is not None]
    if spec.missing == "drop":
        kept = []
        for row in rows:
            absent = [names[i] for i in missing_at if row.values[i] is None]
            if absent:
                skip(row.patient.loc, f"Patient/{row.patient.id} has no {', '.join(absent)} (missing: drop)")
            else:
                kept.append(row)
        return kept
    fill = _column_means(rows, missing_at) if spec.missing == "mean" else dict.fromkeys(missing_at, 0.0)
    for row in rows:
        row.values = _filled(row.values, missing_at, fill, with_indicator=spec.missing == "mean")
    return rows


def _value_names(features: FhirFeaturesConfig) -> list[Optional[str]]:
    """Per raw value (before indicators): the name of a value that can be missing, else None."""
    names: list[Optional[str]] = (["age"] if features.age else []) + ([None] * len(GENDERS) if features.gender else [])
    names += [o.name if _can_be_missing(o) else None for o in features.observations]
    return names + [None] * sum(len(getattr(features, kind)) for kind in CODE_SET_KINDS)


def _column_means(rows: list[Row], columns: list[int]) -> dict[int, float]:
    """The site mean of each column over the patients that have a value (0 when none has)."""
    means = {}
    for column in columns:
        present = [row.values[column] for row in rows if row.values[column] is not None]
        means[column] = math.fsum(present) / len(present) if present else 0.0
    return means


def _filled(values: list[Optional[float]], missing_at: list[int], fill: dict[int, float], with_indicator: bool) -> list[float]:
    out = []
    for index, value in enumerate(values):
        out.append(fill[index] if value is None else value)
        if with_indicator and index in fill:
            out.append(float(value is None))
    return out


# ---------------------------------------------------------------- times


def _epoch(day: datetime.date) -> float:
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc).timestamp()


def epoch_of(value: Any) -> Optional[float]:
    """UTC epoch seconds of a FHIR date/dateTime/instant (partial dates: their first day)."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=datetime.timezone.utc)
        return aware.timestamp()
    if isinstance(value, datetime.date):
        return _epoch(value)
    return _epoch(datetime.date.fromisoformat(iso_date(str(value))))


def iso_date(value: Any) -> Optional[str]:
    """YYYY-MM-DD of a FHIR date, partial dates (YYYY, YYYY-MM) filled with the first day."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value.date().isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    text = str(value)[:10]
    return {4: f"{text}-01-01", 7: f"{text}-01"}.get(len(text), text)
