"""Clinical notes as a flip data source: .txt folders, JSONL/CSV files, or FHIR attachments.

Formats (`format`):

- ``folder``: ``*.txt`` notes under `notes_dir` and a labels CSV (`labels`) whose rows name a note
  by `path_column` (relative to `notes_dir`) or else by `id_column` (the file's stem), with
  `label_column` and an optional `patient_column`.
- ``jsonl`` / ``csv``: one `file` with text, label, patient and optional id per line or row.
- ``fhir``: DocumentReference (``content[].attachment``) and DiagnosticReport (``presentedForm[]``)
  resources in NDJSON files (plain or ``.gz``) under `fhir_dir`, validated with fhir.resources
  (`fhir_version` R4/R4B or R5; R4 is read with the R4B models) and linked to patients by
  ``subject.reference``. Labels come from the labels CSV keyed by patient (`patient_column`,
  `label_column`); every inline base64 ``text/plain`` attachment is one note.

`labels` and `file` are relative to the site folder (or absolute). Each note becomes hashed n-gram
ids (`flip.data.text.tokenize`). Unusable notes are skipped with their location and reason: not valid
UTF-8, empty, no words, no label, an attachment that is not inline text/plain, an invalid resource.
"""

from __future__ import annotations

import codecs
import dataclasses
import csv
import gzip
import hashlib
import importlib
import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from flip.errors import MissingData
from flip.data.text.schema import source_problems
from flip.data.base import Item, SiteDataModule
from flip.data.text.tokenize import HashedNgrams

NOTE_RESOURCES = ("DocumentReference", "DiagnosticReport")

Skip = Callable[[str, str], None]


@dataclass(frozen=True)
class Note:
    """One note as read, before it is checked and tokenised."""

    location: str  # where it came from, for skip reports
    key: str
    text: str
    content: bytes  # the note's bytes, for content_sha256
    patient: str
    label: int | None
    group: str = ""
    label_error: str = ""  # why the label source's value for this note is unusable


@dataclass(frozen=True)
class Columns:
    """Names of the columns (CSV) or keys (JSONL) flip reads."""

    id: str = "note_id"
    path: str = "path"
    text: str = "text"
    label: str = "label"
    patient: str = "patient"
    group: str | None = None


class TextDataModule(SiteDataModule):
    """Labelled clinical notes of one site, as fixed-length tensors of hashed n-gram ids."""

    def __init__(
        self,
        root: str | Path | None = None,
        site: str | None = None,
        format: str = "folder",
        notes_dir: str = "notes",
        file: str | None = None,
        fhir_dir: str = "fhir",
        fhir_version: str = "R4B",
        labels: str | None = "notes/labels.csv",
        id_column: str = "note_id",
        path_column: str = "path",
        text_column: str = "text",
        label_column: str = "label",
        patient_column: str = "patient",
        num_buckets: int = 1 << 14,
        ngram_range: Sequence[int] = (1, 2),
        max_tokens: int = 512,
        lowercase: bool = True,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        min_samples: int = 10,
        partition: Mapping | None = None,
        synthetic: Mapping | None = None,
        cache_dir: str | Path | None = None,
    ):
        super().__init__(
            root, site, val_fraction, test_fraction, batch_size, num_workers, seed, min_samples, partition,
            synthetic=synthetic, cache_dir=cache_dir,
        )
        problems = source_problems(format, fhir_version, file)
        if problems:
            raise ValueError("; ".join(problems))
        self.format, self.notes_dir, self.file, self.fhir_dir = format, notes_dir, file, fhir_dir
        self.fhir_version, self.labels = fhir_version, labels
        self.columns = Columns(id_column, path_column, text_column, label_column, patient_column)
        self.tokenizer = HashedNgrams(num_buckets, tuple(ngram_range), max_tokens, lowercase)
        self.num_buckets = num_buckets

    def load_items(self, site_dir: Path) -> list[Item]:
        """Usable notes as items; every other note is skipped with its location and reason."""
        notes = self.read_notes(site_dir)
        return [item for item in (self._item(note) for note in notes) if item is not None]

    def read_notes(self, site_dir: Path) -> list[Note]:
        """Every note of the site as read, labelled or not; unreadable ones are skipped."""
        columns = dataclasses.replace(self.columns, group=self._group_column())
        if self.format == "folder":
            labels = self._labels_path(site_dir)
            return read_folder(site_dir / self.notes_dir, labels, columns, self.skip)
        if self.format in ("jsonl", "csv"):
            path = _under(site_dir, self.file)
            reader = read_jsonl if self.format == "jsonl" else read_table
            return reader(path, columns, self.skip)
        labels = self._labels_path(site_dir)
        by_patient = read_patient_labels(labels, columns) if labels else {}
        return read_fhir(site_dir / self.fhir_dir, self.fhir_version, by_patient, self.skip)

    def _labels_path(self, site_dir: Path) -> Path | None:
        if self.labels is None:
            return None
        path = _under(site_dir, self.labels)
        if not path.is_file():
            raise MissingData(f"labels CSV not found: {path} (data.labels)")
        return path

    def _group_column(self) -> str | None:
        source = self.group_source()
        if source is None:
            return None
        if source[0] != "column":
            raise ValueError(f"text data has no {source[0]}s to name sites by; use partition.source=column")
        return source[1]

    def _item(self, note: Note) -> Item | None:
        """The tokenised item, or None with the note skipped for its reason."""
        reason = None
        if not note.text.strip():
            reason = "empty note"
        elif note.label_error:
            reason = note.label_error
        elif note.label is None:
            reason = "no label for this note"
        else:
            ids = self.tokenizer.encode(note.text)
            if not ids.any():
                reason = "no words in note"
        if reason is not None:
            self.skip(note.location, reason)
            return None
        sha = hashlib.sha256(note.content).hexdigest()
        return Item((ids,), note.label, note.patient or f"note:{note.key}", note.key, sha, note.group)


