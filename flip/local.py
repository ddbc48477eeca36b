"""One model trained on this machine with a Lightning Trainer: `local` (one site's data) and
`pooled` (every federated site's training data); a federated recipe's baseline is evaluated on
each of its sites' test splits (flip.federation.baseline says which)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from flip.audit.checkpoints import evaluated_weights, fit_problems
from flip.audit.manifest import file_sha256
from flip.audit.run_directory import BEST, ROUND_ENDED, RunDirectory, load_weights
from flip.errors import ConfigError
from flip.data.pooled import PooledDataModule
from flip.federation.baseline import BaselineSites, baseline_sites, describe, trainer_length
from flip.federation.site import evaluate_model
from flip.privacy.guarantee import statement
from flip.privacy.plan import PrivacyPlan
from flip.results import MetricsTable, model_sha256
from flip.training import MetricsRecorder, build_datamodule, build_model, build_trainer
from flip.run_types import ModeResult, SiteReport

log = logging.getLogger(__name__)


def run_local(cfg: DictConfig, directory: RunDirectory) -> ModeResult:
    sites = baseline_sites(cfg)
    modules = {name: _setup(cfg, overrides) for name, overrides in sites.trained}
    trained = list(modules.values())
    if cfg.federation.mode == "pooled":
        datamodule = PooledDataModule(trained, cfg.data.batch_size, int(cfg.data.get("seed", cfg.seed)), cfg.data.get("num_workers", 0))
    else:
        (datamodule,) = trained
    site = datamodule.site_name
    if sites.evaluated:
        log.info(describe(cfg, sites))
    model = build_model(cfg)
    table = MetricsTable()
    rounds_kept = EpochCheckpoints(directory, cfg.monitor, cfg.monitor_mode.name)
    plan = PrivacyPlan.from_config(cfg)
    private = plan.site_training(epsilon_cap=plan.max_epsilon)
    # Checkpoints are the run directory's (EpochCheckpoints); Lightning's own would land in the cwd.
    trainer = build_trainer(
        cfg,
        callbacks=[rounds_kept, *private.callbacks],
        logger=MetricsRecorder(table, site),
        enable_checkpointing=False,
        **trainer_length(cfg),
    )
    log.info("training on %s: %d train / %d val / %d test items", site, *datamodule.split_sizes)
    trainer.fit(model, datamodule=datamodule)
    rounds = trainer.current_epoch
    final_hash = directory.save_final(rounds, model.state_dict(), model.hparams)
    final_state = {key: value.detach().clone() for key, value in model.state_dict().items()}

    final_test = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    final_counts = dict(getattr(model, "score_counts", {}))
    for key, value in final_test.items():
        split, _, metric = key.partition("/")
        table.add(rounds, site, split, metric, value)
    best_round = rounds_kept.best_round
    best_test = {}
    if best_round:
        model.load_state_dict(load_weights(directory.checkpoints / BEST))
        best_test = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    privacy = local_privacy(plan, private.spent())
    if privacy["epsilon"] is not None:
        table.add(rounds, site, "privacy", "epsilon", privacy["epsilon"])
        table.add(rounds, site, "privacy", "delta", privacy["delta"])
    metrics = {**table.latest("train", site), **table.latest("val", site), **final_test}
    best_metrics = {"round": best_round, **table.at_round(best_round, "val", site), **best_test}
    site_metrics = evaluate_sites(cfg, sites, modules, final_state, rounds, table)
    if sites.held_out:
        metrics.update({f"server:{key}": value for key, value in site_metrics[sites.held_out].items()})

    return ModeResult(
        rounds=rounds,
        model_sha256=final_hash,
        metrics=metrics,
        best_metrics=best_metrics,
        table=table,
        site_metrics=site_metrics,
        sites=[SiteReport.from_datamodule(module, name or None) for name, module in modules.items()],
        privacy=privacy,
        score_counts=final_counts,
        manifest_extra={"seeds": {"global": int(cfg.seed), "data": int(cfg.data.get("seed", cfg.seed))}},
    )


def evaluate_local(cfg: DictConfig, directory: RunDirectory) -> ModeResult:
    """job=evaluate: the checkpoint's model on this site's validation and test splits; its
    metrics are the run's round 0 and the model is the run's `final.ckpt`."""
    from flip.federation.site import evaluate_weights

    (name, overrides), = baseline_sites(cfg).trained  # a federated recipe's: data.site, else its first site
    datamodule = _setup(cfg, overrides)
    site = name or datamodule.site_name
    file, state = checked_checkpoint(cfg)
    model = build_model(cfg)
    log.info("evaluating %s on %s: %d val / %d test items", file, site, *datamodule.split_sizes[1:])
    metrics, counts = evaluate_weights(cfg, datamodule, state, site)
    table = MetricsTable()
    for key, value in metrics.items():
        split, _, metric = key.partition("/")
        table.add(0, site, split, metric, value)
    digest = directory.save_final(0, state, model.hparams)
    directory.emit(ROUND_ENDED, round=0, model_sha256=digest, metrics=metrics)
    return ModeResult(
        rounds=0,
        model_sha256=digest,
        metrics=metrics,
        best_metrics={"round": None},
        table=table,
        sites=[SiteReport.from_datamodule(datamodule, name or None)],
        privacy=local_privacy(PrivacyPlan.from_config(cfg), {}),
        score_counts=dict(counts),
        evaluated={"checkpoint": str(file), "file_sha256": file_sha256(file), "model_sha256": digest},
        manifest_extra={"seeds": {"global": int(cfg.seed), "data": int(cfg.data.get("seed", cfg.seed))}},
    )


def checked_checkpoint(cfg: DictConfig) -> tuple[Path, dict]:
    """The checkpoint `evaluation.checkpoint` names, once it fits the configured model; else
    ConfigError saying which weights differ."""
    file, state = evaluated_weights(cfg.evaluation.checkpoint)
    if problems := fit_problems(state, build_model(cfg).state_dict(), file):
        raise ConfigError(problems)
    return file, state


def _setup(cfg: DictConfig, overrides: dict) -> L.LightningDataModule:
    datamodule = build_datamodule(cfg, **overrides)
    datamodule.setup("fit")
    return datamodule


def evaluate_sites(
    cfg: DictConfig, sites: BaselineSites, built: dict, state: dict, rounds: int, table: MetricsTable
) -> dict[str, dict[str, float]]:
    """The final model's val/test metrics on each evaluated site (into `table` at the last round)."""
    found = {}
    for name, overrides in sites.evaluated:
        datamodule = built.get(name) or _setup(cfg, overrides)
        found[name] = evaluate_model(cfg, datamodule, state, name)
        for key, value in found[name].items():
            split, _, metric = key.partition("/")
            table.add(rounds, name, split, metric, value)
    return found


