"""Schemas of the models (`conf/model/`): the one declaration of each model's parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig

# The metrics a classifier can report (torchmetrics classes, per split).
METRIC_NAMES = ("accuracy", "auroc", "f1", "precision", "recall")


def adam(lr: float) -> Dict[str, Any]:
    return {"_target_": "torch.optim.Adam", "_partial_": True, "lr": lr}


@dataclass
class ClassifierConfig:
    """Keys of every classifier: classes, metrics, and the optimizer and scheduler to build."""

    _target_: str = MISSING
    num_classes: int = 2
    metrics: List[str] = field(default_factory=lambda: ["accuracy", "auroc", "f1"])
    optimizer: Dict[str, Any] = field(default_factory=lambda: adam(1e-3))
    # A torch.optim.lr_scheduler (`_partial_: true`) stepped once an epoch; {} or null: none. In a
    # federated run it runs over all rounds, as over all epochs of a local run. The default is {},
    # not null: OmegaConf cannot merge a command-line `model.scheduler={...}` into a null node.
    scheduler: Optional[Dict[str, Any]] = field(default_factory=dict)
    # Train on logits + logit_adjustment · log(the training split's class prior); 0: plain cross
    # entropy. Each site uses its own prior, so label-skewed sites pull less apart.
    logit_adjustment: float = 0.0


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
class TabularClassifierConfig(ClassifierConfig):
    _target_: str = "flip.models.tabular.TabularClassifier"
    # null: the runner passes the data's width (flip.data.fhir.features.num_features(cfg.data)).
    in_features: Optional[int] = None
    hidden: List[int] = field(default_factory=lambda: [64, 32])
    dropout: float = 0.1


@dataclass
class TextClassifierConfig(ClassifierConfig):
    _target_: str = "flip.models.text.TextClassifier"
    # Must equal data.num_buckets; the option file takes it from there.
    num_buckets: int = 16384
    embedding_dim: int = 64
    hidden: int = 64
    dropout: float = 0.1
    optimizer: Dict[str, Any] = field(default_factory=lambda: adam(1e-2))


SCHEMAS: Dict[str, type] = {
    "model/fusion": FusionClassifierConfig,
    "model/image_classifier": ImageClassifierConfig,
    "model/volume_classifier": VolumeClassifierConfig,
    "model/tabular_mlp": TabularClassifierConfig,
    "model/text_bow": TextClassifierConfig,
}


def rules(cfg: DictConfig) -> list[str]:
    """Cross-key problems of the model node."""
    problems = []
    pool = cfg.model.get("global_pool")
    if pool is not None and pool not in ("max", "avg"):
        problems.append(f"model.global_pool: must be max or avg, got '{pool}'")
    if cfg.model.get("logit_adjustment", 0) < 0:
        problems.append(f"model.logit_adjustment: must be 0 (off) or positive, got {cfg.model.logit_adjustment}")
    return problems
