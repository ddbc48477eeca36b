"""fhir.resources validation of one FHIR resource, and the records flip keeps of it.

Every resource flip reads is validated with fhir.resources for the declared version (R4 is read
with the R4B models: fhir.resources ships no separate R4 package); one that does not validate is
refused with its place and reason, and when it validates under another version the reason says
which. Nested elements that recur across resources (a code, a category, a subject reference) are
validated once per distinct JSON value and the model is reused (`validate_reusing`); every
resource's own fields and validators still run, and whatever that path does not accept is
validated again whole (`parse_entry_plainly`), so what is accepted, and every reason, stays as
fhir.resources decides.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import re
import types
import typing
from typing import Any, NamedTuple, Optional

from fhir_core.types import FhirBase, FhirElementOrResourceBase
from pydantic import ValidationError
from pydantic_core import from_json, to_json

from flip.data.fhir.features import (
    EventRecord,
    PatientRecord,
    epoch_of,
    iso_date,
)

log = logging.getLogger("flip.data")

PACKAGES = {"R4": "fhir.resources.R4B", "R4B": "fhir.resources.R4B", "R5": "fhir.resources", "STU3": "fhir.resources.STU3"}
# Versions a resource that fails the declared one is tried against, to say what it looks like.
LOOKALIKES = {"R4": ("R5", "STU3"), "R4B": ("R5", "STU3"), "R5": ("R4B", "STU3")}
EVENT_TYPES = ("Observation", "Condition", "MedicationRequest", "Procedure")
ELEMENTS_KEPT = 2**14  # validated nested elements each process keeps for reuse (see validate_reusing)
_TYPE_TOKEN = re.compile(r"[A-Z][A-Za-z]+")


def forget_elements() -> None:
    """Drop the validated nested elements this process keeps (once its jobs are done)."""
    _ELEMENTS.clear()


def type_tokens(name: str) -> list[str]:
    """The capitalised words of a file name, which may name a resource type."""
    return _TYPE_TOKEN.findall(name)
# Statuses that say a resource must not be used.
_VOID = {"entered-in-error", "cancelled", "refuted", "not-done"}
_TIME_FIELDS = {
    "Observation": ("effectiveDateTime", "effectiveInstant", "effectivePeriod", "issued"),
    "Condition": ("onsetDateTime", "onsetPeriod", "recordedDate"),
    "MedicationRequest": ("authoredOn",),
    "Procedure": ("performedDateTime", "performedPeriod", "occurrenceDateTime", "occurrencePeriod"),
}


class ParseContext(NamedTuple):
    """What a validation job needs: the version, the resource types to keep, the group attribute."""

    version: str
    types: tuple[str, ...]
    attribute: Optional[str] = None


# Entry: (place, JSON bytes or a parsed dict, resource type the file name suggests, Bundle fullUrl).
Entry = tuple[str, Any, Optional[str], Optional[str]]


class Lines(NamedTuple):
    """Up to CHUNK_SIZE lines of an NDJSON file, from line number `first` on: a job the worker splits."""

    data: bytes
    rel: str
    hint: Optional[str]
    first: int


Job = list[Entry] | Lines


# ---------------------------------------------------------------- models


@functools.lru_cache(maxsize=None)
def model_class(version: str, name: str) -> Optional[type]:
    """The fhir.resources class of resource type `name` in `version`, or None if it is not one."""
    package = importlib.import_module(PACKAGES[version])
    try:
        cls = package.get_fhir_model_class(name)
    except (ValueError, KeyError, ImportError, AttributeError):
        return None
    resource = importlib.import_module(f"{PACKAGES[version]}.resource").Resource
    return cls if issubclass(cls, resource) else None


def validate(version: str, name: str, payload: Any) -> Any:
    """A validated model of `payload` (JSON bytes or a dict); raises pydantic's ValidationError."""
    cls = model_class(version, name)
    return cls.model_validate_json(payload) if isinstance(payload, (bytes, str)) else cls.model_validate(payload)


