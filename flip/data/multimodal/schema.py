"""Schema of `data=multimodal` (a site's images, FHIR features and notes joined per patient), and its rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

from flip.config.checks import check_node
from flip.data.dicom.schema import DicomDataConfig
from flip.data.fhir.schema import FhirDataConfig, fhir_problems
from flip.data.schema import SiteDataConfig
from flip.data.text.schema import TextDataConfig

MODALITIES = ("image", "tabular", "text")
# The source each modality is read with, and its schema.
SOURCES = {
    "image": ("flip.data.dicom.datamodule.DicomDataModule", DicomDataConfig),
    "tabular": ("flip.data.fhir.datamodule.FhirDataModule", FhirDataConfig),
    "text": ("flip.data.text.datamodule.TextDataModule", TextDataConfig),
}


@dataclass
class MultimodalDataConfig(SiteDataConfig):
    """Image, FHIR-derived features and notes of one site, joined per patient."""

    _target_: str = "flip.data.multimodal.datamodule.MultimodalDataModule"
    # The modalities' settings carry their own `_target_`s: the join builds them, not Hydra.
    _recursive_: bool = False
    # Each modality's settings are those of its own data option (dicom, fhir, text), minus root/site.
    image: Optional[Dict[str, Any]] = None
    tabular: Optional[Dict[str, Any]] = None
    text: Optional[Dict[str, Any]] = None
    label_from: str = "tabular"
    # A patient missing a modality: drop it, or mask (zeros plus a 0 in the modality mask).
    missing: str = "mask"


SCHEMAS: Dict[str, type] = {"data/multimodal": MultimodalDataConfig}


def rules(cfg: DictConfig) -> list[str]:
    """Each modality's settings, checked against its own source's schema and rules; [] for other data."""
    if cfg.data.get("_target_") != MultimodalDataConfig._target_:
        return []
    data = cfg.data
    configured = [m for m in MODALITIES if data.get(m)]
    problems = []
    if len(configured) < 2:
        problems.append(f"data: a multimodal join needs two or more of image, tabular, text; got {configured}")
    if data.label_from not in configured:
        problems.append(f"data.label_from: '{data.label_from}' is not a configured modality ({', '.join(configured)})")
    if data.missing not in ("drop", "mask"):
        problems.append(f"data.missing: must be drop or mask, got '{data.missing}'")
    for modality in configured:
        # The join sets each source's folder to the site's own.
        settings = {**OmegaConf.to_container(data[modality], resolve=True), "root": "-"}
        settings.pop("_schema_", None)
        problems += check_node(settings, SOURCES[modality][1], f"data.{modality}")
    if "tabular" in configured:
        problems += [p.replace("data.", "data.tabular.", 1) for p in fhir_problems(data.tabular)]
    return problems