# ---------------------------------------------------------------- labels and text


def parse_label(value) -> int | None:
    """An integer label; None when absent; ValueError when not an integer >= 0."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise ValueError(f"label {value!r} is not an integer")
    try:
        label = int(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"label {value!r} is not an integer") from None
    if label < 0:
        raise ValueError(f"label {label} is negative")
    return label


def decode_text(data: bytes, charset: str = "utf-8") -> str:
    """The note's text; UnicodeDecodeError when the bytes are not valid in `charset`."""
    if codecs.lookup(charset).name == "utf-8":
        charset = "utf-8-sig"  # a byte-order mark is not part of the note
    return data.decode(charset)


def decode_reason(error: UnicodeDecodeError, charset: str = "utf-8") -> str:
    name = "UTF-8" if codecs.lookup(charset).name == "utf-8" else charset
    return f"not valid {name} ({error.reason} at byte {error.start})"


def _under(site_dir: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else site_dir / path


def _cell(row: Mapping, column: str | None) -> str:
    value = row.get(column) if column else None
    return "" if value is None else str(value).strip()


# ---------------------------------------------------------------- folder of .txt files


def read_folder(notes_dir: Path, labels: Path | None, columns: Columns, skip: Skip) -> list[Note]:
    """Notes from `*.txt` files, labelled by path (relative to notes_dir) or file stem."""
    if not notes_dir.is_dir():
        raise MissingData(f"notes folder not found: {notes_dir} (data.notes_dir)")
    rows = read_csv_rows(labels, columns, (columns.path, columns.id)) if labels else []
    by_path = {Path(r[columns.path]).as_posix(): r for r in rows if _cell(r, columns.path)}
    by_id = {_cell(r, columns.id): r for r in rows if _cell(r, columns.id)}
    notes, used = [], set()
    for path in sorted(p for p in notes_dir.rglob("*.txt") if p.is_file()):
        relative = path.relative_to(notes_dir).as_posix()
        row = by_path.get(relative) or by_id.get(path.stem)
        used.add(id(row))
        note = _file_note(path, relative, row, columns, skip)
        if note is not None:
            notes.append(note)
    for row in rows:
        if id(row) not in used:
            name = _cell(row, columns.path) or _cell(row, columns.id)
            skip(name, f"listed in {labels.name} but no such note file in {notes_dir.name}/")
    return notes


def _file_note(path: Path, relative: str, row: Mapping | None, columns: Columns, skip: Skip) -> Note | None:
    data = path.read_bytes()
    try:
        text = decode_text(data)
    except UnicodeDecodeError as error:
        skip(relative, decode_reason(error))
        return None
    if row is None:
        return Note(relative, relative, text, data, "", None)
    key = _cell(row, columns.id) or relative
    label, error = row["_label"]
    return Note(relative, key, text, data, _cell(row, columns.patient), label, _cell(row, columns.group), error)


def read_csv_rows(path: Path, columns: Columns, keys: tuple[str, ...]) -> list[dict]:
    """Rows of a labels CSV, each with `_label`: (label or None, why it is unusable or "")."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        missing = [c for c in (columns.label, columns.group) if c and c not in fields]
        if missing or not set(keys) & set(fields):
            raise ValueError(f"{path}: needs column(s) {[columns.label, *missing]} and one of {list(keys)}; found {fields}")
        return [{**row, "_label": _label_or_error(row[columns.label], f"{path.name}:{line}")} for line, row in enumerate(reader, 2)]


def _label_or_error(value, where: str) -> tuple[int | None, str]:
    try:
        return parse_label(value), ""
    except ValueError as error:
        return None, f"{error} ({where})"


def read_patient_labels(path: Path, columns: Columns) -> dict[str, tuple[int | None, str, str]]:
    """(label, group, label error) by patient; conflicting labels for one patient are an error."""
    by_patient: dict[str, tuple[int | None, str, str]] = {}
    for row in read_csv_rows(path, columns, (columns.patient,)):
        patient, (label, error) = _cell(row, columns.patient), row["_label"]
        if not patient:
            continue
        if patient in by_patient and None not in (label, by_patient[patient][0]) and label != by_patient[patient][0]:
            raise ValueError(f"{path}: patient {patient!r} has labels {by_patient[patient][0]} and {label}")
        by_patient[patient] = (label, _cell(row, columns.group), error)
    return by_patient


# ---------------------------------------------------------------- one file of notes


def read_jsonl(path: Path, columns: Columns, skip: Skip) -> list[Note]:
    """Notes from a JSON Lines file, one object per line."""
    notes = []
    for line_number, line in enumerate(_binary_lines(path, path.name, skip), start=1):
        where = f"{path.name}:{line_number}"
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            skip(where, decode_reason(error))
            continue
        except json.JSONDecodeError as error:
            skip(where, f"malformed JSON: {error.msg}")
            continue
        if not isinstance(record, dict):
            skip(where, "not a JSON object")
            continue
        note = _record_note(record, where, columns, skip)
        if note is not None:
            notes.append(note)
    return notes


def read_table(path: Path, columns: Columns, skip: Skip) -> list[Note]:
    """Notes from a CSV file with a header row; a row whose bytes are not UTF-8 is skipped."""
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in (columns.text, columns.label) if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
    notes = []
    for row in reader:
        note = _record_note(row, f"{path.name}:{reader.line_num}", columns, skip)
        if note is not None:
            notes.append(note)
    return notes


def _record_note(record: Mapping, where: str, columns: Columns, skip: Skip) -> Note | None:
    """A note from one JSON object or CSV row, or None with the reason skipped."""
    text = record.get(columns.text)
    if not isinstance(text, str):
        skip(where, f"no text in '{columns.text}'")
        return None
    try:
        content = text.encode("utf-8")
        label = parse_label(record.get(columns.label))
    except UnicodeEncodeError:
        skip(where, "not valid UTF-8")
        return None
    except ValueError as error:
        skip(where, str(error))
        return None
    key = _cell(record, columns.id) or where
    return Note(where, key, text, content, _cell(record, columns.patient), label, _cell(record, columns.group))


def _binary_lines(path: Path, name: str, skip: Skip) -> Iterator[bytes]:
    """The file's lines (gunzipped for .gz); a damaged file is skipped from where it breaks."""
    opener = gzip.open if path.suffix == ".gz" else open
    line_number = 0
    try:
        with opener(path, "rb") as handle:
            for line_number, line in enumerate(handle, start=1):
                yield line
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        skip(name, f"unreadable after line {line_number}: {type(error).__name__}: {error}")


# ---------------------------------------------------------------- FHIR attachments


def resource_class(version: str, resource_type: str) -> type:
    """The fhir.resources model of one resource type; R4 is read with the R4B models."""
    package = "fhir.resources" if version == "R5" else "fhir.resources.R4B"
    module = importlib.import_module(f"{package}.{resource_type.lower()}")
    return getattr(module, resource_type)


def fhir_files(folder: Path) -> list[Path]:
    """NDJSON files (plain or gzipped) under folder, in name order."""
    if not folder.is_dir():
        raise MissingData(f"FHIR folder not found: {folder} (data.fhir_dir)")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith((".ndjson", ".ndjson.gz")))


