"""A Lightning data module over a site's DICOM files: 2-D images or 3-D series, with their labels.

What is scanned: every file under the site folder (or its `dicom_dir` sub-folder), any names,
nested. Not read and not reported: sidecars that describe data rather than hold images (`.csv`,
`.json`, `.ndjson`, `.ndjson.gz`, `.txt`, `.md`), hidden files (a name or folder starting with
"."), and DICOMDIR indexes (by name, or by their Media Storage Directory SOP class). Every other
file is counted in `found_files` and either becomes an item or is reported in `skipped` with its
reason: not DICOM, unreadable, no pixel data, no decoder for its transfer syntax, pixels that do
not decode, an unsupported photometric interpretation, a series that is not one volume, no label
or an unknown label. Label rows that name no image found are reported once, as a count and the
first keys.

Pixels: see `flip.data.dicom.pixels` (2-D) and `flip.data.dicom.series` (3-D). Decoded tensors
are cached on disk (`flip.data.dicom.cache`), so later rounds and runs do not decode again.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from flip.data import default_cache_dir
from flip.data.base import Item, SiteDataModule
from flip.data.dicom.cache import DecodedCache, read_hashed
from flip.data.dicom.files import Preprocess, list_files, prefetch, read_record
from flip.data.dicom.labels import (
    KEY_COLUMNS,
    UNLABELLED,
    VOLUME_KEY_COLUMNS,
    Labeller,
    LabelRow,
    Verdict,
    attribute_tag,
    read_label_rows,
)
from flip.data.dicom.pixels import CHANNELS, FRAMES, describe, load_image, one_thread
from flip.data.dicom.series import Slice, SeriesError, build_volume, group_series, order_slices, series_key
from flip.errors import MissingData

log = logging.getLogger("flip.data")

__all__ = ["DicomDataModule", "load_image", "read_manifest", "MODES"]

MODES = ("image", "volume")

def item_keys(meta: Mapping[str, str], relative: str) -> dict[str, str]:
    """The values a label row may be keyed by, for one file."""
    return {"path": relative, **{column: meta.get(column, "") for column in KEY_COLUMNS if column != "path"}}


def series_paths(groups: Mapping[str, Sequence[Slice]]) -> dict[str, str]:
    """Where each series lives, for reports: its file, the folder its files share when no other
    series shares it, else its first file and how many more."""
    common = {
        uid: members[0].relative if len(members) == 1 else os.path.commonpath([m.relative for m in members]) or "."
        for uid, members in groups.items()
    }
    shared = Counter(common.values())
    return {
        uid: path if shared[path] == 1 else f"{groups[uid][0].relative} (+{len(groups[uid]) - 1} more)"
        for uid, path in common.items()
    }


def fresh_outcome(entry: list, data: bytes, cache: DecodedCache, preprocess: Preprocess) -> tuple[list, dict, bool]:
    """A read file's (entry, record, fresh): the cached record of its content, else one parsed from `data`."""
    record = cache.peek(entry[1])
    if record is not None:
        return entry, record, False
    return entry, read_record(data, preprocess), True


