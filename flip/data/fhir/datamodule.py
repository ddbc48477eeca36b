"""FHIR as a flip data source: a Bulk Data export (NDJSON) and/or Bundles, one feature row per patient.

Every resource flip reads is validated with fhir.resources for the declared version (R4 is read
with the R4B models: fhir.resources ships no separate R4 package). A line or entry that does not
validate is skipped with its place and reason; when it validates under another version, the
reason says which. Validation runs in worker processes, and each file's validated records are
cached by the file's content, so a later run over the same export does not validate it again.

Nested elements that recur across resources (a code, a category, a subject reference) are
validated once per distinct JSON value and the model is reused (`validate_reusing`); every
resource's own fields and validators still run, and whatever that path does not accept is
validated again whole (`parse_entry_plainly`: fhir.resources' `model_validate_json` for an
NDJSON line), so what is accepted, and every reason, stays as that path decides.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import gzip
import hashlib
import importlib
import json
import logging
import multiprocessing
import os
import re
import tempfile
import types
import typing
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch
from fhir_core.types import FhirBase, FhirElementOrResourceBase
from pydantic import ValidationError
from pydantic_core import from_json, to_json

from flip.data.fhir.schema import fhir_problems
from flip.data import default_cache_dir
from flip.errors import MissingData
from flip.data.base import Item, SiteDataModule
from flip.data.fhir.features import (
    EventRecord,
    PatientRecord,
    Row,
    Spec,
    continuous_columns,
    epoch_of,
    feature_names,
    features_from,
    iso_date,
    label_from,
    patient_rows,
)

log = logging.getLogger("flip.data")

PACKAGES = {"R4": "fhir.resources.R4B", "R4B": "fhir.resources.R4B", "R5": "fhir.resources", "STU3": "fhir.resources.STU3"}
# Versions a resource that fails the declared one is tried against, to say what it looks like.
LOOKALIKES = {"R4": ("R5", "STU3"), "R4B": ("R5", "STU3"), "R5": ("R4B", "STU3")}
BUNDLE_TYPES = ("collection", "transaction", "searchset")
EVENT_TYPES = ("Observation", "Condition", "MedicationRequest", "Procedure")
CHUNK_SIZE = 2000  # resources (NDJSON lines) per validation job
CACHE_FORMAT = 2
ELEMENTS_KEPT = 2**14  # validated nested elements each process keeps for reuse (see validate_reusing)
_TYPE_TOKEN = re.compile(r"[A-Z][A-Za-z]+")
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


# ---------------------------------------------------------------- jobs


def parse_chunk(context: ParseContext, job: Job) -> dict:
    """Validate and extract a job's entries: {patients, events, skips, types} of plain values."""
    result: dict = {"patients": [], "events": [], "skips": [], "types": {}}
    for entry in ndjson_entries(*job) if isinstance(job, Lines) else job:
        outcome = parse_entry(context, entry)
        if outcome is None:
            continue
        record = outcome if isinstance(outcome, str) else _record(context, entry, *outcome)
        if isinstance(record, str):
            result["skips"].append([entry[0], record])
            continue
        result["patients" if isinstance(record, PatientRecord) else "events"].append(list(record))
        result["types"][outcome[0]] = result["types"].get(outcome[0], 0) + 1
    return result


def _record(context: ParseContext, entry: Entry, name: str, model: Any) -> PatientRecord | EventRecord | str:
    loc, payload, _, full_url = entry
    sha = content_sha256(payload)
    if name == "Patient":
        return patient_record(model, loc, sha, full_url, context.attribute)
    return event_record(name, model, loc, sha)


def run_chunks(context: ParseContext, jobs: list[Job], processes: int) -> list[dict]:
    """parse_chunk over every job, in order; in a process pool when there is more than one job."""
    pool = _pool(min(processes, len(jobs))) if processes > 1 and len(jobs) > 1 else None
    if pool is None:
        try:
            return [parse_chunk(context, job) for job in jobs]
        finally:
            _ELEMENTS.clear()  # not needed once the jobs are done
    with pool:
        return pool.starmap(parse_chunk, [(context, job) for job in jobs], chunksize=1)


