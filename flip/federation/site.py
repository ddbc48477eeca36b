"""What one site does in a round, as plain functions that tests and Flower clients call alike.

`train_round` and `evaluate_round` take a config, a site and global weights and return weights
and metrics. Decoded data is kept per process, so a long-lived simulation actor decodes a
site's files once, not every round.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from flip.federation.seeds import site_seed
from flip.federation.site_config import SiteSettings
from flip.models.evaluation import evaluation_metrics
from flip.privacy.plan import PrivacyPlan
from flip.results import config_sha256
from flip.run_types import SiteReport
from flip.training import build_datamodule, build_model, build_trainer, quiet_lightning

log = logging.getLogger(__name__)
StateDict = dict[str, torch.Tensor]
_DATAMODULES: dict[tuple[str, str], L.LightningDataModule] = {}


@dataclass
class SiteReply:
    state: StateDict | None
    metrics: dict[str, float]
    num_examples: int
    report: SiteReport
    # The optimizer state the site keeps for its next round (never sent).
    optimizer_state: bytes | None = None
    # Per evaluated split: (positives, negatives) per score bin (flip.pooled_metrics), two classes only.
    score_counts: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)


def _sha_of(*nodes: Any) -> str:
    """A cache key for resolved config nodes."""
    plain = [OmegaConf.to_container(n, resolve=True) if OmegaConf.is_config(n) else n for n in nodes]
    return config_sha256(OmegaConf.create({"nodes": plain}))


def site_datamodule(cfg: DictConfig, site: SiteSettings) -> L.LightningDataModule:
    """The set-up data module of `site` (its data settings are in `cfg.data` already), built
    once per process and config."""
    key = (_sha_of(cfg.data, site.partition), site.name)
    if key not in _DATAMODULES:
        datamodule = build_datamodule(cfg, partition=site.partition)
        datamodule.setup("fit")
        _DATAMODULES[key] = datamodule
    return _DATAMODULES[key]


def server_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The data the server itself holds (`federation.server_eval_site`), built once per process."""
    key = (_sha_of(cfg.data, cfg.federation.server_eval_site), "")
    if key not in _DATAMODULES:
        datamodule = build_datamodule(cfg, site=cfg.federation.server_eval_site)
        datamodule.setup("fit")
        _DATAMODULES[key] = datamodule
    return _DATAMODULES[key]