class DicomDataModule(SiteDataModule):
    """Labelled DICOM images (or series) of one site, with every unusable file reported.

    After `setup()`, besides the base class's report: `found_files` (files scanned, sidecars and
    DICOMDIR aside), `transfer_syntaxes` and `modalities` (Counters over readable DICOM files),
    `unlabelled` (items kept without a label when `require_labels=False`), `files_used` and, in
    volume mode, `volume_spacing` (output voxel spacing in mm per SeriesInstanceUID).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        site: str | None = None,
        labels: str | None = "labels.csv",
        key_column: str = "SOPInstanceUID",
        label_column: str = "label",
        patient_column: str = "PatientID",
        image_size: int = 64,
        window_center: float | None = None,
        window_width: float | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        min_samples: int = 10,
        synthetic: Mapping | None = None,
        cache_dir: str | Path | None = None,
        partition: Mapping | None = None,
        dicom_dir: str | None = None,
        mode: str = "image",
        channels: int = 1,
        frames: str = "middle",
        volume_size: Sequence[int] | None = None,
        label_attribute: str | None = None,
        label_map: Mapping[str, int] | None = None,
        num_classes: int | None = None,
        require_labels: bool = True,
        cache: bool = True,
    ):
        super().__init__(
            root, site, val_fraction, test_fraction, batch_size, num_workers, seed, min_samples, partition,
            synthetic=synthetic, cache_dir=cache_dir,
        )  # fmt: skip
        check_options(mode, key_column, channels, frames, volume_size, window_center, window_width)
        check_labels(labels, label_attribute, label_map, num_classes, require_labels)
        self.labels = labels
        self.key_column = key_column
        self.label_column = label_column
        self.patient_column = patient_column
        self.image_size = image_size
        self.window_center = window_center
        self.window_width = window_width
        self.dicom_dir = dicom_dir
        self.mode = mode
        self.channels = channels
        self.frames = frames
        self.volume_size = tuple(int(v) for v in volume_size) if volume_size is not None else (image_size,) * 3
        self.label_attribute = label_attribute
        self.label_map = dict(label_map) if label_map is not None else None
        self.num_classes = num_classes
        self.require_labels = require_labels
        self.cache = cache
        self._reset_report()

    def _reset_report(self) -> None:
        self.found_files = 0
        self.transfer_syntaxes: Counter[str] = Counter()
        self.modalities: Counter[str] = Counter()
        self.unlabelled = 0
        self.files_used: list[str] = []
        self.volume_spacing: dict[str, tuple[float, float, float]] = {}
        self.cache_hits = 0

    def setup(self, stage: str | None = None) -> None:
        """As the base class; unlabelled items (label -1) are counted in `unlabelled`, not `label_counts`."""
        super().setup(stage)
        if UNLABELLED in self.label_counts:
            self.unlabelled = self.label_counts.pop(UNLABELLED)

    def inventory(self) -> dict[str, dict[str, int]]:
        return {"transfer_syntaxes": dict(self.transfer_syntaxes), "modalities": dict(self.modalities)}

    # -- reading a site

    def load_items(self, site_dir: Path) -> list[Item]:
        self._reset_report()
        scan_dir = self._scan_dir(site_dir)
        labeller = self._labeller(site_dir)
        preprocess = self._preprocess()
        cache = DecodedCache(self._decoded_dir(), scan_dir, preprocess.settings())
        with one_thread():
            scanned = self._scan(site_dir, scan_dir, cache, preprocess, labeller)
            if self.mode == "image":
                items = self._image_items(scanned, labeller)
            else:
                items = self._volume_items(scanned, labeller, cache)
        self.cache_hits = cache.hits
        self._report_unmatched(labeller)
        cache.save()
        return items

    def _scan_dir(self, site_dir: Path) -> Path:
        scan_dir = site_dir / self.dicom_dir if self.dicom_dir else site_dir
        if not scan_dir.is_dir():
            raise MissingData(f"DICOM folder not found: {scan_dir} (data.dicom_dir={self.dicom_dir!r})")
        return scan_dir

    def _preprocess(self) -> Preprocess:
        window = (float(self.window_center), float(self.window_width)) if self.window_center is not None else None
        source = self.group_source()
        attributes = [self.label_attribute] if self.label_attribute else []
        attributes += [source[1]] if source and source[0] == "attribute" else []
        volume_size = self.volume_size if self.mode == "volume" else None
        return Preprocess(self.mode, self.image_size, window, self.channels, self.frames, volume_size, tuple(sorted(set(attributes))))

    def _decoded_dir(self) -> Path | None:
        return Path(self.cache_dir or default_cache_dir()).expanduser() / "decoded" if self.cache else None

    def _scan(
        self, site_dir: Path, scan_dir: Path, cache: DecodedCache, preprocess: Preprocess, labeller: Labeller
    ) -> list[tuple[Slice, dict]]:
        """Every candidate file's record (from the cache, else read); the usable ones with pixels."""
        usable = []
        prefix = scan_dir.relative_to(site_dir).as_posix() + "/" if scan_dir != site_dir else ""
        files = [(prefix + name, path) for name, path in list_files(scan_dir, self._decoded_dir())]
        for (relative, path), outcome in zip(files, self._outcomes(files, cache, preprocess), strict=True):
            if isinstance(outcome, OSError):  # vanished, unreadable, a dangling link
                self.found_files += 1
                self.skip(relative, f"cannot read file: {describe(outcome)}")
                continue
            entry, record, fresh = outcome
            cache.book(relative, entry, record, fresh)
            if record.get("dicomdir"):
                continue
            self.found_files += 1
            self._count(record["meta"], relative, labeller)
            if record["reason"]:
                self.skip(relative, record["reason"])
            else:
                usable.append((Slice(relative, path, entry[1], record["meta"]), record))
        return usable

    @staticmethod
    def _outcomes(files: list[tuple[str, Path]], cache: DecodedCache, preprocess: Preprocess) -> list:
        """Per file ([signature, sha256], record, fresh) or the OSError that stopped reading it.

        Unchanged files (same signature, record cached) are answered from the cache here. The
        rest are read and hashed on a helper thread ahead of this one (file I/O and sha256
        release the GIL), which parses and decodes the misses from those bytes.
        """
        outcomes = [cache.unchanged(relative, path) for relative, path in files]
        missing = [index for index, outcome in enumerate(outcomes) if outcome is None]
        read = prefetch(lambda pair: read_hashed(pair[1], cache.files.get(pair[0])), [files[i] for i in missing])
        for index, result in zip(missing, read, strict=True):
            outcomes[index] = result if isinstance(result, OSError) else fresh_outcome(*result, cache, preprocess)
        return outcomes

    def _count(self, meta: Mapping[str, str], relative: str, labeller: Labeller) -> None:
        if meta:
            self.transfer_syntaxes[meta["TransferSyntax"]] += 1
            self.modalities[meta.get("Modality") or "unknown"] += 1
        labeller.see(item_keys(meta, relative))

    # -- items

    def _image_items(self, scanned: list[tuple[Slice, dict]], labeller: Labeller) -> list[Item]:
        items = []
        for file, record in scanned:
            verdict = self._verdict(labeller, file.meta, file.relative)
            if verdict is None:
                continue
            uid = file.meta.get("SOPInstanceUID") or file.relative
            images = record["images"]
            patient, group = self._patient(verdict.row, file.meta, file.relative), self._group(verdict.row, file.meta)
            for index, image in enumerate(images):
                key = uid if len(images) == 1 else f"{uid}#frame{index}"
                items.append(Item((image,), verdict.label, patient, key, file.sha, group))
            self.files_used.append(file.relative)
        return items

    def _volume_items(self, scanned: list[tuple[Slice, dict]], labeller: Labeller, cache: DecodedCache) -> list[Item]:
        items = []
        groups = group_series([file for file, _ in scanned])
        paths = series_paths(groups)
        for uid, members in groups.items():
            key = series_key(members)
            record = cache.volume(key)
            if record is None:
                record = self._volume_record(members)
                cache.put_volume(key, record)
            where = paths[uid]
            if record["reason"]:
                self.skip(where, f"series {uid}: {record['reason']}")
                continue
            meta = members[0].meta
            verdict = self._verdict(labeller, meta, where)
            if verdict is None:
                continue
            patient, group = self._patient(verdict.row, meta, where), self._group(verdict.row, meta)
            items.append(Item((record["volume"],), verdict.label, patient, uid, key, group))
            self.volume_spacing[uid] = tuple(record["spacing"])
            self.files_used.extend(member.relative for member in members)
        return items

    def _volume_record(self, members: list[Slice]) -> dict:
        window = self._preprocess().window
        try:
            ordered, positions = order_slices(members)
            volume, spacing = build_volume(ordered, positions, self.volume_size, window, self.channels)
        except SeriesError as error:
            return {"reason": str(error)}
        except Exception as error:  # a slice that parsed once but breaks the volume steps
            return {"reason": f"cannot build the volume: {describe(error)}"}
        return {"reason": None, "volume": volume, "spacing": list(spacing)}

    def _verdict(self, labeller: Labeller, meta: Mapping[str, str], where: str) -> Verdict | None:
        """The item's label, or None after reporting why it is left out."""
        attribute = meta.get(f"attribute:{self.label_attribute}", "") if self.label_attribute else ""
        verdict = labeller.verdict(item_keys(meta, where), attribute)
        if verdict.problem is None or (verdict.problem == "missing" and not self.require_labels):
            return verdict
        self.skip(where, verdict.reason)
        return None

    def _patient(self, row: LabelRow | None, meta: Mapping[str, str], where: str) -> str:
        """The manifest's patient, else the header's PatientID, else one patient per item."""
        return (row.patient if row else "") or meta.get("PatientID", "") or f"image:{where}"

    def _group(self, row: LabelRow | None, meta: Mapping[str, str]) -> str:
        source = self.group_source()
        if source and source[0] == "attribute":
            return meta.get(f"attribute:{source[1]}", "")
        return row.group if row else ""

    # -- labels

    def _labeller(self, site_dir: Path) -> Labeller:
        rows = None
        if self.label_attribute is None and self.labels is not None:
            path = Path(self.labels) if Path(self.labels).is_absolute() else site_dir / self.labels
            if path.is_file():
                source = self.group_source()
                group_column = source[1] if source and source[0] == "column" else None
                rows = read_label_rows(path, self.key_column, self.label_column, self.patient_column, group_column)
            elif self.require_labels:
                raise MissingData(
                    f"labels CSV not found: {path} (data.labels={self.labels!r}); name the manifest in data.labels, "
                    "read labels from a header with data.label_attribute, or look at the files unlabelled with "
                    "`flip data inspect ... --no-labels`"
                )
            else:
                log.info("no labels CSV at %s: every item is unlabelled", path)
        name = Path(self.labels).name if self.labels else "labels"
        return Labeller(rows, self.key_column, self.label_attribute, self.label_map, self.num_classes, name)

    def _report_unmatched(self, labeller: Labeller) -> None:
        keys = labeller.unmatched()
        if keys:
            shown = ", ".join(repr(key) for key in keys[:5]) + (", ..." if len(keys) > 5 else "")
            total = len(labeller.rows)
            self.skip(str(self.labels), f"{len(keys)} of {total} label row(s) match no image found ({self.key_column}): {shown}")