def local_privacy(plan: PrivacyPlan, spent: dict[str, float]) -> dict:
    """The privacy summary of a local run: DP-SGD's spent budget, or no DP."""
    return {
        "mechanism": plan.mechanism.name,
        "secure_aggregation": False,
        "is_dp": plan.is_dp,
        "epsilon": spent.get("epsilon"),
        "delta": spent.get("delta"),
        "max_epsilon": plan.max_epsilon,
        **statement(plan.mechanism.guarantee()),
        "releases": None,
    }


class EpochCheckpoints(Callback):
    """Each epoch is a round: its checkpoint, the best one so far and its `round_ended` event,
    written through the run directory as a federated run's rounds are (round 0: the initial model)."""

    def __init__(self, directory: RunDirectory, monitor: str, mode: str):
        self.directory, self.monitor, self.mode = directory, monitor, mode
        self.best_round, self.best_value = 0, None

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.directory.emit(ROUND_ENDED, round=0, model_sha256=model_sha256(module.state_dict()), metrics={})

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        round_ = trainer.current_epoch + 1
        digest = self.directory.save_round(round_, module.state_dict(), module.hparams)
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and (self.best_value is None or (value > self.best_value if self.mode == "max" else value < self.best_value)):
            self.best_round, self.best_value = round_, float(value)
            self.directory.mark_best(round_)
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if "/" in key}
        self.directory.emit(ROUND_ENDED, round=round_, model_sha256=digest, metrics=metrics)