class ProximalTerm(Callback):
    """FedProx: adds the gradient of (mu/2)·||w - w_global||² to every parameter's gradient."""

    def __init__(self, global_state: StateDict, mu: float):
        self.global_state = {name: tensor.detach().clone() for name, tensor in global_state.items()}
        self.mu = mu

    def on_after_backward(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for name, parameter in module.named_parameters():
            if parameter.grad is not None:
                parameter.grad.add_(parameter.detach() - self.global_state[name], alpha=self.mu)


class KeptOptimizerState(Callback):
    """The site's optimizer state from its previous round (`federation.keep_optimizer_state`).

    Only the per-parameter state (e.g. Adam's moments and step counts) is restored: the learning
    rates stay the schedule's. `saved()` is this round's, for the next.
    """

    def __init__(self, previous: bytes | None):
        self.previous = previous
        self.optimizer: torch.optim.Optimizer | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.optimizer = trainer.optimizers[0]
        if self.previous:
            state = self.optimizer.state_dict()
            state["state"] = torch.load(io.BytesIO(self.previous), weights_only=True)
            self.optimizer.load_state_dict(state)

    def saved(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.optimizer.state_dict()["state"], buffer)
        return buffer.getvalue()


class ResumedSchedule(Callback):
    """Moves the model's learning-rate schedulers to where round `server_round` begins.

    Every round trains a fresh optimizer, whose scheduler would start the schedule anew. Stepped
    on by the epochs (or steps) of the rounds before, it runs once over the whole federated run,
    as it runs over all epochs of a local one: round r with one local epoch trains at the rate a
    local run has in epoch r. `lr` is the rate the round starts at (the site reports it).
    """

    def __init__(self, server_round: int, local_epochs: int, local_steps: int | None):
        self.rounds_before = server_round - 1
        self.local_epochs = local_epochs
        self.local_steps = local_steps
        self.lr: float | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        batches = max(1, int(trainer.num_training_batches))
        if self.local_steps is None:
            epochs_before = self.rounds_before * self.local_epochs
            steps_before = epochs_before * batches
        else:
            steps_before = self.rounds_before * self.local_steps
            epochs_before = steps_before // batches
        with warnings.catch_warnings():  # stepping before the first optimizer step is the point here
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            for config in trainer.lr_scheduler_configs:
                done = epochs_before if config.interval == "epoch" else steps_before
                for _ in range(done // config.frequency):
                    config.scheduler.step()
        self.lr = float(trainer.optimizers[0].param_groups[0]["lr"])


def _model_with(cfg: DictConfig, state: StateDict) -> L.LightningModule:
    model = build_model(cfg)
    model.load_state_dict(state)
    return model


def initial_model(cfg: DictConfig) -> tuple[StateDict, dict[str, Any]]:
    """The run's starting weights, drawn from its seed alone, and the model's hyperparameters.

    A site builds them for the server (the handshake), so the server needs no Lightning.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(cfg)
    return model.state_dict(), dict(model.hparams)


def train_round(
    cfg: DictConfig,
    site: SiteSettings,
    global_state: StateDict,
    server_round: int,
    proximal_mu: float = 0.0,
    epsilon_cap: float | None = None,
    optimizer_state: bytes | None = None,
) -> SiteReply:
    """Local training of `site` from the global weights; returns the new weights and metrics.

    `epsilon_cap` is the DP-SGD budget the site holds itself to (the run's or its policy's).
    `optimizer_state` is the site's from its previous round, with `federation.keep_optimizer_state`.
    """
    quiet_lightning()
    L.seed_everything(site_seed(cfg, server_round, site.name), workers=True, verbose=False)
    datamodule = site_datamodule(cfg, site)
    model = _model_with(cfg, global_state)
    federation = cfg.federation
    kept = KeptOptimizerState(optimizer_state) if federation.get("keep_optimizer_state") else None
    schedule = ResumedSchedule(server_round, federation.local_epochs, federation.local_steps)
    callbacks: list[Callback] = [*([kept] if kept else []), schedule]
    if proximal_mu > 0:
        callbacks.append(ProximalTerm(global_state, proximal_mu))
    plan = PrivacyPlan.from_config(cfg)
    private = plan.site_training(rounds_before=server_round - 1, rounds_total=federation.num_rounds, epsilon_cap=epsilon_cap)
    callbacks += private.callbacks
    trainer = build_trainer(
        cfg,
        callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        max_epochs=federation.local_epochs if federation.local_steps is None else -1,
        max_steps=federation.local_steps if federation.local_steps is not None else -1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("train/")}
    if schedule.lr is not None:
        metrics["train/lr"] = schedule.lr
    metrics.update({f"privacy/{key}": float(value) for key, value in private.spent().items() if value is not None})
    report = SiteReport.from_datamodule(datamodule, site.name)
    return SiteReply(model.state_dict(), metrics, datamodule.split_sizes[0], report, kept.saved() if kept else None)


def evaluate_model(cfg: DictConfig, datamodule: L.LightningDataModule, state: StateDict, site: str = "server") -> dict[str, float]:
    """val/* and test/* metrics of the weights `state` on a set-up data module."""
    return evaluate_weights(cfg, datamodule, state, site)[0]


def evaluate_weights(cfg: DictConfig, datamodule: L.LightningDataModule, state: StateDict, site: str) -> tuple[dict[str, float], dict]:
    """The metrics (the model's and `evaluation.metrics`), and the score counts per split (two
    classes), of the weights `state` on the set-up data module of `site`."""
    quiet_lightning()
    model = _model_with(cfg, state)
    trainer = build_trainer(cfg, [], logger=False, enable_checkpointing=False, enable_progress_bar=False)
    metrics: dict[str, float] = {}
    for run in (trainer.validate, trainer.test):
        for key, value in run(model, datamodule=datamodule, verbose=False)[0].items():
            metrics[key] = float(value)
    metrics.update(evaluation_metrics(cfg, model, datamodule, site))
    return metrics, dict(getattr(model, "score_counts", {}))


def evaluate_round(cfg: DictConfig, site: SiteSettings, global_state: StateDict) -> SiteReply:
    """The weights `global_state` (the global model's, or another site's in cross-site
    evaluation) evaluated on `site`'s validation and test splits."""
    datamodule = site_datamodule(cfg, site)
    metrics, counts = evaluate_weights(cfg, datamodule, global_state, site.name)
    _, n_val, n_test = datamodule.split_sizes
    report = SiteReport.from_datamodule(datamodule, site.name)
    return SiteReply(None, {**metrics, "val/n": n_val, "test/n": n_test}, n_val, report, score_counts=counts)