def check_options(
    mode: str,
    key_column: str,
    channels: int,
    frames: str,
    volume_size: Sequence[int] | None,
    window_center: float | None,
    window_width: float | None,
) -> None:
    """Raise ValueError for an impossible combination of pixel and key options."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    allowed = KEY_COLUMNS if mode == "image" else VOLUME_KEY_COLUMNS
    if key_column not in allowed:
        raise ValueError(f"key_column must be one of {allowed} in {mode} mode, not {key_column!r}")
    if channels not in CHANNELS:
        raise ValueError(f"channels must be 1 or 3, not {channels!r}")
    if frames not in FRAMES:
        raise ValueError(f"frames must be one of {FRAMES}, not {frames!r}")
    if volume_size is not None and (len(volume_size) != 3 or min(int(v) for v in volume_size) < 1):
        raise ValueError(f"volume_size must be three positive sizes [D, H, W], not {list(volume_size)}")
    if (window_center is None) != (window_width is None):
        raise ValueError("set both window_center and window_width, or neither")


def check_labels(
    labels: str | None, label_attribute: str | None, label_map: Mapping | None, num_classes: int | None, require_labels: bool
) -> None:
    """Raise ValueError when no label source is set though labels are required, or a source is malformed."""
    if labels is None and label_attribute is None and require_labels:
        raise ValueError("no label source: set `labels` (a CSV) or `label_attribute`, or require_labels=False")
    if label_attribute is not None:
        attribute_tag(label_attribute)
    if label_map is not None and not all(isinstance(v, int) and v >= 0 for v in label_map.values()):
        raise ValueError(f"label_map values must be class indices >= 0, not {dict(label_map)}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, not {num_classes}")


def read_manifest(
    path: Path, key_column: str, label_column: str, patient_column: str, group_column: str | None = None
) -> dict[str, tuple[int, str, str]]:
    """Map each key to (integer label, patient, group); patient and group are "" when the CSV lacks them."""
    rows = read_label_rows(path, key_column, label_column, patient_column, group_column)
    return {key: (_parse_label(row.value, path, row.line), row.patient, row.group) for key, row in rows.items()}


def _parse_label(value: str, path: Path, line: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path}:{line}: label {value!r} is not an integer") from None
