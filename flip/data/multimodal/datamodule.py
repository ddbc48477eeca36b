"""Multimodal data: a site's images, FHIR-derived features and notes joined per patient.

Each modality is read by its own source (DICOM, FHIR, text) from the same site folder; items are
joined on the patient id (DICOM PatientID = FHIR Patient.id = the notes' patient column). A
patient missing a modality is dropped (`missing: drop`) or kept with zeros for that input and a
0 in the mask (`missing: mask`), so the fusion model knows what it did not see.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from pathlib import Path
import torch
from omegaconf import OmegaConf

from flip.data.base import Item, SiteDataModule
from flip.data.fhir.datamodule import standardize_columns
from flip.data.fhir.features import continuous_columns
from flip.data.multimodal.schema import MODALITIES, SOURCES



def _plain(settings: Mapping) -> dict:
    """Settings as plain values; the modality's own root is left unset (the join gives the site's)."""
    if OmegaConf.is_config(settings):
        return OmegaConf.to_container(settings, resolve=True, throw_on_missing=False)
    return dict(settings)


def _source_class(modality: str) -> type:
    from hydra.utils import get_class

    return get_class(SOURCES[modality][0])


class MultimodalDataModule(SiteDataModule):
    """Per patient: (image, features, note ids — those configured — and a modality mask) → label."""

    def __init__(
        self,
        root: str | Path | None = None,
        site: str | None = None,
        image: Mapping | None = None,
        tabular: Mapping | None = None,
        text: Mapping | None = None,
        label_from: str = "tabular",
        missing: str = "mask",
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
        given = (("image", image), ("tabular", tabular), ("text", text))
        self.settings = {name: _plain(cfg) for name, cfg in given if cfg is not None}
        if len(self.settings) < 2 or label_from not in self.settings or missing not in ("drop", "mask"):
            raise ValueError(
                f"multimodal data needs two or more of {MODALITIES}, label_from among them and missing "
                f"drop or mask; got {sorted(self.settings)}, label_from={label_from!r}, missing={missing!r}"
            )
        self.modalities = [m for m in MODALITIES if m in self.settings]
        self.label_from = label_from
        self.missing = missing
        self.sources: dict[str, SiteDataModule] = {}

    def load_items(self, site_dir: Path) -> list[Item]:
        per_modality = {m: self._read(m, site_dir) for m in self.modalities}
        templates = {m: self._template(m, items) for m, items in per_modality.items()}
        labelled = per_modality[self.label_from]
        items = []
        for patient in sorted(set().union(*per_modality.values())):
            if patient not in labelled:
                self.skip(f"patient {patient}", f"no {self.label_from} data, which holds the label")
                continue
            absent = [m for m in self.modalities if patient not in per_modality[m]]
            if absent and self.missing == "drop":
                self.skip(f"patient {patient}", f"missing {', '.join(absent)} (data.missing: drop)")
                continue
            items.append(self._join(patient, per_modality, templates, labelled[patient].label))
        return items

    def setup(self, stage: str | None = None) -> None:
        fresh = not self.datasets
        super().setup(stage)
        tabular = self.sources.get("tabular")
        if fresh and tabular is not None and tabular.standardize:
            position = self.modalities.index("tabular")
            columns = continuous_columns(tabular.spec.features, tabular.spec.missing)
            standardize_columns(self.datasets, position, columns)

    def inventory(self) -> dict[str, dict[str, int]]:
        return {"items_per_modality": {m: source.num_items_found for m, source in self.sources.items()}}

    def _read(self, modality: str, site_dir: Path) -> dict[str, Item]:
        """The modality's usable items by patient (the first by key when a patient has several)."""
        source_class = _source_class(modality)
        accepted = inspect.signature(source_class).parameters
        settings = {key: value for key, value in self.settings[modality].items() if key in accepted}
        source = source_class(**{**settings, "root": str(site_dir), "site": None, "min_samples": 0, "partition": None})
        self.sources[modality] = source
        found = source.load_items(source.site_dir())
        for path, reason in source.skipped:
            self.skipped.append((f"{modality}:{path}", reason))
        source.num_items_found = len(found)
        by_patient: dict[str, Item] = {}
        for item in sorted(found, key=lambda item: item.key):
            by_patient.setdefault(item.patient, item)
        return by_patient

    def _template(self, modality: str, items: dict[str, Item]) -> torch.Tensor:
        if not items:
            raise ValueError(f"site {self.site_name}: no usable {modality} data, so its shape is unknown")
        return torch.zeros_like(next(iter(items.values())).inputs[0])

    def _join(self, patient: str, per_modality: dict, templates: dict, label: int) -> Item:
        inputs, mask, hashes = [], [], []
        for modality in self.modalities:
            item = per_modality[modality].get(patient)
            inputs.append(item.inputs[0] if item else templates[modality])
            mask.append(1.0 if item else 0.0)
            hashes.append(item.content_sha256 if item else "-")
        content = hashlib.sha256("|".join(hashes).encode()).hexdigest()
        group = next((per_modality[m][patient].group for m in self.modalities if patient in per_modality[m]), "")
        return Item((*inputs, torch.tensor(mask)), label, patient, patient, content, group)
