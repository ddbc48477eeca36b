"""FHIR as a flip data source: a Bulk Data export (NDJSON) and/or Bundles, one feature row per
patient (`resources` validates each resource, `export` reads the files, `features` computes rows)."""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from flip.data.fhir.schema import fhir_problems
from flip.data import default_cache_dir
from flip.errors import MissingData
from flip.data.base import Item, SiteDataModule
from flip.data.fhir.features import (
    Row,
    Spec,
    continuous_columns,
    feature_names,
    features_from,
    label_from,
    patient_rows,
)

log = logging.getLogger("flip.data")
from flip.data.fhir.export import ParseCache, gc_paused, read_export
from flip.data.fhir.resources import EVENT_TYPES, ParseContext


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
