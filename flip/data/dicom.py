"""A Lightning data module over a folder of DICOM files plus a CSV manifest of labels."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pydicom
import torch
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_windowing
from torch.utils.data import DataLoader, TensorDataset

from flip.data import default_cache_dir
from flip.data.partition import partition_indices, partition_names
from flip.data.synthetic import ensure_synthetic_dicom

log = logging.getLogger("flip.data")

# Manifests and descriptions beside the images are not images: not read, not reported.
_SIDECARS = {".csv", ".json"}
_SPLITS = ("train", "val", "test")


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


@dataclass(frozen=True)
class _Item:
    """One usable image: its decoded pixels and what the split and fingerprint need."""

    image: torch.Tensor
    label: int
    patient: str
    sop_instance_uid: str
    file_sha256: str
    group: str = ""


class DicomDataModule(L.LightningDataModule):
    """Labelled DICOM images of one site, decoded once and split by patient into train/val/test.

    After `setup()`: `num_items_found` (usable labelled images), `skipped` ((relative path,
    reason) per unusable file), `label_counts`, `split_sizes`, `fingerprint` (sha256 over
    sorted (SOPInstanceUID, file sha256, label); no patient data) and `site_name`.
    """

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
        synthetic: Mapping | None = None,
        cache_dir: str | Path | None = None,
        partition: Mapping | None = None,
    ):
        super().__init__()
        if root is None and synthetic is None:
            raise ValueError("DicomDataModule needs `root` (a folder of DICOM files) or `synthetic` parameters")
        if key_column not in ("SOPInstanceUID", "path"):
            raise ValueError(f"key_column must be 'SOPInstanceUID' or 'path', not {key_column!r}")
        if not (val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
        if (window_center is None) != (window_width is None):
            raise ValueError("set both window_center and window_width, or neither")
        self.save_hyperparameters()
        self.root = Path(root) if root is not None else None
        self.site = site
        self.labels = labels
        self.key_column = key_column
        self.label_column = label_column
        self.patient_column = patient_column
        self.image_size = image_size
        self.window_center = window_center
        self.window_width = window_width
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.synthetic = dict(synthetic) if synthetic is not None else None
        self.cache_dir = cache_dir
        # One part of a split data set: kind, source, name, alpha, min_size, seed, index,
        # num_partitions, exclude (site folders that are not federation members).
        self.partition = dict(partition) if partition is not None else None
        self.site_name = site or (self.root.name if self.root is not None else None)
        self.num_items_found = 0
        self.skipped: list[tuple[str, str]] = []
        self.label_counts: dict[int, int] = {}
        self.fingerprint: str | None = None
        self.datasets: dict[str, TensorDataset] = {}

    def prepare_data(self) -> None:
        """Generate the synthetic data set if one was requested (cached on disk)."""
        self.site_dir()

    def site_dir(self) -> Path:
        """The folder holding this site's DICOM files and (by default) its labels CSV."""
        if self.root is None:
            self.root = ensure_synthetic_dicom(self.cache_dir or default_cache_dir(), **self.synthetic)
        if self.site is None and self._partition_by("folder"):
            self.site = self._partition_folder()
        site_dir = self.root / self.site if self.site else self.root
        if not site_dir.is_dir():
            raise FileNotFoundError(f"DICOM folder not found: {site_dir}")
        return site_dir

    def setup(self, stage: str | None = None) -> None:
        """Decode every labelled image once and split by patient; later calls reuse the result."""
        if self.datasets:
            return
        site_dir = self.site_dir()
        self.site_name = self.site or site_dir.name
        items = self._load_items(site_dir)
        if self.partition is not None and not self._partition_by("folder"):
            items = self._partition_items(items)
        self.num_items_found = len(items)
        self.label_counts = dict(sorted(Counter(item.label for item in items).items()))
        self.fingerprint = _fingerprint(items)
        patients, labels = [item.patient for item in items], [item.label for item in items]
        splits = split_by_patient(patients, labels, self.val_fraction, self.test_fraction, self.seed)
        self.datasets = {name: _tensor_dataset([items[i] for i in splits[name]], self.image_size) for name in _SPLITS}

    def _partition_by(self, source: str) -> bool:
        partition = self.partition
        return partition is not None and partition["kind"] == "by_site" and partition.get("source") == source

    def _partition_folder(self) -> str:
        """The site folder of partition `index`: sorted sub-folders of root, excluded ones aside."""
        exclude = set(self.partition.get("exclude") or ())
        folders = sorted(d.name for d in self.root.iterdir() if d.is_dir() and d.name not in exclude)
        index, wanted = self.partition["index"], self.partition["num_partitions"]
        if len(folders) < wanted:
            raise ValueError(f"by_site partition: {self.root} has {len(folders)} site folder(s) {folders} for {wanted} sites")
        return folders[index]

    def _partition_items(self, items: list[_Item]) -> list[_Item]:
        """This site's share of a pooled data set (iid, dirichlet, quantity, or by a column/attribute)."""
        partition = self.partition
        labels = [item.label for item in items]
        groups = [item.group for item in items] if partition["kind"] == "by_site" else None
        kwargs = {"labels": labels, "num_partitions": partition["num_partitions"], "groups": groups}
        parts = partition_indices(
            partition["kind"], seed=partition["seed"], alpha=partition.get("alpha", 0.5),
            min_size=partition.get("min_size", 1), **kwargs,
        )
        self.site_name = partition_names(partition["kind"], partition["num_partitions"], groups)[partition["index"]]
        return [items[i] for i in parts[partition["index"]]]

    @property
    def split_sizes(self) -> tuple[int, int, int]:
        """(train, val, test) image counts; zeros before `setup()`."""
        return tuple(len(self.datasets[name]) if self.datasets else 0 for name in _SPLITS)

    def _load_items(self, site_dir: Path) -> list[_Item]:
        manifest_path = self._manifest_path(site_dir)
        manifest = read_manifest(
            manifest_path, self.key_column, self.label_column, self.patient_column, self._group_column()
        )
        self.skipped = []
        items = []
        for path in sorted(p for p in site_dir.rglob("*") if p.is_file() and p.suffix.lower() not in _SIDECARS):
            relative = path.relative_to(site_dir).as_posix()
            item_or_reason = self._load_item(path, relative, manifest)
            if isinstance(item_or_reason, str):
                log.warning("skipping %s: %s", relative, item_or_reason)
                self.skipped.append((relative, item_or_reason))
            else:
                items.append(item_or_reason)
        if not items:
            raise ValueError(f"no usable labelled DICOM images in {site_dir} ({len(self.skipped)} file(s) skipped)")
        return items

    def _manifest_path(self, site_dir: Path) -> Path:
        path = Path(self.labels)
        path = path if path.is_absolute() else site_dir / path
        if not path.is_file():
            raise FileNotFoundError(f"labels CSV not found: {path}")
        return path

    def _load_item(self, path: Path, relative: str, manifest: dict[str, tuple[int, str]]) -> _Item | str:
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
        if self._partition_by("attribute"):
            group = str(ds.get(self.partition["name"], ""))
        try:
            image = load_image(ds, self.image_size, self.window_center, self.window_width)
        except Exception as error:  # decoders raise many kinds for damaged or unsupported pixels
            return f"cannot decode pixels: {type(error).__name__}: {error}"
        uid = str(ds.get("SOPInstanceUID", ""))
        return _Item(image, label, patient or f"image:{relative}", uid, hashlib.sha256(data).hexdigest(), group)

    def _group_column(self) -> str | None:
        return self.partition["name"] if self._partition_by("column") else None

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


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