def validate_reusing(version: str, name: str, resource: dict) -> Any:
    """`validate` of a parsed resource, its nested elements validated once per distinct JSON value.

    fhir_core validates a nested element's dict with the element's own model and takes a model
    of that class as it is, so handing it the model validated earlier from the same JSON value
    changes nothing; the resource's own fields and validators run as usual. Models are built as
    `cls(**data)`, which runs the same validation as `model_validate` (whose custom `__init__` it
    calls) without repeating the after-validators. The returned models share those elements:
    treat them as read-only.
    """
    cls = model_class(version, name)
    slots, data = element_slots(cls), dict(resource)
    for key, value in resource.items():
        slot = slots.get(key)
        if slot is not None:
            data[key] = _reuse(slot, value)
    return cls(**data)


def _reuse(slot: tuple[type, bool], value: Any) -> Any:
    """`value` with its element dicts replaced by validated models of the slot's class."""
    element, many = slot
    if many:
        return [_element(element, item) if type(item) is dict else item for item in value] if type(value) is list else value
    return _element(element, value) if type(value) is dict else value


_ELEMENTS: dict[tuple[type, bytes], Any] = {}  # (element class, JSON text): validated model


def _element(element: type, value: dict) -> Any:
    """`element` validated from `value`, or the model validated earlier from the same JSON value."""
    key = (element, to_json(value))  # distinct JSON values give distinct text
    model = _ELEMENTS.get(key)
    if model is None:
        if len(_ELEMENTS) >= ELEMENTS_KEPT:
            _ELEMENTS.clear()
        model = _ELEMENTS[key] = element(**value)
    return model


@functools.lru_cache(maxsize=None)
def element_slots(cls: type) -> dict[str, tuple[type, bool]]:
    """{JSON key: (element model class, whether a list)} of the fields of `cls` that hold nested elements."""
    slots = {}
    for name, field in cls.model_fields.items():
        key = field.alias or name
        slot = _slot(field.annotation) if not field.metadata and field.validation_alias in (None, key) else None
        if slot is not None:
            slots[key] = slot
    return slots