def read_fhir(folder: Path, version: str, by_patient: Mapping[str, tuple], skip: Skip) -> list[Note]:
    """Notes from DocumentReference and DiagnosticReport resources; other resources are passed over."""
    notes = []
    for path in fhir_files(folder):
        name = path.relative_to(folder).as_posix()
        for line_number, line in enumerate(_binary_lines(path, name, skip), start=1):
            notes += _line_notes(line, f"{name}:{line_number}", version, by_patient, skip)
    return notes


def _line_notes(line: bytes, where: str, version: str, by_patient: Mapping, skip: Skip) -> list[Note]:
    if not any(kind.encode() in line for kind in NOTE_RESOURCES):
        return []
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        skip(where, f"malformed NDJSON line: {error}")
        return []
    kind = record.get("resourceType") if isinstance(record, dict) else None
    if kind not in NOTE_RESOURCES:
        return []
    resource = _validate(record, kind, version, where, skip)
    if resource is None:
        return []
    return _resource_notes(resource, kind, f"{where} {kind}/{resource.id}", by_patient, skip)


def _validate(record: dict, kind: str, version: str, where: str, skip: Skip):
    """The validated resource, or None with the reason (and the version it looks like) skipped."""
    try:
        return resource_class(version, kind).model_validate(record)
    except ValidationError as error:
        first = error.errors()[0]
        reason = f"invalid {version} {kind}: {'.'.join(map(str, first['loc']))}: {first['msg']}"
    other = "R5" if version != "R5" else "R4B"
    try:
        resource_class(other, kind).model_validate(record)
        reason += f" (it looks like {other})"
    except ValidationError:
        pass
    skip(where, reason)
    return None


