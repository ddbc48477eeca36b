"""The decoded, preprocessed DICOM cache on disk: decode once, read back in later rounds and runs.

One pack file per scanned folder and preprocessing settings, under `<cache>/decoded/`, holds a
record per file content (keyed by the file's sha256: header fields, the preprocessed tensor or the
reason it is unusable) and one per 3-D series (keyed by the sha256 of its slices' hashes). The
settings digest covers everything that changes a tensor: image size, window, channels, frames,
mode, volume size, header attributes read, and the versions of pydicom, its decoder plugins, numpy
and torch, so an upgrade decodes again.

Hashing every file on every pass would cost as much as a cached pass may take, so the pack also
remembers each file's (size, mtime, ctime, inode) with its sha256, as git's index does: a file
whose signature is unchanged keeps its hash; any change (a rewrite changes ctime even when mtime
is restored) means hash again, and a new hash misses. A file changed within a second of being
hashed is not trusted ("racy"): its signature is not stored, so the next pass hashes it again.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("flip.data")

CACHE_FORMAT = 2  # bump when flip's own preprocessing changes between releases (2: header text read from raw bytes)
DECODER_PACKAGES = (
    "flip-fl", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle",
    "python-gdcm", "pyjpegls", "pillow", "numpy", "torch",
)  # fmt: skip
_RACY_NS = 1_000_000_000


@functools.cache
def decoder_versions() -> dict[str, str | None]:
    """Installed versions of the packages that turn DICOM bytes into tensors (None: not installed)."""
    versions = {}
    for name in DECODER_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def digest(value: Any) -> str:
    """sha256 of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def signature(stat: os.stat_result) -> list[int]:
    """What changes when a file's content can have changed: size, mtime, ctime, inode."""
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def read_hashed(path: Path, known: list | None) -> tuple[list, bytes]:
    """([signature or None, sha256], content): `known` reused while the file's signature matches.

    Safe to run on another thread; the signature is the open file's, and it is withheld when
    the file changed within a second of being read (its timestamp may not show a further change
    in the same tick).
    """
    with open(path, "rb", buffering=0) as handle:
        stat = os.fstat(handle.fileno())
        read_at = time.time_ns()
        data = handle.readall()
    if known is not None and known[0] == signature(stat):
        return known, data
    racy = max(stat.st_mtime_ns, stat.st_ctime_ns) > read_at - _RACY_NS
    return [None if racy else signature(stat), sha256(data)], data


def sha256(data: bytes) -> str:
    """Hex sha256; `update` releases the GIL for large inputs (the constructor does not, on 3.11)."""
    digest = hashlib.sha256()
    digest.update(data)
    return digest.hexdigest()