def _pool(processes: int) -> Any:
    """A pool whose workers collect their own garbage (see `gc_paused`)."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    try:
        return multiprocessing.get_context(method).Pool(processes, initializer=gc.enable)
    except (OSError, AssertionError, ValueError) as error:  # e.g. inside a daemonic process
        log.info("validating FHIR in this process only: no process pool (%s)", error)
        return None


@contextlib.contextmanager
def gc_paused():
    """No garbage collection inside, and the objects made before frozen out of it (gc.freeze).

    A bulk load makes records, not reference cycles; collections would walk the whole heap
    (torch, Lightning) again and again. Forked workers inherit the frozen objects, so their
    own collections leave those (and the pages they share with this process) alone.
    """
    enabled = gc.isenabled()
    gc.disable()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


# ---------------------------------------------------------------- files


def export_files(folder: Path) -> list[Path]:
    """NDJSON (plain or .gz) and Bundle (.json) files under `folder`, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and file_kind(p.name))


def file_kind(name: str) -> Optional[str]:
    lower = name.lower()
    if lower.endswith((".ndjson", ".ndjson.gz")):
        return "ndjson"
    return "bundle" if lower.endswith(".json") else None


def type_hint(name: str, version: str) -> Optional[str]:
    """The resource type a Bulk Data file name states (Observation.ndjson, 1.Observation.000.ndjson)."""
    return next((token for token in _TYPE_TOKEN.findall(name) if model_class(version, token)), None)


def ndjson_entries(data: bytes, rel: str, hint: Optional[str], first: int = 1) -> list[Entry]:
    """The non-blank lines of `data`, numbered from `first`."""
    lines = data.split(b"\n")
    return [(f"{rel}:{number}", line.strip(), hint, None) for number, line in enumerate(lines, first) if line.strip()]


def ndjson_jobs(data: bytes, rel: str, hint: Optional[str]) -> list[Lines]:
    """`data` cut after every CHUNK_SIZE-th line (the workers split the lines)."""
    jobs, start, first = [], 0, 1
    while start < len(data):
        end = start
        for _ in range(CHUNK_SIZE):
            end = data.find(b"\n", end) + 1
            if not end:
                end = len(data)
                break
        jobs.append(Lines(data[start:end], rel, hint, first))
        start, first = end, first + CHUNK_SIZE
    return jobs


def bundle_entries(data: bytes, rel: str) -> tuple[list[Entry], list[tuple[str, str]]]:
    """The resources of a collection, transaction or searchset Bundle, and what could not be read."""
    try:
        bundle = json.loads(data)
    except ValueError as error:
        return [], [(rel, f"not valid JSON: {error}")]
    if isinstance(bundle, dict) and {"transactionTime", "output"} <= bundle.keys():
        return [], []  # a Bulk Data export manifest: no resources
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return [], [(rel, "not a FHIR Bundle")]
    if bundle.get("type") not in BUNDLE_TYPES:
        return [], [(rel, f"Bundle of type {bundle.get('type')!r} is not read (only {', '.join(BUNDLE_TYPES)})")]
    entries, problems = [], []
    for index, entry in enumerate(bundle.get("entry") or []):
        loc = f"{rel}#entry[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("resource", {}), dict):
            problems.append((loc, "Bundle entry is not an object with a resource"))
        elif "resource" in entry:  # a transaction's DELETE has none
            entries.append((loc, entry["resource"], None, entry.get("fullUrl")))
    return entries, problems


class ParseCache:
    """Validated records of one export file, keyed by its bytes and everything that shapes them."""

    def __init__(self, folder: Optional[Path]):
        self.folder = folder

    def key(self, raw: bytes, rel: str, context: ParseContext) -> str:
        import fhir.resources

        digest = hashlib.sha256(raw)
        digest.update(json.dumps([CACHE_FORMAT, fhir.resources.__version__, rel, *context]).encode())
        return digest.hexdigest()

    def load(self, key: str) -> Optional[dict]:
        if self.folder is None or not (self.folder / f"{key}.json").is_file():
            return None
        try:
            return json.loads((self.folder / f"{key}.json").read_bytes())
        except (OSError, ValueError):
            return None  # damaged: parse again

    def save(self, key: str, result: dict) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps(result, separators=(",", ":")))  # dumps: C encoder; dump is not
        os.replace(temporary, self.folder / f"{key}.json")


class Export(NamedTuple):
    patients: list[PatientRecord]
    events: list[EventRecord]
    types: Counter
    unread: list[str]  # files of resource types the spec does not use


