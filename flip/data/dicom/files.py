"""One DICOM file to one record: what flip scans, what it parses, and what it keeps.

A record is {"reason": why the file is unusable or None, "meta": the header fields kept, and in
image mode "images": [frames, channels, size, size]}; a DICOMDIR gives {"dicomdir": True}.
Records are what the decoded cache stores, so everything that shapes one is in `Preprocess`.
"""

from __future__ import annotations

import functools
import io
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from flip.data.dicom.labels import attribute_tag, attribute_text
from flip.data.dicom.pixels import PixelError, describe, load_frames, raw_text, transfer_syntax, transfer_syntax_name

# Files read and hashed ahead of the parsing thread: enough to ride out a slow read, few enough
# that large files do not pile up in memory.
READ_AHEAD = 4
T = TypeVar("T")
R = TypeVar("R")
SIDECARS = (".csv", ".json", ".ndjson", ".ndjson.gz", ".txt", ".md")
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
RAW_DATASET = "not a DICOM Part-10 file: a raw data set without the 'DICM' header and file meta"
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
PIXEL_TAGS = (0x7FE00001, 0x7FE00002, 0x7FE00008, 0x7FE00009, 0x7FE00010)  # offset tables and pixel data
# Image Pixel module, rescale, windows, LUTs and palettes: what decoding and preprocessing read.
PIXEL_MODULE_KEYWORDS = (
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelPaddingValue", "PixelPaddingRangeLimit",
    "SmallestImagePixelValue", "LargestImagePixelValue", "RescaleIntercept", "RescaleSlope", "RescaleType",
    "WindowCenter", "WindowWidth", "VOILUTFunction", "ModalityLUTSequence", "VOILUTSequence",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "AlphaPaletteColorLookupTableDescriptor",
    "PaletteColorLookupTableUID", "RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData", "AlphaPaletteColorLookupTableData", "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData", "SegmentedBluePaletteColorLookupTableData",
    "SegmentedAlphaPaletteColorLookupTableData", "ICCProfile", "ColorSpace",
)  # fmt: skip
# Header fields kept per file: label keys and counters always, geometry for volumes.
HEADER_KEYWORDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "AccessionNumber", "PatientID", "Modality")
GEOMETRY_KEYWORDS = ("InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns", "NumberOfFrames")


@dataclass(frozen=True)
class Preprocess:
    """Everything that changes a file's tensor or the header fields kept: the cache key's settings."""

    mode: str
    image_size: int
    window: tuple[float, float] | None
    channels: int
    frames: str
    volume_size: tuple[int, int, int] | None
    attributes: tuple[str, ...]

    @property
    def keywords(self) -> tuple[str, ...]:
        return HEADER_KEYWORDS + (GEOMETRY_KEYWORDS if self.mode == "volume" else ())

    @functools.cached_property
    def tags(self) -> list[int]:
        """What read_record parses (skipping the rest is cheaper): the pixel module, rescale,
        windows and LUTs, the pixel data, the character set, the header keywords and the
        configured attributes."""
        keywords = (*PIXEL_MODULE_KEYWORDS, "SpecificCharacterSet", *self.keywords)
        wanted = {*PIXEL_TAGS, *(tag_for_keyword(keyword) for keyword in keywords)}
        return sorted(wanted | {int(attribute_tag(name)) for name in self.attributes})

    def settings(self) -> dict:
        return {**asdict(self), "header": self.keywords}


def is_ignored(relative: Path) -> bool:
    """Sidecars, hidden files and DICOMDIR by name: not images, never read nor reported."""
    return any(part.startswith(".") for part in relative.parts[:-1]) or is_ignored_name(relative.name)