class DecodedCache:
    """Records of one folder's files under one set of preprocessing settings.

    A pack is one torch file: a JSON header (settings, file signatures, records without tensors)
    and two stacked tensors (every record's image rows, every series' volume), so reading it back
    costs one JSON parse and two tensor reads, not one unpickling per file.
    `folder=None` keeps everything in memory only (nothing read or written on disk).
    """

    def __init__(self, folder: Path | None, scanned: Path, settings: dict[str, Any]):
        self.settings = json.loads(json.dumps({**settings, "format": CACHE_FORMAT, "versions": decoder_versions()}))
        name = f"{digest(str(scanned.resolve()))[:16]}-{digest(self.settings)[:16]}.pt"
        self.path = Path(folder) / name if folder is not None else None
        self.files: dict[str, list] = {}
        self.records: dict[str, dict] = {}
        self.volumes: dict[str, dict] = {}
        self._load()
        self.seen_files: dict[str, list] = {}
        self.used_records: set[str] = set()
        self.used_volumes: set[str] = set()
        self.dirty = False
        self.hits = self.misses = 0

    def _load(self) -> None:
        if self.path is None or not self.path.is_file():
            return
        try:
            payload = torch.load(self.path, weights_only=True)
            header = json.loads(payload["header"])
            if header["settings"] != self.settings:
                return
            self.records = unpack(header["records"], payload["images"], "images")
            self.volumes = unpack(header["volumes"], payload["volumes"], "volume")
            self.files = header["files"]
        except Exception as error:  # a damaged or foreign pack is rebuilt, never trusted
            log.warning("ignoring unreadable decoded cache %s: %s", self.path, error)
            self.records, self.volumes, self.files = {}, {}, {}

    def unchanged(self, relative: str, path: Path) -> tuple[list, dict, bool] | None:
        """(entry, record, False) when the file's signature and its record are known, else None."""
        known = self.files.get(relative)
        if known is None or known[0] is None:
            return None
        try:
            if known[0] != signature(path.stat()):
                return None
        except OSError:
            return None
        record = self.records.get(known[1])
        return (known, record, False) if record is not None else None

    def peek(self, sha: str) -> dict | None:
        """The stored record of this content, if any, without booking it (safe on any thread)."""
        return self.records.get(sha)

    def book(self, relative: str, entry: list, record: dict, fresh: bool) -> None:
        """Book one file of this pass: its [signature, sha256] entry and its record (`fresh`: just made)."""
        if entry is not self.files.get(relative):
            self.dirty = True
        self.seen_files[relative] = entry
        self.used_records.add(entry[1])
        if fresh:
            self.records[entry[1]] = record
            self.misses += 1
            self.dirty = True
        else:
            self.hits += 1

    def volume(self, key: str) -> dict | None:
        record = self.volumes.get(key)
        if record is not None:
            self.used_volumes.add(key)
        return record

    def put_volume(self, key: str, record: dict) -> None:
        self.volumes[key] = record
        self.used_volumes.add(key)
        self.dirty = True

    def save(self) -> None:
        """Write the records this pass used (older ones are dropped), atomically; no-op when unchanged."""
        unchanged = (
            not self.dirty
            and self.seen_files.keys() == self.files.keys()
            and self.used_records == self.records.keys()
            and self.used_volumes == self.volumes.keys()
        )
        if self.path is None or unchanged:
            return
        records, images = pack({sha: self.records[sha] for sha in self.used_records}, "images")
        volumes, stacked = pack({key: self.volumes[key] for key in self.used_volumes}, "volume")
        header = {"settings": self.settings, "files": self.seen_files, "records": records, "volumes": volumes}
        try:
            write_atomically(self.path, {"header": json.dumps(header), "images": images, "volumes": stacked})
        except OSError as error:  # a read-only cache slows later passes but breaks nothing
            log.warning("cannot write decoded cache %s: %s", self.path, error)


def pack(records: dict[str, dict], field: str) -> tuple[dict[str, dict], torch.Tensor]:
    """Records without their tensors (each gets "rows": [start, count]) and the tensors concatenated."""
    header, tensors, start = {}, [], 0
    for key in sorted(records):
        record = {name: value for name, value in records[key].items() if name != field}
        tensor = records[key].get(field)
        if tensor is not None:
            tensor = tensor if field == "images" else tensor[None]
            record["rows"] = [start, len(tensor)]
            tensors.append(tensor)
            start += len(tensor)
        header[key] = record
    return header, torch.cat(tensors) if tensors else torch.empty(0)


def unpack(header: dict[str, dict], stacked: torch.Tensor, field: str) -> dict[str, dict]:
    """The inverse of `pack`: tensors are views into the stacked one."""
    records = {}
    for key, record in header.items():
        record = dict(record)
        if "rows" in record:
            start, count = record.pop("rows")
            record[field] = stacked[start : start + count] if field == "images" else stacked[start]
        records[key] = record
    return records


def write_atomically(path: Path, payload: dict) -> None:
    """torch.save to a temporary file beside `path`, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            torch.save(payload, handle)
        os.replace(handle.name, path)
    finally:
        Path(handle.name).unlink(missing_ok=True)
