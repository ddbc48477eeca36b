"""Schemas of the keys no component owns: the root config, the trainer, the federation modes, partitions.

Components declare their own (`flip/data/<source>/schema.py`, `flip/models/schema.py`,
`flip/privacy/mechanisms/`, `flip/config/strategies.py`); `flip.experiment.catalog` gathers them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, SI

from flip.config.schema_deployment import DeploymentFederationConfig
from flip.config.schema_trackers import SCHEMAS as TRACKER_SCHEMAS

SCHEMA_MARKER = "_schema_"


class MonitorMode(Enum):
    min = "min"
    max = "max"


class Job(Enum):
    """What a run does: train a model, or evaluate one (`evaluation.checkpoint`) at every site."""

    train = "train"
    evaluate = "evaluate"


@dataclass
class EvaluationConfig:
    """How models are evaluated: cross-site, evaluation-only runs, extra metrics and their intervals."""

    # job=evaluate: the model to evaluate, a flip run directory (its final model) or a Lightning
    # checkpoint file of a model the config builds.
    checkpoint: Optional[str] = None
    # Federated runs: after the last round, the final global model and each site's last local model
    # are evaluated on every site's validation and test data (cross_site.csv, plots/cross_site.png).
    cross_site: bool = False
    # Metrics beyond model.metrics, computed wherever a site evaluates: name -> a torchmetrics
    # classification class and its arguments, e.g. {specificity: {_target_:
    # torchmetrics.classification.BinarySpecificity, threshold: 0.3}}.
    metrics: Dict[str, Any] = field(default_factory=dict)
    # Bootstrap resamples of each site's evaluated split for intervals of `metrics` (0: none), and
    # the intervals' confidence level.
    bootstrap: int = 0
    confidence: float = 0.95


@dataclass
class FlipConfig:
    """Root keys that do not belong to any group."""

    seed: int = 42
    # Metric that picks the `best` checkpoint, and whether higher or lower is better.
    monitor: str = "val/loss"
    monitor_mode: MonitorMode = MonitorMode.min
    # Torch intra-op threads for training; null uses torch's default (all cores).
    threads: Optional[int] = None
    # Components this machine builds beyond flip's defaults (local runs, the simulation driver):
    # exact dotted names or `package.*`. A site's own settings say what a site builds.
    allowed_targets: List[str] = field(default_factory=list)
    job: Job = Job.train
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    data: Any = MISSING
    model: Any = MISSING
    trainer: Any = MISSING
    federation: Any = MISSING
    privacy: Any = MISSING
    strategy: Any = MISSING
    partition: Any = MISSING
    # The tracker that mirrors the run (conf/logger/): none, csv, tensorboard or mlflow.
    logger: Any = MISSING


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


# Modes that train one model on this machine, with no server: the baselines of a federated recipe.
BASELINE_MODES = ("local", "pooled")


@dataclass
class FederatedExperimentConfig:
    """Which sites a federated experiment has and how long each trains; the federation modes on one
    machine accept them all, so a federated recipe runs unchanged as its own local or pooled baseline."""

    mode: str = MISSING  # each option's own
    num_sites: int = 3
    num_rounds: int = 5
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
class LocalFederationConfig(FederatedExperimentConfig):
    """One site trains on its own data (`data.site`); nothing leaves the machine. It trains
    num_rounds x local_epochs epochs (conf/federation/local.yaml: num_rounds follows trainer.max_epochs)."""

    mode: str = "local"


@dataclass
class PooledFederationConfig(FederatedExperimentConfig):
    """Every federated site's training data trains one model on this machine (a simulation's
    baseline, not a deployment); the model is evaluated on each site's and the server's test split."""

    mode: str = "pooled"


@dataclass
class SimulationFederationConfig(FederatedExperimentConfig):
    """N virtual sites on Flower's simulation engine (Ray), all on this machine."""

    mode: str = "simulation"


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
    "trainer/lightning": TrainerConfig,
    "federation/local": LocalFederationConfig,
    "federation/pooled": PooledFederationConfig,
    "federation/simulation": SimulationFederationConfig,
    "federation/deployment": DeploymentFederationConfig,
    "partition/partition": PartitionConfig,
    **TRACKER_SCHEMAS,
}


def job_of(cfg: Any) -> str:
    """The run's job as text, from a composed config (an enum) or a received one (text)."""
    job = cfg.get("job", Job.train.value)
    return getattr(job, "value", str(job))
