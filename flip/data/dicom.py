"""A Lightning data module over a folder of DICOM files plus a CSV manifest of labels."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_windowing

from flip.data import default_cache_dir
from flip.data.base import Item, SiteDataModule
from flip.data.synthetic import ensure_synthetic_dicom

# Manifests and descriptions beside the images are not images: not read, not reported.
_SIDECARS = {".csv", ".json"}


def load_image(
    ds: pydicom.Dataset, image_size: int, window_center: float | None = None, window_width: float | None = None
) -> torch.Tensor:
    """Decode one monochrome image into a float tensor of shape [1, image_size, image_size] in [0, 1].

    Applies the modality LUT (rescale), then the given window, else the header's first
    window, else min-max scaling; inverts MONOCHROME1 so bright always means dense.
    """
    photometric = ds.get("PhotometricInterpretation", "")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"unsupported PhotometricInterpretation {photometric!r} (need MONOCHROME1/2)")
    if int(ds.get("NumberOfFrames") or 1) != 1:
        raise ValueError(f"multi-frame images are not supported ({ds.NumberOfFrames} frames)")
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    scaled = _window(values, ds, window_center, window_width)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return _resize(torch.from_numpy(scaled).float(), image_size)


def _window(values: np.ndarray, ds: pydicom.Dataset, center: float | None, width: float | None) -> np.ndarray:
    """Window `values` into [0, 1] with pydicom's VOI windowing, or min-max without a window."""
    if center is None or width is None:
        center, width = _header_window(ds)
    if center is None or width is None:
        return _min_max(values)
    # pydicom maps the window onto the stored-value range; 1 unsigned bit makes that [0, 1].
    voi = pydicom.Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"
    voi.BitsStored, voi.PixelRepresentation = 1, 0
    voi.WindowCenter, voi.WindowWidth = center, width
    voi.VOILUTFunction = ds.get("VOILUTFunction") or "LINEAR"
    return apply_windowing(values, voi)


def _header_window(ds: pydicom.Dataset) -> tuple[float | None, float | None]:
    """The first Window Center/Width pair of the header, or (None, None)."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None, None
    return _first(ds.WindowCenter), _first(ds.WindowWidth)


def _first(value) -> float:
    """The first value of a possibly multi-valued DS element."""
    return float(value[0]) if isinstance(value, MultiValue) else float(value)


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _resize(image: torch.Tensor, image_size: int) -> torch.Tensor:
    resized = torch.nn.functional.interpolate(
        image[None, None], size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].clamp_(0.0, 1.0)


class DicomDataModule(SiteDataModule):
    """Labelled DICOM images of one site: a folder of Part-10 files plus a CSV manifest of labels."""

    def __init__(
        self,
        root: str | Path | None = None,
        site: str | None = None,
        labels: str = "labels.csv",
        key_column: str = "SOPInstanceUID",
        label_column: str = "label",
        patient_column: str = "PatientID",
        image_size: int = 64,
        window_center: float | None = None,
        window_width: float | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        min_samples: int = 1,
        synthetic: Mapping | None = None,
        cache_dir: str | Path | None = None,
        partition: Mapping | None = None,
    ):
        super().__init__(root, site, val_fraction, test_fraction, batch_size, num_workers, seed, min_samples, partition)
        if root is None and synthetic is None:
            raise ValueError("DicomDataModule needs `root` (a folder of DICOM files) or `synthetic` parameters")
        if key_column not in ("SOPInstanceUID", "path"):
            raise ValueError(f"key_column must be 'SOPInstanceUID' or 'path', not {key_column!r}")
        if (window_center is None) != (window_width is None):
            raise ValueError("set both window_center and window_width, or neither")
        self.labels = labels
        self.key_column = key_column
        self.label_column = label_column
        self.patient_column = patient_column
        self.image_size = image_size
        self.window_center = window_center
        self.window_width = window_width
        self.synthetic = dict(synthetic) if synthetic is not None else None
        self.cache_dir = cache_dir

    def resolve_root(self) -> Path:
        """The DICOM root; with `synthetic` and no root, the generated data set in flip's cache."""
        if self.root is None:
            return ensure_synthetic_dicom(self.cache_dir or default_cache_dir(), **self.synthetic)
        return self.root

    def load_items(self, site_dir: Path) -> list[Item]:
        manifest_path = self._manifest_path(site_dir)
        source = self.group_source()
        group_column = source[1] if source and source[0] == "column" else None
        manifest = read_manifest(manifest_path, self.key_column, self.label_column, self.patient_column, group_column)
        items = []
        for path in sorted(p for p in site_dir.rglob("*") if p.is_file() and p.suffix.lower() not in _SIDECARS):
            relative = path.relative_to(site_dir).as_posix()
            item_or_reason = self._load_item(path, relative, manifest)
            if isinstance(item_or_reason, str):
                self.skip(relative, item_or_reason)
            else:
                items.append(item_or_reason)
        return items

    def _manifest_path(self, site_dir: Path) -> Path:
        path = Path(self.labels)
        path = path if path.is_absolute() else site_dir / path
        if not path.is_file():
            raise FileNotFoundError(f"labels CSV not found: {path}")
        return path

    def _load_item(self, path: Path, relative: str, manifest: dict[str, tuple[int, str, str]]) -> Item | str:
        """The decoded item, or the reason the file cannot be used."""
        data = path.read_bytes()
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            return "not a DICOM file"
        except Exception as error:  # a damaged file may fail anywhere in the parser
            return f"unreadable DICOM: {type(error).__name__}: {error}"
        if "PixelData" not in ds:
            return "no pixel data"
        key = relative if self.key_column == "path" else str(ds.get("SOPInstanceUID", ""))
        if key not in manifest:
            return f"no label for {self.key_column} {key!r}"
        label, patient, group = manifest[key]
        source = self.group_source()
        if source and source[0] == "attribute":
            group = str(ds.get(source[1], ""))
        try:
            image = load_image(ds, self.image_size, self.window_center, self.window_width)
        except Exception as error:  # decoders raise many kinds for damaged or unsupported pixels
            return f"cannot decode pixels: {type(error).__name__}: {error}"
        uid = str(ds.get("SOPInstanceUID", ""))
        return Item((image,), label, patient or f"image:{relative}", uid, hashlib.sha256(data).hexdigest(), group)


def read_manifest(
    path: Path, key_column: str, label_column: str, patient_column: str, group_column: str | None = None
) -> dict[str, tuple[int, str, str]]:
    """Map each key to (label, patient, group); patient and group are "" when the CSV lacks them."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        required = (key_column, label_column, *([group_column] if group_column else []))
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        manifest = {}
        for line, row in enumerate(reader, start=2):
            key = Path(row[key_column]).as_posix() if key_column == "path" else row[key_column].strip()
            patient = (row.get(patient_column) or "").strip()
            group = (row.get(group_column) or "").strip() if group_column else ""
            manifest[key] = (_parse_label(row[label_column], path, line), patient, group)
    return manifest


def _parse_label(value: str, path: Path, line: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path}:{line}: label {value!r} is not an integer") from None
