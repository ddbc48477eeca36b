"""Reading a FHIR export: NDJSON files (plain or gzipped) and Bundles, validated in worker
processes in jobs of CHUNK_SIZE lines, each file's records cached by the file's content."""

from __future__ import annotations

import contextlib
import gc
import gzip
import hashlib
import json
import logging
import multiprocessing
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple, Optional


from flip.data.fhir.features import (
    EventRecord,
    PatientRecord,
)

log = logging.getLogger("flip.data")
from flip.data.fhir.resources import (
    Entry,
    Job,
    Lines,
    content_sha256,
    ParseContext,
    event_record,
    forget_elements,
    model_class,
    parse_entry,
    patient_record,
    type_tokens,
)

BUNDLE_TYPES = ("collection", "transaction", "searchset")
CHUNK_SIZE = 2000  # resources (NDJSON lines) per validation job
CACHE_FORMAT = 2


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
            forget_elements()  # not needed once the jobs are done
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
    return next((token for token in type_tokens(name) if model_class(version, token)), None)


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
