"""Local mode: one site trains on its own data with a Lightning Trainer."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from flip.privacy.guarantee import statement
from flip.privacy.plan import PrivacyPlan
from flip.results import MetricsTable, model_sha256
from flip.training import MetricsRecorder, build_datamodule, build_model, build_trainer
from flip.run_types import ModeResult, SiteReport

log = logging.getLogger(__name__)


def run_local(cfg: DictConfig, run_dir: Path) -> ModeResult:
    checkpoints = run_dir / "checkpoints"
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    site = datamodule.site_name
    model = build_model(cfg)
    table = MetricsTable()
    best = ModelCheckpoint(
        dirpath=checkpoints,
        filename="best",
        monitor=cfg.monitor,
        mode=cfg.monitor_mode.name,
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    plan = PrivacyPlan.from_config(cfg)
    private = plan.site_training(epsilon_cap=plan.max_epsilon)
    trainer = build_trainer(cfg, callbacks=[best, *private.callbacks], logger=MetricsRecorder(table, site))
    log.info("training on %s: %d train / %d val / %d test images", site, *datamodule.split_sizes)
    trainer.fit(model, datamodule=datamodule)
    rounds = trainer.current_epoch
    trainer.save_checkpoint(checkpoints / "final.ckpt")
    final_hash = model_sha256(model.state_dict())

    final_test = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    for key, value in final_test.items():
        split, _, metric = key.partition("/")
        table.add(rounds, site, split, metric, value)
    best_round = _best_round(best, table)
    best_test = trainer.test(model, datamodule=datamodule, ckpt_path=best.best_model_path, verbose=False)[0]
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


def _best_round(best: ModelCheckpoint, table: MetricsTable) -> int:
    """The epoch whose monitored value the best checkpoint holds."""
    metric = best.monitor.partition("/")[2]
    for round_, _, split, name, value in table.rows:
        if split == "val" and name == metric and value == float(best.best_model_score):
            return round_
    return 0