def read_export(
    site_dir: Path, folder: Path, context: ParseContext, cache: ParseCache, processes: int, skip: Any
) -> Export:
    """Every usable record of the export files under `folder`; unusable ones go to `skip`."""
    results: dict[int, dict] = {}
    jobs, owners, keys, unread, fresh = [], [], {}, [], []
    for index, path in enumerate(export_files(folder)):
        rel = path.relative_to(site_dir).as_posix()
        if _unused(path.name, context):
            unread.append(rel)
            continue
        raw = path.read_bytes()
        keys[index] = cache.key(raw, rel, context)
        cached = cache.load(keys[index])
        if cached is not None:
            results[index] = cached
            continue
        file_jobs, problems = _file_jobs(path.name, raw, rel, context)
        results[index] = {"patients": [], "events": [], "skips": [list(p) for p in problems], "types": {}}
        fresh.append(index)
        jobs += file_jobs
        owners += [index] * len(file_jobs)
    for index, output in zip(owners, run_chunks(context, jobs, processes)):
        _merge(results[index], output)
    for index in fresh:
        cache.save(keys[index], results[index])
    return _combine([results[i] for i in sorted(results)], unread, skip)


def _unused(name: str, context: ParseContext) -> bool:
    """Whether an NDJSON file's name says it holds a resource type the spec does not use."""
    hint = type_hint(name, context.version) if file_kind(name) == "ndjson" else None
    return hint is not None and hint not in context.types


def _file_jobs(name: str, raw: bytes, rel: str, context: ParseContext) -> tuple[list[Job], list]:
    """A file's validation jobs, and problems with the file itself."""
    if file_kind(name) == "bundle":
        entries, problems = bundle_entries(raw, rel)
        return [entries[start : start + CHUNK_SIZE] for start in range(0, len(entries), CHUNK_SIZE)], problems
    hint = type_hint(name, context.version)
    if name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            return [], [(rel, f"not a readable gzip file: {error}")]
    return ndjson_jobs(raw, rel, hint), []


def _merge(into: dict, output: dict) -> None:
    for key in ("patients", "events", "skips"):
        into[key].extend(output[key])
    for name, count in output["types"].items():
        into["types"][name] = into["types"].get(name, 0) + count


def _combine(results: list[dict], unread: list[str], skip: Any) -> Export:
    patients, events, types = [], [], Counter()
    for result in results:
        patients += [PatientRecord(*r) for r in result["patients"]]
        events += [EventRecord(*r) for r in result["events"]]
        types.update(result["types"])
        for loc, reason in result["skips"]:
            skip(loc, reason)
    return Export(patients, events, types, unread)


# ---------------------------------------------------------------- the data module


