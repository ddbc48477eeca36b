"""Dataclass schemas for every config option, registered in Hydra's ConfigStore.

Each option file under ``conf/<group>/`` starts with ``defaults: [/schema/<group>/<name>@_here_]``,
so Hydra checks keys and types when it composes. ``register(lenient=True)`` swaps each schema
for a marker naming it; flip's validator then checks the plain config against the same
dataclasses itself and reports every problem instead of stopping at the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, SI

from flip.config.schema_fhir import FHIR_SCHEMAS
from flip.config.schema_privacy import PRIVACY_SCHEMAS
from flip.config.schema_common import ClassifierConfig, SiteDataConfig
from flip.config.schema_deployment import DeploymentFederationConfig
from flip.config.schema_text import TEXT_SCHEMAS
from flip.config.strategies import STRATEGY_SCHEMAS

SCHEMA_MARKER = "_schema_"
METRIC_NAMES = ("accuracy", "auroc", "f1", "precision", "recall")


class MonitorMode(Enum):
    min = "min"
    max = "max"


@dataclass
class FlipConfig:
    """Root keys that do not belong to any group."""

    seed: int = 42
    # Metric that picks the `best` checkpoint, and whether higher or lower is better.
    monitor: str = "val/loss"
    monitor_mode: MonitorMode = MonitorMode.min
    # Torch intra-op threads for training; null uses torch's default (all cores).
    threads: Optional[int] = None
    # Extra `_target_` patterns (fnmatch) this config is trusted to instantiate.
    allowed_targets: List[str] = field(default_factory=list)
    data: Any = MISSING
    model: Any = MISSING
    trainer: Any = MISSING
    federation: Any = MISSING
    privacy: Any = MISSING
    strategy: Any = MISSING
    partition: Any = MISSING


@dataclass
class DicomDataConfig(SiteDataConfig):
    _target_: str = "flip.data.dicom.DicomDataModule"
    batch_size: int = 16
    # Sub-folder of the site folder that holds the DICOM files (null: the whole site folder).
    dicom_dir: Optional[str] = None
    # Labels CSV (relative to the site folder, or absolute); null with label_attribute reads labels from headers.
    labels: Optional[str] = "labels.csv"
    key_column: str = "SOPInstanceUID"
    label_column: str = "label"
    patient_column: str = "PatientID"
    image_size: int = 64
    window_center: Optional[float] = None
    window_width: Optional[float] = None
    # image: one 2-D item per file (multi-frame: `frames` first, middle or all); volume: one item per series.
    mode: str = "image"
    channels: int = 1
    frames: str = "middle"
    volume_size: Optional[List[int]] = None
    # Labels from a header attribute instead of a CSV: its values mapped to classes.
    label_attribute: Optional[str] = None
    label_map: Optional[Dict[str, int]] = None
    num_classes: Optional[int] = None
    require_labels: bool = True
    # Keep decoded, preprocessed pixels in flip's cache, keyed by file content and settings.
    cache: bool = True


@dataclass
class MultimodalDataConfig(SiteDataConfig):
    """Image, FHIR-derived features and notes of one site, joined per patient."""

    _target_: str = "flip.data.multimodal.MultimodalDataModule"
    # The modalities' settings carry their own `_target_`s: the join builds them, not Hydra.
    _recursive_: bool = False
    # Each modality's settings are those of its own data option (dicom, fhir, text), minus root/site.
    image: Optional[Dict[str, Any]] = None
    tabular: Optional[Dict[str, Any]] = None
    text: Optional[Dict[str, Any]] = None
    label_from: str = "tabular"
    # A patient missing a modality: drop it, or mask (zeros plus a 0 in the modality mask).
    missing: str = "mask"


@dataclass
class FusionClassifierConfig(ClassifierConfig):
    _target_: str = "flip.models.fusion.FusionClassifier"
    modalities: List[str] = field(default_factory=lambda: ["image", "tabular", "text"])
    channels: List[int] = field(default_factory=lambda: [16, 32, 64])
    # null: flip sets it from data.tabular's feature spec.
    tabular_features: Optional[int] = None
    tabular_hidden: List[int] = field(default_factory=lambda: [32])
    num_buckets: int = 16384
    embedding_dim: int = 32
    hidden: int = 64
    dropout: float = 0.1


@dataclass
class ImageClassifierConfig(ClassifierConfig):
    _target_: str = "flip.models.image.ImageClassifier"
    in_channels: int = 1
    channels: List[int] = field(default_factory=lambda: [16, 32, 64])
    global_pool: str = "max"  # max or avg
    hidden: int = 64
    dropout: float = 0.1


@dataclass
class VolumeClassifierConfig(ImageClassifierConfig):
    """A 3-D CNN for `data.mode=volume` items ([channels, D, H, W])."""

    _target_: str = "flip.models.volume.VolumeClassifier"
    channels: List[int] = field(default_factory=lambda: [8, 16, 32])
    hidden: int = 32


@dataclass
class TrainerConfig:
    """Keyword arguments of `lightning.Trainer` for local training."""

    max_epochs: int = 5
    max_steps: int = -1
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = 1.0
    accelerator: str = "cpu"
    devices: Any = 1
    precision: str = "32-true"
    deterministic: bool = True
    gradient_clip_val: Optional[float] = None
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    num_sanity_val_steps: int = 0


@dataclass
class LocalFederationConfig:
    """One site trains on its own data; nothing leaves the machine."""

    mode: str = "local"
    num_sites: int = 1


@dataclass
class SimulationFederationConfig:
    """N virtual sites on Flower's simulation engine (Ray), all on this machine."""

    mode: str = "simulation"
    num_sites: int = 3
    num_rounds: int = 3
    # Local training per round: whole epochs, or a fixed number of optimizer steps when set.
    local_epochs: int = 1
    local_steps: Optional[int] = None
    # Each site carries its optimizer's state (e.g. Adam's moments) from its last round into the
    # next, as a local run carries it from epoch to epoch; it never leaves the site.
    keep_optimizer_state: bool = False
    # CPU share of each virtual site (sites run in parallel while CPUs last) and of the engine.
    cpus_per_site: float = 1.0
    total_cpus: Optional[int] = None
    # A round in which fewer sites train successfully stops the run.
    min_successful_sites: int = 1
    round_timeout: float = 600.0
    # A site whose data the server holds (an external test set), evaluated after every round.
    server_eval_site: Optional[str] = None
    # Site-local settings by site name: data keys and the site's privacy `policy`,
    # e.g. {site-1: {root: /data/a, policy: {require_dp: true}}}. Stand-ins for each site's own config.
    sites: Dict[str, Any] = field(default_factory=dict)
    # A YAML file with the same mapping; entries in `sites` override it.
    sites_file: Optional[str] = None


