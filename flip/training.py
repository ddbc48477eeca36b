"""Plain training functions shared by every mode: build data, model and trainer from a config."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from flip.config.allowlist import AllowList, safe_instantiate
from flip.results import MetricsTable

log = logging.getLogger(__name__)


def configure_torch(cfg: DictConfig) -> None:
    """Seed every generator and make CPU kernels deterministic."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet_lightning()


def quiet_lightning() -> None:
    """Lightning's start-up notes (GPU available, tips) are noise in flip's output."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def build_datamodule(cfg: DictConfig, **overrides: Any) -> L.LightningDataModule:
    return safe_instantiate(cfg.data, AllowList.of(cfg.allowed_targets), "data", **overrides)


def build_model(cfg: DictConfig) -> L.LightningModule:
    """The configured model; a tabular model's input width comes from the data's feature spec,
    so the server and every site agree on it before any data is read."""
    from flip.data.fhir.features import num_features

    extra = {}
    if "in_features" in cfg.model and cfg.model.in_features is None:
        extra["in_features"] = num_features(cfg.data)
    if "tabular_features" in cfg.model and cfg.model.tabular_features is None and cfg.data.get("tabular"):
        extra["tabular_features"] = num_features(cfg.data.tabular)
    return safe_instantiate(cfg.model, AllowList.of(cfg.allowed_targets), "model", **extra)


def build_trainer(cfg: DictConfig, callbacks: list[Callback], logger: Logger | bool, **overrides: Any) -> L.Trainer:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs.update(overrides)
    if kwargs.get("enable_progress_bar", True):
        callbacks = [*callbacks, RichProgressBar(leave=True)]
    return L.Trainer(callbacks=callbacks, logger=logger, enable_model_summary=False, **kwargs)


class MetricsRecorder(Logger):
    """A Lightning logger that files epoch-level `split/metric` values into a MetricsTable."""

    def __init__(self, table: MetricsTable, site: str, splits: tuple[str, ...] = ("train", "val"), round_offset: int = 0):
        super().__init__()
        self.table = table
        self.site = site
        self.splits = splits
        self.round_offset = round_offset

    @property
    def name(self) -> str:
        return "flip"

    @property
    def version(self) -> None:
        """No version: the run directory is the version, and the progress bar shows none."""
        return None

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters are in the run's .hydra/config.yaml already."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if "epoch" not in metrics:
            return
        round_ = self.round_offset + int(metrics["epoch"]) + 1
        for key, value in metrics.items():
            split, _, metric = key.partition("/")
            if metric and split in self.splits:
                self.table.add(round_, self.site, split, metric, value)