def split_by_patient(
    patients: list[str], labels: list[int], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[int]]:
    """Item indices per split; all images of a patient share a split, stratified by patient label."""
    patient_items, patient_label = defaultdict(list), {}
    for index, (patient, label) in enumerate(zip(patients, labels, strict=True)):
        patient_items[patient].append(index)
        patient_label[patient] = max(label, patient_label.get(patient, label))
    rng = np.random.default_rng(seed)
    splits = {name: [] for name in _SPLITS}
    for label in sorted(set(patient_label.values())):
        stratum = sorted(p for p, patient_class in patient_label.items() if patient_class == label)
        shuffled = [stratum[i] for i in rng.permutation(len(stratum))]
        num_test, num_val = round(len(shuffled) * test_fraction), round(len(shuffled) * val_fraction)
        assigned = {"test": shuffled[:num_test], "val": shuffled[num_test : num_test + num_val]}
        assigned["train"] = shuffled[num_test + num_val :]
        for name in _SPLITS:
            splits[name].extend(i for patient in assigned[name] for i in patient_items[patient])
    return {name: sorted(indices) for name, indices in splits.items()}


def _tensor_dataset(items: list[_Item], image_size: int) -> TensorDataset:
    images = [item.image for item in items]
    stacked = torch.stack(images) if images else torch.empty(0, 1, image_size, image_size)
    return TensorDataset(stacked, torch.tensor([item.label for item in items], dtype=torch.int64))


def _fingerprint(items: list[_Item]) -> str:
    """sha256 over the sorted (SOPInstanceUID, file sha256, label) triples."""
    digest = hashlib.sha256()
    for uid, file_hash, label in sorted((item.sop_instance_uid, item.file_sha256, item.label) for item in items):
        digest.update(f"{uid},{file_hash},{label}\n".encode())
    return digest.hexdigest()
