"""Schema of `data=fhir` (a FHIR export plus a feature spec), and its rules.

`fhir_problems` checks what spans keys of a `data.fhir` node (the data module runs the same
checks when it is built from Python).
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from omegaconf import MISSING, DictConfig

from flip.data.schema import SiteDataConfig

FHIR_VERSIONS = ("R4", "R4B", "R5")
AGGREGATES = ("latest", "mean", "min", "max", "count")
MISSING_POLICIES = ("mean", "zero", "drop")
LABEL_RESOURCES = ("Condition", "MedicationRequest", "Procedure", "Observation")
GENDERS = ("female", "male", "other", "unknown")
CODE_SET_KINDS = ("conditions", "medications", "procedures")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class ObservationFeatureConfig:
    """One column from Observations with one code, aggregated over the window ending at index_date."""

    name: str = MISSING
    # null matches the code in any code system.
    system: Optional[str] = "http://loinc.org"
    code: str = MISSING
    # Expected valueQuantity unit (its `unit` or UCUM `code`); others are skipped. null: no check.
    unit: Optional[str] = None
    aggregate: str = "latest"  # latest, mean, min, max or count
    window_days: int = 365


@dataclass
class CodeSetFeatureConfig:
    """A 0/1 column: the patient has a resource with one of `codes` on or before index_date."""

    name: str = MISSING
    system: Optional[str] = "http://snomed.info/sct"
    codes: List[str] = MISSING
    # Only the last window_days days up to index_date count; null: any time before.
    window_days: Optional[int] = None


@dataclass
class FhirFeaturesConfig:
    """Columns of the feature rows. Lists hold mappings: flip's validator cannot assign mappings
    to a list of dataclasses, so `fhir_problems` checks each entry against its dataclass."""

    age: bool = True  # years at index_date
    gender: bool = True  # one-hot female, male, other, unknown
    observations: List[Dict[str, Any]] = field(default_factory=list)  # ObservationFeatureConfig
    conditions: List[Dict[str, Any]] = field(default_factory=list)  # CodeSetFeatureConfig
    medications: List[Dict[str, Any]] = field(default_factory=list)  # MedicationRequest codes
    procedures: List[Dict[str, Any]] = field(default_factory=list)


@dataclass
class FhirLabelConfig:
    """Label 1 when the patient has a `resource` with one of `codes` (at any time), else 0."""

    resource: str = "Condition"  # Condition, MedicationRequest, Procedure or Observation
    system: Optional[str] = "http://snomed.info/sct"
    codes: List[str] = MISSING


@dataclass
class FhirDataConfig(SiteDataConfig):
    _target_: str = "flip.data.fhir.datamodule.FhirDataModule"
    # Folder of the export inside the site folder; "." is the site folder itself.
    fhir_dir: str = "."
    # R4 is read with the R4B models (fhir.resources ships no separate R4 package).
    fhir_version: str = "R4B"
    # YYYY-MM-DD: ages and observation windows are relative to it.
    index_date: str = MISSING
    features: FhirFeaturesConfig = field(default_factory=FhirFeaturesConfig)
    label: Optional[FhirLabelConfig] = None
    # A missing observation value (or age): mean (site mean plus a <name>_missing column), zero, drop.
    missing: str = "mean"
    # Z-score age and observation columns with the train split's mean and std.
    standardize: bool = True
    # Keep the validated records of each export file in flip's cache, keyed by its content.
    cache: bool = True
    # Processes that validate the export; null: as many as torch has threads.
    parse_processes: Optional[int] = None
    # Without a `label` spec the export is unlabelled: refuse (true) or read it for inspection.
    require_labels: bool = True


SCHEMAS: Dict[str, type] = {"data/fhir": FhirDataConfig}


# ---------------------------------------------------------------- rules


def fhir_problems(data: Mapping) -> list[str]:
    """Cross-key problems of a `data=fhir` node (a DictConfig or a plain mapping), one line each."""
    problems = _choice(data, "fhir_version", FHIR_VERSIONS) + _choice(data, "missing", MISSING_POLICIES)
    problems += _index_date(data.get("index_date"))
    features = data.get("features") or {}
    problems += _observations(features.get("observations") or [])
    for kind in CODE_SET_KINDS:
        problems += _code_sets(kind, features.get(kind) or [])
    problems += _label(data.get("label"))
    problems += _unique_names(features, data.get("missing", "mean"))
    processes = data.get("parse_processes")
    if processes is not None and processes < 1:
        problems.append(f"data.parse_processes: must be at least 1 or null, got {processes}")
    return problems


def _choice(node: Mapping, key: str, choices: tuple[str, ...], path: str = "data") -> list[str]:
    value = node.get(key)
    if value not in choices:
        return [f"{path}.{key}: must be one of {', '.join(choices)}, got {value!r}"]
    return []


def _index_date(value: Any) -> list[str]:
    if value in (None, MISSING):
        return []  # the schema check reports a missing value
    try:
        datetime.date.fromisoformat(str(value))
    except ValueError:
        return [f"data.index_date: must be a date YYYY-MM-DD, got {value!r}"]
    return []


def _observations(entries: list) -> list[str]:
    problems = []
    for index, entry in enumerate(entries):
        path = f"data.features.observations[{index}]"
        if not hasattr(entry, "get"):
            problems.append(f"{path}: expected a mapping, got {entry!r}")
            continue
        problems += _unknown_keys(entry, ObservationFeatureConfig, path) + _required(entry, path, ("name", "code"))
        problems += _choice(entry, "aggregate", AGGREGATES, path) if "aggregate" in entry else []
        problems += _window(entry, path, required=True)
    return problems


def _code_sets(kind: str, entries: list) -> list[str]:
    problems = []
    for index, entry in enumerate(entries):
        path = f"data.features.{kind}[{index}]"
        if not hasattr(entry, "get"):
            problems.append(f"{path}: expected a mapping, got {entry!r}")
            continue
        problems += _unknown_keys(entry, CodeSetFeatureConfig, path) + _required(entry, path, ("name",))
        problems += _codes(entry, path) + _window(entry, path, required=False)
    return problems


def _label(label: Optional[Mapping]) -> list[str]:
    if label is None:
        return []
    return _choice(label, "resource", LABEL_RESOURCES, "data.label") + _codes(label, "data.label")


def _unknown_keys(entry: Mapping, schema: type, path: str) -> list[str]:
    known = [f.name for f in dataclasses.fields(schema)]
    problems = []
    for key in entry.keys():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
            problems.append(f"{path}.{key}: unknown key{hint}")
    return problems


def _required(entry: Mapping, path: str, keys: tuple[str, ...]) -> list[str]:
    problems = []
    for key in keys:
        value = entry.get(key)
        if value in (None, "", MISSING):
            problems.append(f"{path}.{key}: missing value")
        elif key == "name" and not _NAME.fullmatch(str(value)):
            problems.append(f"{path}.name: must be a column name (letters, digits, _), got {value!r}")
    return problems


def _codes(entry: Mapping, path: str) -> list[str]:
    codes = entry.get("codes")
    if codes in (None, MISSING) or isinstance(codes, str) or len(codes) == 0:
        return [f"{path}.codes: must be a non-empty list of codes, got {codes!r}"]
    return []


def _window(entry: Mapping, path: str, required: bool) -> list[str]:
    days = entry.get("window_days", 365 if required else None)
    if days is None and not required:
        return []
    if not isinstance(days, int) or isinstance(days, bool) or days <= 0:
        return [f"{path}.window_days: must be a positive number of days, got {days!r}"]
    return []


def _unique_names(features: Mapping, missing: str) -> list[str]:
    """Every column name once: two features named alike would silently overwrite each other."""
    seen, problems = {"age", "age_missing", *(f"gender_{g}" for g in GENDERS)}, []
    for kind in ("observations", *CODE_SET_KINDS):
        for index, entry in enumerate(features.get(kind) or []):
            name = entry.get("name")
            columns = [name, f"{name}_missing"] if kind == "observations" and missing == "mean" else [name]
            clash = [column for column in columns if column in seen]
            if clash and name not in (None, MISSING):
                problems.append(f"data.features.{kind}[{index}].name: column {clash[0]!r} is already used")
            seen.update(columns)
    return problems


def rules(cfg: DictConfig) -> list[str]:
    """`fhir_problems` of the data node, when the data is a FHIR export."""
    return fhir_problems(cfg.data) if cfg.data.get("_target_") == FhirDataConfig._target_ else []
