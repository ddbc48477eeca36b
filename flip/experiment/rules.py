"""Rules that span config groups, checked after every key has the right type."""

from __future__ import annotations

from typing import Callable

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from flip.config.schema import BASELINE_MODES, job_of
from flip.config.schema_deployment import deployment_problems
from flip.config.schema_trackers import tracker_problems
from flip.config.strategies import strategy_problems
from flip.data.fhir import schema as fhir
from flip.data.multimodal import schema as multimodal
from flip.data.partition import KINDS
from flip.data.text import schema as text
from flip.errors import ConfigError
from flip.models import schema as models
from flip.models.schema import METRIC_NAMES
from flip.results import is_interval
from flip.privacy.schema import cross_site_privacy_problems, privacy_problems

BY_SITE_SOURCES = ("folder", "column", "attribute")

MAX_BOOTSTRAP = 10_000
# Integer arguments of an evaluation metric (bins, classes, thresholds): what a site allocates.
MAX_METRIC_ARGUMENT = 10_000

IMPLEMENTED_MODES = ("local", "pooled", "simulation", "deployment")


def _mode(cfg: DictConfig) -> list[str]:
    mode = cfg.federation.mode
    if mode not in IMPLEMENTED_MODES:
        return [f"federation.mode: '{mode}' is not a federation mode (available: {', '.join(IMPLEMENTED_MODES)})"]
    return []


def _metrics(cfg: DictConfig) -> list[str]:
    problems = [
        f"model.metrics: unknown metric '{name}' (available: {', '.join(METRIC_NAMES)})"
        for name in cfg.model.get("metrics", [])
        if name not in METRIC_NAMES
    ]
    monitorable = ["val/loss", *(f"val/{name}" for name in cfg.model.get("metrics", []))]
    if cfg.monitor not in monitorable:
        problems.append(f"monitor: '{cfg.monitor}' is not a metric this model reports (available: {', '.join(monitorable)})")
    return problems


def _splits(cfg: DictConfig) -> list[str]:
    data = cfg.data
    problems = [
        f"data.{key}: must be in [0, 1), got {data[key]}"
        for key in ("val_fraction", "test_fraction")
        if key in data and not 0 <= data[key] < 1
    ]
    if not problems and "val_fraction" in data and data.val_fraction + data.test_fraction >= 1:
        problems.append(
            f"data.val_fraction + data.test_fraction: must leave data to train on, got "
            f"{data.val_fraction} + {data.test_fraction}"
        )
    return problems


def _data_source(cfg: DictConfig) -> list[str]:
    if "root" in cfg.data and cfg.data.root is None and not cfg.data.get("synthetic"):
        return ["data.root: null needs data.synthetic (generated data); otherwise set the folder of this site's data"]
    return []


def _positive(cfg: DictConfig) -> list[str]:
    checks = {
        "seed": (cfg.seed, 0),
        "threads": (cfg.threads, 1),
        "model.num_classes": (cfg.model.get("num_classes"), 2),
        "data.batch_size": (cfg.data.get("batch_size"), 1),
        "data.image_size": (cfg.data.get("image_size"), 4),
        "trainer.max_epochs": (cfg.trainer.get("max_epochs"), 1),
    }
    return [
        f"{key}: must be at least {minimum}, got {value}"
        for key, (value, minimum) in checks.items()
        if isinstance(value, (int, float)) and value < minimum
    ]


def _federation(cfg: DictConfig) -> list[str]:
    federation = cfg.federation
    if federation.mode in BASELINE_MODES:
        return _baseline(federation)
    problems = []
    if federation.num_sites < 2:
        problems.append(f"federation.num_sites: a {federation.mode} run needs at least 2 sites, got {federation.num_sites}")
    if not 1 <= federation.min_successful_sites <= federation.num_sites:
        problems.append(
            f"federation.min_successful_sites: must be between 1 and federation.num_sites "
            f"({federation.num_sites}), got {federation.min_successful_sites}"
        )
    if federation.num_rounds < 1:
        problems.append(f"federation.num_rounds: must be at least 1, got {federation.num_rounds}")
    if federation.local_epochs < 1 and federation.local_steps is None:
        problems.append(f"federation.local_epochs: must be at least 1, got {federation.local_epochs}")
    if federation.local_steps is not None and federation.local_steps < 1:
        problems.append(f"federation.local_steps: must be at least 1 or null, got {federation.local_steps}")
    if federation.get("cpus_per_site", 1) <= 0:
        problems.append(f"federation.cpus_per_site: must be positive, got {federation.cpus_per_site}")
    if federation.mode == "deployment":
        problems += deployment_problems(federation)
    return problems + strategy_problems(cfg.strategy, federation.num_sites)


def _baseline(federation: DictConfig) -> list[str]:
    """A baseline reads a federated recipe's sites and length; strategy and Flower keys it ignores."""
    checks = {"num_sites": federation.num_sites, "num_rounds": federation.num_rounds, "local_epochs": federation.local_epochs}
    if federation.local_steps is not None:
        checks["local_steps"] = federation.local_steps
    return [f"federation.{key}: must be at least 1, got {value}" for key, value in checks.items() if value < 1]


def _sites(cfg: DictConfig) -> list[str]:
    """Simulated sites' own settings: known site names, and settings that match their schema."""
    from flip.experiment.site_schema import site_settings_problems
    from flip.experiment.sites import sites_mapping, static_site_names

    federation = cfg.federation
    if federation.mode == "local":
        return []
    try:
        sites = sites_mapping(federation)
    except ConfigError as error:
        return error.problems
    problems = []
    try:
        names = static_site_names(cfg) if sites else None
    except ConfigError as error:
        names, problems = None, error.problems
    for name, settings in sites.items():
        key = f"federation.sites.{name}"
        if names is not None and name not in names:
            problems.append(f"{key}: no such site in this run (its sites: {', '.join(names)})")
            continue
        problems += site_settings_problems(settings, key)
    return problems