class FhirDataModule(SiteDataModule):
    """One feature row per Patient of a site's FHIR export, labelled by a code set.

    After `setup()`: `feature_names` (also known before), `num_features`, `item_keys`,
    `resource_counts` (usable resources by type), `unread` (files of types the spec does not
    use), `scaler` (train mean and std of the standardised columns) and, with no label, `unlabelled`.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        site: str | None = None,
        fhir_dir: str = ".",
        fhir_version: str = "R4B",
        index_date: str | None = None,
        features: Mapping | None = None,
        label: Mapping | None = None,
        missing: str = "mean",
        standardize: bool = True,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        min_samples: int = 10,
        partition: Mapping | None = None,
        synthetic: Mapping | None = None,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        parse_processes: int | None = None,
        require_labels: bool = True,
    ):
        super().__init__(
            root, site, val_fraction, test_fraction, batch_size, num_workers, seed, min_samples, partition,
            synthetic=synthetic, cache_dir=cache_dir,
        )
        self.spec = _spec(fhir_version, index_date, features, label, missing, parse_processes)
        if self.spec.label is None and require_labels:
            raise ValueError("FhirDataModule needs `label` (resource, system, codes): what makes a patient positive")
        source = self.group_source()
        if source is not None and source[0] != "attribute":
            raise ValueError(
                f"by_site partitions from a {source[0]} have no meaning for FHIR data: use source=folder, "
                "or source=attribute with a Patient field path (e.g. managingOrganization.display)"
            )
        self.fhir_dir = fhir_dir
        self.fhir_version = fhir_version
        self.standardize = standardize
        self.cache = cache
        self.parse_processes = parse_processes
        self.feature_names = feature_names(self.spec.features, missing)
        self.resource_counts: Counter = Counter()
        self.unread: list[str] = []
        self.unlabelled = 0
        self.item_keys: list[str] = []  # Patient ids of the items, in item order
        self.scaler: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_features(self) -> int:
        """Width of the feature rows (the model's `in_features`); known from the spec alone."""
        return len(self.feature_names)

    def inventory(self) -> dict[str, Counter]:
        return {"resource_types": Counter(dict(sorted(self.resource_counts.items())))}

    def load_items(self, site_dir: Path) -> list[Item]:
        folder = site_dir / self.fhir_dir
        if not folder.is_dir():
            raise MissingData(f"FHIR folder not found: {folder} (data.fhir_dir={self.fhir_dir!r}){_fhir_dir_hint(folder.parent)}")
        with gc_paused():
            export = read_export(site_dir, folder, self._context(), self._cache(), self._processes(), self.skip)
            rows = patient_rows(export.patients, export.events, self.spec, self.skip)
            items = [_item(row) for row in rows if row.label is not None]
        self.resource_counts, self.unread = export.types, export.unread
        if export.unread:
            log.info("not read (resource types the spec does not use): %s", ", ".join(export.unread))
        self.unlabelled = sum(row.label is None for row in rows)
        self.item_keys = [item.key for item in items]
        return items

    def setup(self, stage: str | None = None) -> None:
        fresh = not self.datasets
        super().setup(stage)
        if fresh and self.standardize:
            self._standardize()

    def _standardize(self) -> None:
        """Z-score the continuous columns of every split with the train split's mean and std."""
        self.scaler = standardize_columns(self.datasets, 0, continuous_columns(self.spec.features, self.spec.missing))

    def _context(self) -> ParseContext:
        types = {"Patient", *(t for t in EVENT_TYPES if self._uses(t))}
        source = self.group_source()
        return ParseContext(self.fhir_version, tuple(sorted(types)), source[1] if source else None)

    def _uses(self, resource: str) -> bool:
        features, label = self.spec.features, self.spec.label
        used = {
            "Observation": bool(features.observations),
            "Condition": bool(features.conditions),
            "MedicationRequest": bool(features.medications),
            "Procedure": bool(features.procedures),
        }
        return used[resource] or (label is not None and label.resource == resource)

    def _cache(self) -> ParseCache:
        if not self.cache:
            return ParseCache(None)
        return ParseCache((Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()) / "fhir")

    def _processes(self) -> int:
        return self.parse_processes or max(1, torch.get_num_threads())


def _spec(fhir_version: str, index_date: Any, features: Any, label: Any, missing: str, parse_processes: Any) -> Spec:
    settings = {"fhir_version": fhir_version, "index_date": index_date, "features": features or {}, "label": label,
                "missing": missing, "parse_processes": parse_processes}
    problems = fhir_problems(settings) + (["data.index_date: missing value"] if index_date is None else [])
    spec = None
    if not problems:
        try:
            spec = Spec(features_from(features), label_from(label), missing, _date(index_date))
        except TypeError as error:  # an unknown key in the spec
            problems.append(f"data.features / data.label: {error}")
    if problems:
        raise ValueError("invalid FHIR data settings:\n  - " + "\n  - ".join(dict.fromkeys(problems)))
    return spec


def _date(value: Any) -> Optional[datetime.date]:
    return datetime.date.fromisoformat(str(value)) if value is not None else None


def _item(row: Row) -> Item:
    digest = hashlib.sha256("\n".join(sorted(row.resources)).encode()).hexdigest()
    values = torch.tensor(row.values, dtype=torch.float32)
    return Item((values,), int(row.label), row.patient.id, row.patient.id, digest, row.patient.group)


def standardize_columns(datasets: dict, position: int, columns: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Z-score `columns` of input `position` in every split with the train split's mean and std."""
    train = datasets["train"].tensors
    if not columns or len(train) <= position + 1 or len(train[position]) < 2:
        return None
    mean = train[position][:, columns].mean(dim=0)
    std = train[position][:, columns].std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for dataset in datasets.values():
        if len(dataset.tensors) > position + 1:
            dataset.tensors[position][:, columns] = (dataset.tensors[position][:, columns] - mean) / std
    return mean, std


def _fhir_dir_hint(site_dir: Path) -> str:
    """Where the export's files are, when they are beside the folder flip looked for."""
    if any(site_dir.glob("*.ndjson*")) or any(site_dir.glob("*.json")):
        return "; the site folder itself holds the export's files: set data.fhir_dir=."
    return "; set data.fhir_dir to the export's folder, relative to the site folder"