def _slot(annotation: Any) -> Optional[tuple[type, bool]]:
    """(model class, whether a list) for a field typed X, Optional[X] or Optional[List[X]] of one element type X."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation, args = args[0], list(typing.get_args(args[0]))
    if typing.get_origin(annotation) is list and len(args) == 1:
        element = _element_class(args[0])
        return (element, True) if element else None
    element = _element_class(annotation)
    return (element, False) if element else None


def _element_class(annotation: Any) -> Optional[type]:
    """The model class a FHIR element type (CodeableConceptType...) validates into; None for other types,
    and for the polymorphic ones (ResourceType, ElementType) that pick their class from the value."""
    if isinstance(annotation, type) and issubclass(annotation, FhirBase) and not issubclass(annotation, FhirElementOrResourceBase):
        return annotation.get_model_klass()
    return None


def looks_like(version: str, name: str, payload: dict) -> Optional[str]:
    """The first other FHIR version under which `payload` validates, or None."""
    for other in LOOKALIKES[version]:
        if model_class(other, name) is None:
            continue
        try:
            validate(other, name, payload)
        except Exception:  # noqa: BLE001 - invalid there too, however fhir.resources says so
            continue
        return other
    return None


def error_summary(error: Exception) -> str:
    """The first validation error as `loc: message`, plus how many more."""
    if not isinstance(error, ValidationError):
        return f"{type(error).__name__}: {error}"
    errors = error.errors()
    first = errors[0] if errors else {"loc": (), "msg": str(error)}
    where = ".".join(str(part) for part in first["loc"]) or "resource"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


# ---------------------------------------------------------------- one resource


def parse_entry(context: ParseContext, entry: Entry) -> tuple[str, Any] | str | None:
    """(resource type, validated model), or the reason the entry cannot be used, or None if not wanted."""
    return accept_reusing(context, entry) or parse_entry_plainly(context, entry)


def accept_reusing(context: ParseContext, entry: Entry) -> Optional[tuple[str, Any]]:
    """(resource type, model) when the entry validates with `validate_reusing`; None leaves it to the plain path.

    It parses JSON as pydantic's model_validate_json does (pydantic_core.from_json) and takes the
    type as `parse_entry_plainly` would; whatever it does not accept, the plain path decides on.
    """
    _, payload, hint, _ = entry
    try:
        resource = from_json(payload) if isinstance(payload, bytes) else payload
        if not isinstance(resource, dict):
            return None
        name = hint if hint is not None and isinstance(payload, bytes) else resource.get("resourceType")
        if hint is None and name not in context.types:
            return None
        return name, validate_reusing(context.version, name, resource)
    except Exception:  # noqa: BLE001 - any failure is the plain path's to report
        return None


def parse_entry_plainly(context: ParseContext, entry: Entry) -> tuple[str, Any] | str | None:
    """`parse_entry` with every resource validated whole by fhir.resources (model_validate_json for NDJSON lines)."""
    loc, payload, hint, _ = entry
    if hint is not None and isinstance(payload, bytes):
        try:
            return hint, validate(context.version, hint, payload)
        except Exception:  # noqa: BLE001 - find out why below
            pass
    try:
        resource = json.loads(payload) if isinstance(payload, bytes) else payload
    except ValueError as error:
        return f"not valid JSON: {error}"
    name = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(name, str) or not name:
        return "not a FHIR resource (no resourceType)"
    if name not in context.types:
        known = model_class(context.version, name) or any(model_class(v, name) for v in LOOKALIKES[context.version])
        return None if known else f"unknown resourceType {name!r}"
    try:
        return name, validate(context.version, name, resource)
    # Not only pydantic's ValidationError: some malformed values make fhir.resources' own
    # validators raise e.g. AttributeError, and one bad resource must not stop the ingest.
    except Exception as error:  # noqa: BLE001
        other = looks_like(context.version, name, resource)
        if other:
            return f"{name} at {loc} is not valid {context.version}; it looks like {other}"
        return f"{name} at {loc} is not valid {context.version}: {error_summary(error)}"


def patient_record(model: Any, loc: str, sha: str, full_url: Optional[str], attribute: Optional[str]) -> PatientRecord | str:
    pid = model.id or full_url
    if not pid:
        return "Patient has no id"
    group = _attribute(model, attribute) if attribute else ""
    return PatientRecord(loc, pid, full_url, model.gender, iso_date(model.birthDate), group, sha)


def event_record(name: str, model: Any, loc: str, sha: str) -> EventRecord | str:
    status = _status(model)
    if status in _VOID:
        return f"{name} has status {status}; not used"
    subject = _field(model, "subject")
    if subject is None or not subject.reference:
        return f"{name} has no subject reference"
    quantity = _field(model, "valueQuantity")
    value = float(quantity.value) if quantity is not None and quantity.value is not None else None
    unit, unit_code = (quantity.unit, quantity.code) if quantity is not None else (None, None)
    return EventRecord(name, loc, subject.reference, _codes(model), _time(name, model), value, unit, unit_code, sha)


def _status(model: Any) -> Optional[str]:
    verification = _field(model, "verificationStatus")
    if verification is not None:
        for coding in verification.coding or []:
            if coding.code in _VOID:
                return coding.code
    return _field(model, "status")


def _codes(model: Any) -> list[list[Optional[str]]]:
    """[system, code] of each coding: `code`, or the medication's (R4B CodeableConcept, R5 CodeableReference)."""
    concept = _field(model, "code") or _field(model, "medicationCodeableConcept")
    medication = _field(model, "medication")
    concept = concept or (_field(medication, "concept") if medication is not None else None)
    return [[c.system, c.code] for c in (concept.coding or [])] if concept is not None else []


def _time(name: str, model: Any) -> Optional[float]:
    for field in _TIME_FIELDS[name]:
        value = _field(model, field)
        if value is not None and hasattr(value, "start"):  # a Period
            value = value.start or value.end
        if value is not None:
            return epoch_of(value)
    return None


def _field(model: Any, name: str) -> Any:
    """The value of field `name`; None when the model has no such field (without pydantic's slow AttributeError)."""
    return getattr(model, name) if name in type(model).__pydantic_fields__ else None


def _attribute(model: Any, path: str) -> str:
    """A dotted Patient field path (first item of lists), as text; "" when absent."""
    value = model
    for part in path.split("."):
        value = getattr(value, part, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is None:
            return ""
    return str(value)


def content_sha256(payload: Any) -> str:
    """sha256 of a resource as exported: the NDJSON line, or a Bundle entry's compact sorted JSON."""
    if not isinstance(payload, bytes):
        payload = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(payload).hexdigest()