def _partition(cfg: DictConfig) -> list[str]:
    partition = cfg.partition
    problems = []
    if partition.kind not in KINDS:
        problems.append(f"partition.kind: '{partition.kind}' is not a partition (available: {', '.join(KINDS)})")
    if partition.kind == "by_site":
        if partition.source not in BY_SITE_SOURCES:
            problems.append(f"partition.source: '{partition.source}' is not one of {', '.join(BY_SITE_SOURCES)}")
        elif partition.source != "folder" and not partition.name:
            problems.append(f"partition.name: by_site from a {partition.source} needs the {partition.source}'s name")
    if partition.kind in ("dirichlet", "quantity") and partition.alpha <= 0:
        problems.append(f"partition.alpha: must be positive, got {partition.alpha}")
    return problems


def text_model_problems(cfg: DictConfig) -> list[str]:
    """model=text_bow against data=text: the same hash buckets; [] for other pairs."""
    model, data = cfg.model, cfg.data
    if model.get("_target_") != models.TextClassifierConfig._target_ or data.get("_target_") != text.TEXT_DATA_TARGET:
        return []
    problems = []
    if model.get("num_buckets") != data.get("num_buckets"):
        problems.append(f"model.num_buckets: must equal data.num_buckets ({data.get('num_buckets')}), got {model.get('num_buckets')}")
    if not isinstance(model.get("embedding_dim"), int) or model["embedding_dim"] < 1:
        problems.append(f"model.embedding_dim: must be at least 1, got {model.get('embedding_dim')}")
    if not 0 <= model.get("dropout", 0) < 1:
        problems.append(f"model.dropout: must be in [0, 1), got {model.get('dropout')}")
    return problems


def _modalities(cfg: DictConfig) -> list[str]:
    """A fusion model sees the modalities the multimodal data joins, in the same order."""
    if cfg.data.get("_target_") != multimodal.MultimodalDataConfig._target_:
        return []
    configured = [m for m in multimodal.MODALITIES if cfg.data.get(m)]
    model_modalities = cfg.model.get("modalities")
    if model_modalities is not None and list(model_modalities) != configured:
        return [f"model.modalities: {list(model_modalities)} must equal the data's modalities {configured}"]
    return []


def _tracker(cfg: DictConfig) -> list[str]:
    return tracker_problems(cfg.get("logger"))


def _evaluation(cfg: DictConfig) -> list[str]:
    evaluation, mode = cfg.evaluation, cfg.federation.mode
    problems = []
    if job_of(cfg) == "evaluate" and not evaluation.checkpoint:
        problems.append("evaluation.checkpoint: job=evaluate evaluates a model: set it to a flip run directory or a Lightning checkpoint file")
    if job_of(cfg) == "evaluate" and mode == "pooled":
        problems.append("job: evaluate runs at one site (federation=local data.site=...) or at every site (federation=simulation), not pooled")
    if evaluation.cross_site:
        if mode == "local" and cfg.federation.num_sites == 1:
            problems.append("evaluation.cross_site: compares the models of a federation's sites; a local run has one site")
        elif mode in BASELINE_MODES:
            pass  # a federated recipe's baseline trains one model: nothing to compare (flip.federation.baseline says so)
        elif job_of(cfg) == "evaluate":
            problems.append("evaluation.cross_site: an evaluation-only run trains no site models to compare; evaluate the checkpoint (job=evaluate) alone")
        else:
            problems += cross_site_privacy_problems(cfg.privacy)
    if not 0 <= evaluation.bootstrap <= MAX_BOOTSTRAP:  # a site pays for every resample
        problems.append(f"evaluation.bootstrap: must be 0 (no intervals) or a number of resamples up to {MAX_BOOTSTRAP}, got {evaluation.bootstrap}")
    if not 0 < evaluation.confidence < 1:
        problems.append(f"evaluation.confidence: must be in (0, 1), got {evaluation.confidence}")
    reported = set(cfg.model.get("metrics", []))
    for name, node in evaluation.metrics.items():  # a site allocates what the arguments ask (bins, classes)
        for key, value in (node.items() if isinstance(node, DictConfig) else ()):
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_METRIC_ARGUMENT:
                problems.append(f"evaluation.metrics.{name}.{key}: at most {MAX_METRIC_ARGUMENT}, got {value}")
    for name in evaluation.metrics:
        if not str(name).isidentifier() or is_interval(str(name)):
            problems.append(f"evaluation.metrics.{name}: a metric's name must be a plain identifier not ending in _ci_low/_ci_high")
        elif name in reported:
            problems.append(f"evaluation.metrics.{name}: model.metrics reports {name} already; give this one another name")
    return problems


RULES: tuple[Callable[[DictConfig], list[str]], ...] = (
    _evaluation,
    _mode, privacy_problems, _metrics, models.rules, _splits, _data_source, _positive, _federation, _sites, _partition,
    text.rules, text_model_problems, fhir.rules, multimodal.rules, _modalities, _tracker,
)


def rule_problems(cfg: DictConfig) -> list[str]:
    """Problems found by every rule; a rule that trips over a value already reported as bad is skipped."""
    problems = []
    for rule in RULES:
        try:
            problems += rule(cfg)
        except (TypeError, AttributeError, KeyError, ValueError, OmegaConfBaseException):
            continue
    return problems
