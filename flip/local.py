"""Local mode: one site trains on its own data with a Lightning Trainer."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from flip.audit.run_directory import BEST, ROUND_ENDED, RunDirectory, load_weights
from flip.privacy.guarantee import statement
from flip.privacy.plan import PrivacyPlan
from flip.results import MetricsTable, model_sha256
from flip.training import MetricsRecorder, build_datamodule, build_model, build_trainer
from flip.run_types import ModeResult, SiteReport

log = logging.getLogger(__name__)


def run_local(cfg: DictConfig, directory: RunDirectory) -> ModeResult:
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    site = datamodule.site_name
    model = build_model(cfg)
    table = MetricsTable()
    rounds_kept = EpochCheckpoints(directory, cfg.monitor, cfg.monitor_mode.name)
    plan = PrivacyPlan.from_config(cfg)
    private = plan.site_training(epsilon_cap=plan.max_epsilon)
    # Checkpoints are the run directory's (EpochCheckpoints); Lightning's own would land in the cwd.
    trainer = build_trainer(
        cfg, callbacks=[rounds_kept, *private.callbacks], logger=MetricsRecorder(table, site), enable_checkpointing=False
    )
    log.info("training on %s: %d train / %d val / %d test images", site, *datamodule.split_sizes)
    trainer.fit(model, datamodule=datamodule)
    rounds = trainer.current_epoch
    final_hash = directory.save_final(rounds, model.state_dict(), model.hparams)

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

    return ModeResult(
        rounds=rounds,
        model_sha256=final_hash,
        metrics={**table.latest("train"), **table.latest("val"), **final_test},
        best_metrics={"round": best_round, **table.at_round(best_round, "val"), **best_test},
        table=table,
        sites=[SiteReport.from_datamodule(datamodule)],
        privacy=privacy,
        score_counts=final_counts,
        manifest_extra={"seeds": {"global": int(cfg.seed), "data": int(cfg.data.get("seed", cfg.seed))}},
    )


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