@dataclass
class PartitionConfig:
    """How one data set becomes sites (simulation only)."""

    # by_site: the data already names its sites (sub-folder, manifest column or DICOM attribute);
    # iid, dirichlet (label skew), quantity (size skew): split a pooled data set.
    kind: str = "by_site"
    # by_site: `folder`, `column` (of the labels manifest) or `attribute` (DICOM keyword).
    source: str = "folder"
    name: Optional[str] = None
    alpha: float = 0.5
    min_size: int = 1
    seed: int = SI("${seed}")


SCHEMAS: Dict[str, type] = {
    "root": FlipConfig,
    "data/dicom": DicomDataConfig,
    "data/multimodal": MultimodalDataConfig,
    "model/fusion": FusionClassifierConfig,
    "model/image_classifier": ImageClassifierConfig,
    "model/volume_classifier": VolumeClassifierConfig,
    "trainer/lightning": TrainerConfig,
    "federation/local": LocalFederationConfig,
    "federation/simulation": SimulationFederationConfig,
    "federation/deployment": DeploymentFederationConfig,
    "partition/partition": PartitionConfig,
    **PRIVACY_SCHEMAS,
    **STRATEGY_SCHEMAS,
    **TEXT_SCHEMAS,
    **FHIR_SCHEMAS,
}


def register(lenient: bool = False) -> None:
    """Store every schema under `schema/...`; lenient stores a marker naming the schema instead."""
    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        group, _, option = name.rpartition("/")
        node = {SCHEMA_MARKER: name} if lenient else schema
        store.store(group=f"schema/{group}" if group else "schema", name=option, node=node)
