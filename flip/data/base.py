"""What every flip data source shares: one site's labelled items, split by patient, partitionable.

A source subclasses `SiteDataModule` and implements `load_items` (read the site's folder into
`Item`s, recording every unusable file in `self.skipped` with its reason). The base class does the
rest the same way for DICOM, FHIR, text and joins: partitioning a pooled data set into sites,
patient-level train/val/test splits, the data fingerprint, `data.min_samples`, and the loaders.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from flip.data.partition import natural_key, site_share
from flip.errors import DataError, MissingData

log = logging.getLogger("flip.data")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Item:
    """One usable example: its input tensor(s) and what splits, partitions and fingerprints need."""

    inputs: tuple[torch.Tensor, ...]
    label: int
    patient: str
    key: str  # a stable identifier: SOPInstanceUID, resource id, note id
    content_sha256: str
    group: str = ""  # the site this item names, for by_site partitions from a column or attribute


class SiteDataModule(L.LightningDataModule):
    """Labelled items of one site, decoded once and split by patient into train/val/test.

    After `setup()`: `num_items_found` (usable items), `skipped` ((path, reason) per unusable
    item), `label_counts`, `split_sizes`, `fingerprint` (sha256 over sorted (key, content hash,
    label); no patient data) and `site_name`.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        site: str | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        min_samples: int = 10,
        partition: Mapping | None = None,
        *,
        synthetic: Mapping | None = None,
        cache_dir: str | Path | None = None,
    ):
        super().__init__()
        if root is None and synthetic is None:
            raise ValueError(f"{type(self).__name__} needs `root` (the folder of this site's data) or `synthetic` parameters")
        if not (val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
        self.root = Path(root).expanduser() if root is not None else None
        self.site = site
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.min_samples = min_samples
        # One part of a pooled data set: kind, source, name, alpha, min_size, seed, and either
        # the site's `group` (by_site from a column or attribute) or its index of num_partitions.
        self.partition = dict(partition) if partition is not None else None
        self.synthetic = dict(synthetic) if synthetic is not None else None
        self.cache_dir = cache_dir
        self.site_name = site or (self.root.name if self.root is not None else None)
        self.num_items_found = 0
        self.skipped: list[tuple[str, str]] = []
        self.label_counts: dict[int, int] = {}
        self.fingerprint: str | None = None
        self.datasets: dict[str, TensorDataset] = {}

    # -- for subclasses

    def resolve_root(self) -> Path:
        """The data root; with `synthetic` and no root, flip's generated data set in its cache."""
        if self.root is None:
            from flip.data import synthetic_root

            return synthetic_root(self.synthetic, self.cache_dir)
        return self.root

    def load_items(self, site_dir: Path) -> list[Item]:
        raise NotImplementedError

    def skip(self, path: str, reason: str) -> None:
        """Leave one item out, with its reason in the log and in `skipped`."""
        log.warning("skipping %s: %s", path, reason)
        self.skipped.append((path, reason))

    def inventory(self) -> dict[str, dict[str, int]]:
        """Source-specific counts for `flip data inspect` (e.g. transfer syntaxes, resource types)."""
        return {}

    def group_source(self) -> tuple[str, str] | None:
        """('column' | 'attribute', name) when sites come from a manifest column or file attribute."""
        partition = self.partition
        if partition is None or partition["kind"] != "by_site" or partition.get("source") == "folder":
            return None
        return partition["source"], partition["name"]

    # -- Lightning hooks

    def prepare_data(self) -> None:
        self.site_dir()

    def site_dir(self) -> Path:
        """The folder holding this site's data."""
        root = self.root = self.resolve_root()
        site_dir = root / self.site if self.site else root
        if not site_dir.is_dir():
            raise MissingData(f"data folder not found: {site_dir} (data.root, data.site)")
        return site_dir

    def setup(self, stage: str | None = None) -> None:
        """Read every item once, partition, check `min_samples`, split by patient; later calls reuse it."""
        if self.datasets:
            return
        site_dir = self.site_dir()
        self.site_name = self.site or site_dir.name
        self.skipped = []
        items = self.load_items(site_dir)
        if self.partition is not None:  # a simulated site: its share of a pooled data set
            items, self.site_name = site_share(items, self.partition)
        if len(items) < self.min_samples:
            raise DataError(
                f"site {self.site_name}: {len(items)} usable item(s) in {site_dir}, fewer than "
                f"data.min_samples={self.min_samples} ({len(self.skipped)} skipped)"
            )
        self.num_items_found = len(items)
        self.label_counts = dict(sorted(Counter(item.label for item in items).items()))
        self.fingerprint = fingerprint(items)
        splits = split_by_patient([i.patient for i in items], [i.label for i in items], self.val_fraction, self.test_fraction, self.seed)
        self.datasets = {name: tensor_dataset([items[i] for i in splits[name]]) for name in SPLITS}

    @property
    def split_sizes(self) -> tuple[int, int, int]:
        """(train, val, test) item counts; zeros before `setup()`."""
        return tuple(len(self.datasets[name]) if self.datasets else 0 for name in SPLITS)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # -- internals

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self.datasets[split], batch_size=self.batch_size, shuffle=shuffle, generator=generator, num_workers=self.num_workers
        )

    def site_groups(self) -> list[str]:
        """The site names a `by_site` column or attribute gives this data set, in natural order."""
        return sorted({item.group for item in self.load_items(self.site_dir())}, key=natural_key)

def split_by_patient(
    patients: list[str], labels: list[int], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[int]]:
    """Item indices per split; all items of a patient share a split, stratified by patient label."""
    patient_items, patient_label = defaultdict(list), {}
    for index, (patient, label) in enumerate(zip(patients, labels, strict=True)):
        patient_items[patient].append(index)
        patient_label[patient] = max(label, patient_label.get(patient, label))
    rng = np.random.default_rng(seed)
    splits = {name: [] for name in SPLITS}
    for label in sorted(set(patient_label.values())):
        stratum = sorted(p for p, patient_class in patient_label.items() if patient_class == label)
        shuffled = [stratum[i] for i in rng.permutation(len(stratum))]
        num_test, num_val = round(len(shuffled) * test_fraction), round(len(shuffled) * val_fraction)
        assigned = {"test": shuffled[:num_test], "val": shuffled[num_test : num_test + num_val]}
        assigned["train"] = shuffled[num_test + num_val :]
        for name in SPLITS:
            splits[name].extend(i for patient in assigned[name] for i in patient_items[patient])
    return {name: sorted(indices) for name, indices in splits.items()}


def tensor_dataset(items: list[Item]) -> TensorDataset:
    """Each input position stacked over items, then the labels (an empty split keeps its shapes unknown)."""
    labels = torch.tensor([item.label for item in items], dtype=torch.int64)
    if not items:
        return TensorDataset(labels)
    columns = zip(*(item.inputs for item in items))
    return TensorDataset(*(torch.stack(column) for column in columns), labels)


def fingerprint(items: list[Item]) -> str:
    """sha256 over the sorted (key, content hash, label) triples."""
    digest = hashlib.sha256()
    for key, content, label in sorted((item.key, item.content_sha256, item.label) for item in items):
        digest.update(f"{key},{content},{label}\n".encode())
    return digest.hexdigest()