def _resource_notes(resource, kind: str, where: str, by_patient: Mapping, skip: Skip) -> list[Note]:
    if resource.status == "entered-in-error":
        skip(where, "status entered-in-error")
        return []
    patient = _patient_id(resource.subject)
    if patient is None:
        skip(where, "subject is not a Patient reference")
        return []
    label, group, error = by_patient.get(patient, (None, "", ""))
    attachments = [c.attachment for c in resource.content] if kind == "DocumentReference" else resource.presentedForm or []
    notes, name = [], f"{kind}/{resource.id}" if resource.id else where
    for index, attachment in enumerate(attachments):
        key = name + (f"#{index}" if index else "")
        text = _attachment_text(attachment, f"{where} attachment {index}", skip)
        if text is not None:
            notes.append(Note(f"{where} attachment {index}", key, text, attachment.data, patient, label, group, error))
    return notes


def _patient_id(subject) -> str | None:
    """The id in 'Patient/<id>' (relative or absolute URL), else None."""
    reference = (subject.reference or "") if subject is not None else ""
    parts = reference.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
        return parts[-1]
    if len(parts) >= 4 and parts[-4] == "Patient" and parts[-2] == "_history":
        return parts[-3]
    return None


def _attachment_text(attachment, where: str, skip: Skip) -> str | None:
    """The decoded text of an inline text/plain attachment, or None with the reason skipped."""
    media_type, _, parameters = (attachment.contentType or "").partition(";")
    if media_type.strip().lower() != "text/plain":
        skip(where, f"attachment is {attachment.contentType or 'of no contentType'}, not text/plain")
        return None
    if not attachment.data:
        skip(where, "attachment has no inline data" + (f" (url {attachment.url})" if attachment.url else ""))
        return None
    charset = _charset(parameters)
    try:
        return decode_text(attachment.data, charset)
    except LookupError:
        skip(where, f"unknown charset {charset!r}")
    except UnicodeDecodeError as error:
        skip(where, decode_reason(error, charset))
    return None


def _charset(parameters: str) -> str:
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return "utf-8"