def is_ignored_name(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith(SIDECARS) or lowered == "dicomdir" or name.startswith(".")


def list_files(folder: Path, exclude: Path | None = None) -> list[tuple[str, Path]]:
    """(path relative to folder, path) of every file not ignored, sorted; hidden folders and
    `exclude` (flip's own cache, when it lies inside the data) are not entered."""
    found = []
    root = os.path.realpath(folder)
    excluded = os.path.realpath(exclude) if exclude is not None else None
    if excluded is not None and os.path.commonpath([root, excluded]) != root:
        excluded = None  # outside the data (os.walk follows no links): no folder to check
    for parent, folders, names in os.walk(folder):
        folders[:] = [
            name
            for name in folders
            if not name.startswith(".") and (excluded is None or os.path.realpath(os.path.join(parent, name)) != excluded)
        ]
        relative = Path(parent).relative_to(folder).as_posix()
        base = "" if relative == "." else relative + "/"
        found.extend((base + name, Path(parent, name)) for name in names if not is_ignored_name(name))
    return sorted(found, key=lambda pair: pair[0])


def header_text(ds: pydicom.Dataset, keyword: str) -> str:
    """A header value as text, multi-values joined by backslashes; "" when absent or malformed."""
    try:
        text = raw_text(ds, keyword)
        value = ds.get(keyword) if text is None else text
    except Exception:  # a malformed value is as good as none
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(str(part) for part in value)
    return str(value).strip()


def read_record(data: bytes, preprocess: Preprocess) -> dict:
    """What one file holds: {"reason": why unusable or None, "meta": header fields, "images": tensor}.

    `images` ([frames, channels, size, size]) only in image mode; a DICOMDIR gives {"dicomdir": True}.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), specific_tags=preprocess.tags)
    except InvalidDicomError:
        return {"reason": not_dicom_reason(data), "meta": {}}
    except Exception as error:  # a damaged file may fail anywhere in the parser
        return {"reason": f"unreadable DICOM: {describe(error)}", "meta": {}}
    if header_text(ds.file_meta, "MediaStorageSOPClassUID") == DICOMDIR_SOP_CLASS:
        return {"reason": None, "meta": {}, "dicomdir": True}
    meta = {keyword: header_text(ds, keyword) for keyword in preprocess.keywords}
    meta |= {f"attribute:{name}": attribute_text(ds, name) for name in preprocess.attributes}
    meta["TransferSyntax"] = transfer_syntax_name(transfer_syntax(ds))
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        return {"reason": "no pixel data", "meta": meta}
    if preprocess.mode == "volume":
        return {"reason": None, "meta": meta}
    try:
        window = preprocess.window or (None, None)
        images = load_frames(ds, preprocess.image_size, *window, preprocess.channels, preprocess.frames)
    except PixelError as error:
        return {"reason": str(error), "meta": meta}
    except Exception as error:  # odd headers can break the LUT or colour steps after decoding
        return {"reason": f"cannot preprocess pixels: {describe(error)}", "meta": meta}
    return {"reason": None, "meta": meta, "images": images}


def not_dicom_reason(data: bytes) -> str:
    """Why a file without the Part-10 header is left out: a raw data set, or not DICOM at all."""
    try:
        raw = pydicom.dcmread(io.BytesIO(data), force=True)
        is_raw = "SOPClassUID" in raw
    except Exception:  # forced parsing of arbitrary bytes fails in many ways
        is_raw = False
    return RAW_DATASET if is_raw else "not a DICOM file"


def prefetch(function: Callable[[T], R], inputs: Sequence[T], ahead: int = READ_AHEAD) -> Iterator[R | OSError]:
    """`function` over `inputs`, in order, on one helper thread at most `ahead` inputs ahead of the
    consumer (bounded, so a large site is never held in memory); an OSError is yielded in place
    of its result."""

    def guarded(value: T) -> R | OSError:
        try:
            return function(value)
        except OSError as error:
            return error

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flip-dicom") as pool:
        pending: deque[Future] = deque(pool.submit(guarded, value) for value in inputs[:ahead])
        for value in inputs[ahead:]:
            result = pending.popleft().result()
            pending.append(pool.submit(guarded, value))
            yield result
        while pending:
            yield pending.popleft().result()
