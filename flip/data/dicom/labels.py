"""Labels for DICOM items: a CSV manifest keyed at any DICOM level, or a header attribute.

A manifest row keyed by SeriesInstanceUID, StudyInstanceUID, AccessionNumber or PatientID labels
every image (or volume) under that key; `path` keys are file paths relative to the site folder.
With `label_attribute` the label is read from each file's header (a keyword such as
BodyPartExamined, or a tag such as "(0019,1001)" for private elements). Values map to classes
through `label_map`, else they must be integers (below `num_classes` when it is set); any other
value is an unknown label, reported with its row.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.tag import Tag

KEY_COLUMNS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "AccessionNumber", "PatientID", "path")
VOLUME_KEY_COLUMNS = ("SeriesInstanceUID", "StudyInstanceUID", "AccessionNumber", "PatientID")
UNLABELLED = -1  # the label of an item kept without one (inspection, `require_labels=False`)


@dataclass(frozen=True)
class LabelRow:
    value: str
    patient: str
    group: str
    line: int


@dataclass(frozen=True)
class Verdict:
    """A label (UNLABELLED when there is none), the row it came from, and the reason it is unusable."""

    label: int
    row: LabelRow | None = None
    problem: str | None = None  # "unknown": a value outside the classes; "missing": no label at all
    reason: str = ""


def attribute_tag(name: str) -> int:
    """A keyword ("BodyPartExamined") or a tag ("(0019,1001)", "0019,1001", "00191001", "0x00191001")."""
    if tag_for_keyword(name) is not None:
        return tag_for_keyword(name)
    digits = name.strip().strip("()").replace(",", "").replace(" ", "").removeprefix("0x")
    try:
        if len(digits) != 8:
            raise ValueError
        return Tag(int(digits, 16))
    except ValueError:
        raise ValueError(f"{name!r} is neither a DICOM keyword nor a tag like (0019,1001)") from None


def attribute_text(ds: pydicom.Dataset, name: str) -> str:
    """The attribute's value as stripped text ("" when absent); multi-values joined with backslashes."""
    try:
        element = ds.get(attribute_tag(name))
        value = element.value if element is not None else None
    except Exception:  # a malformed value is as good as none
        return ""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, list | tuple | MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value).strip().strip("\x00").strip()


def read_label_rows(
    path: Path, key_column: str, label_column: str, patient_column: str, group_column: str | None = None
) -> dict[str, LabelRow]:
    """Each key's row (label value as written, patient and group "" when the CSV lacks them)."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        required = (key_column, label_column, *([group_column] if group_column else []))
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        rows = {}
        for line, row in enumerate(reader, start=2):
            key = Path(row[key_column]).as_posix() if key_column == "path" else (row[key_column] or "").strip()
            patient = (row.get(patient_column) or "").strip()
            group = (row.get(group_column) or "").strip() if group_column else ""
            rows[key] = LabelRow((row[label_column] or "").strip(), patient, group, line)
    return rows


class Labeller:
    """Resolves each item's label from manifest rows or a header attribute, and remembers the keys seen."""

    def __init__(
        self,
        rows: dict[str, LabelRow] | None,
        key_column: str,
        attribute: str | None = None,
        label_map: Mapping[str, int] | None = None,
        num_classes: int | None = None,
        source: str = "labels.csv",
    ):
        self.rows = rows
        self.key_column = key_column
        self.attribute = attribute
        self.label_map = {str(k): int(v) for k, v in label_map.items()} if label_map is not None else None
        self.num_classes = num_classes
        self.source = source
        self.seen: set[str] = set()

    def allowed(self) -> str:
        if self.label_map is not None:
            return f"label_map keys {sorted(self.label_map)}"
        return f"integers 0..{self.num_classes - 1}" if self.num_classes else "integers"

    def to_class(self, value: str) -> int | None:
        """The class of a label value, or None when it is not one of the allowed classes."""
        if self.label_map is not None:
            return self.label_map.get(value)
        try:
            label = int(value)
        except ValueError:
            return None
        return label if label >= 0 and (self.num_classes is None or label < self.num_classes) else None

    def see(self, keys: Mapping[str, str]) -> None:
        """Note an image's keys, so that rows naming no image can be reported."""
        if self.rows is not None and keys.get(self.key_column):
            self.seen.add(keys[self.key_column])

    def verdict(self, keys: Mapping[str, str], attribute_value: str = "") -> Verdict:
        """The label of an item with these keys (`path` and the DICOM keywords)."""
        if self.attribute is not None:
            return self._from_attribute(attribute_value)
        if self.rows is None:
            return Verdict(UNLABELLED, problem="missing", reason="unlabelled: no label source (data.labels or data.label_attribute)")
        key = keys.get(self.key_column, "")
        row = self.rows.get(key)
        if row is None:
            return Verdict(UNLABELLED, problem="missing", reason=f"no label for {self.key_column} {key!r}")
        label = self.to_class(row.value)
        if label is None:
            reason = f"unknown label {row.value!r} in {self.source} line {row.line} ({self.key_column} {key!r}); allowed: {self.allowed()}"
            return Verdict(UNLABELLED, row, "unknown", reason)
        return Verdict(label, row)

    def _from_attribute(self, value: str) -> Verdict:
        if not value:
            return Verdict(UNLABELLED, problem="missing", reason=f"no label: the header has no {self.attribute} value")
        label = self.to_class(value)
        if label is None:
            return Verdict(UNLABELLED, problem="unknown", reason=f"unknown label {value!r} from {self.attribute}; allowed: {self.allowed()}")
        return Verdict(label)

    def unmatched(self) -> list[str]:
        """Manifest keys that named no image, in manifest order."""
        if self.rows is None or self.attribute is not None:
            return []
        return [key for key in self.rows if key not in self.seen]
