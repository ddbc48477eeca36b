"""Simulation mode: N virtual sites on Flower's simulation engine, owned start to finish by flip.

Flower's home, Ray's session files and the environment variables Flower changes all live in a
temporary folder for the length of the run; Ray is shut down whatever happens.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from omegaconf import DictConfig
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from flip.audit.run_directory import RunDirectory
from flip.config.schema import job_of
from flip.console import console
from flip.data import synthetic_root
from flip.errors import FlipError
from flip.federation.keeper import FEDERATED, SERVER, RoundKeeper
from flip.federation.resume import ResumePoint, load_point, resume_problems
from flip.federation.seeds import run_seeds
from flip.federation.simulated_sites import simulated_site_names, simulated_site_settings, write_site_files
from flip.federation.site_config import SIMULATION_SITES_ENV
from flip.interrupts import interrupts_reach_main_thread
from flip.privacy.accounting import PrivacyLedger
from flip.privacy.plan import PrivacyPlan
from flip.run_types import ModeResult

if TYPE_CHECKING:
    from flip.federation.server_app import ServerOutcome

log = logging.getLogger(__name__)
_FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


class _DropDeprecation(logging.Filter):
    """flip owns the simulation's lifecycle; Flower's notice that `run_simulation` is deprecated
    in favour of its CLI is not for flip's users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation` function is deprecated" not in record.getMessage()


@contextmanager
def flower_sandbox() -> Iterator[Path]:
    """A scratch folder for Flower and Ray; the environment is restored and Ray stopped on exit."""
    saved = {key: os.environ.get(key) for key in (*_FLOWER_ENV, "FLWR_HOME", "PYTHONPATH", SIMULATION_SITES_ENV)}
    flower_logger = logging.getLogger("flwr")
    quiet = _DropDeprecation()
    with tempfile.TemporaryDirectory(prefix="flip-") as scratch:
        os.environ.update(_FLOWER_ENV, FLWR_HOME=str(Path(scratch) / "flwr"))
        flower_logger.addFilter(quiet)
        saved_level = flower_logger.level
        flower_logger.setLevel(logging.WARNING)  # flip shows rounds itself; failures are logged by flip
        try:
            yield Path(scratch)
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            flower_logger.removeFilter(quiet)
            flower_logger.setLevel(saved_level)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def backend_config(cfg: DictConfig, scratch: Path) -> dict:
    federation = cfg.federation
    return {
        "client_resources": {"num_cpus": federation.cpus_per_site, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": federation.total_cpus or os.cpu_count() or 1,
            "include_dashboard": False,
            "log_to_driver": False,
            "_temp_dir": str(scratch / "ray"),
        },
    }


def _server_evaluator(cfg: DictConfig):
    if not cfg.federation.server_eval_site:
        return None
    from flip.federation.site import evaluate_model, server_datamodule
    from flip.training import configure_torch

    configure_torch(cfg)
    return lambda state: evaluate_model(cfg, server_datamodule(cfg), state, cfg.federation.server_eval_site)


def server_side(cfg: DictConfig, run_directory: RunDirectory, progress: Progress | None) -> RoundKeeper:
    """The server's own start-up: its records, its evaluator and the shared inputs.

    It runs in the ServerApp while the sites start theirs (Ray, site processes, their imports).
    The initial model comes from a site's handshake, so this side loads torch and Lightning only
    to evaluate (`federation.server_eval_site`): on a small machine, the sites' start-up is the
    longest path to round 1, and every CPU-second taken from it shows (tests/federation/test_startup.py).
    """
    import torch  # noqa: F401  (the keeper's checkpoints need it: loaded here, it overlaps the sites' start)

    keeper = RoundKeeper(
        run_directory=run_directory,
        monitor=cfg.monitor,
        monitor_mode=getattr(cfg.monitor_mode, "name", str(cfg.monitor_mode)),  # an enum, or a received config's text
        num_rounds=cfg.federation.num_rounds,
        server_evaluate=_server_evaluator(cfg),
        progress=progress,
        ledger=PrivacyLedger(PrivacyPlan.from_config(cfg)),
    )
    # Generate shared inputs once, here, before the sites' first round reads them (on this
    # machine: a simulation's sites, or the data a deployment's server evaluates on).
    shared = cfg.federation.mode == "simulation" or cfg.federation.get("server_eval_site")
    if shared and cfg.data.get("root") is None and cfg.data.get("synthetic") is not None:
        synthetic_root(cfg.data.synthetic, cfg.data.get("cache_dir"))
    return keeper


def run_simulation_mode(cfg: DictConfig, run_directory: RunDirectory, resume: bool = False) -> ModeResult:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's state database logs its set-up
    from flwr.simulation import run_simulation

    from flip.federation.client_app import app as client_app
    from flip.federation.server_app import ServerOutcome, build_server_app

    federation = cfg.federation
    point = resume_point(cfg, run_directory.path) if resume else None
    names = simulated_site_names(cfg)
    sites = simulated_site_settings(cfg, names)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console)
    shown = progress if cfg.trainer.enable_progress_bar else None
    outcome = ServerOutcome()
    log.info("simulating %d sites (%s) for %d rounds with %s", len(names), ", ".join(names), federation.num_rounds, cfg.strategy._target_)
    with flower_sandbox() as scratch, progress, interrupts_reach_main_thread():
        os.environ[SIMULATION_SITES_ENV] = str(write_site_files(scratch / "sites", sites))
        run_simulation(
            server_app=build_server_app(cfg, names, partial(server_side, cfg, run_directory, shown), outcome, point, evaluated_path(cfg)),
            client_app=client_app,
            num_supernodes=federation.num_sites,
            backend_config=backend_config(cfg, scratch),
        )
    result = federation_result(outcome)
    result.manifest_extra["seeds"] = run_seeds(cfg, names, result.rounds)
    return result


def evaluated_path(cfg: DictConfig) -> Path | None:
    """job=evaluate: the checkpoint the config names, on this machine."""
    return Path(cfg.evaluation.checkpoint).expanduser() if job_of(cfg) == "evaluate" and cfg.evaluation.checkpoint else None


def resume_point(cfg: DictConfig, run_dir: Path) -> ResumePoint:
    """Where a stopped run of `cfg` in `run_dir` continues, or FlipError saying why it cannot."""
    problems = resume_problems(cfg)
    if problems:
        raise FlipError(f"{run_dir} cannot be resumed exactly: {'; '.join(problems)}")
    return load_point(run_dir)


def federation_result(outcome: ServerOutcome) -> ModeResult:
    """The final model (`final.ckpt`) and what the server recorded, once the rounds are done."""
    keeper = outcome.keeper
    if keeper is not None and keeper.evaluated:
        return evaluation_result(keeper)
    if keeper is None or keeper.last_state is None or keeper.last_round == 0:
        reason = outcome.stop_reason or "no round was aggregated (see the run log)"
        raise FlipError(f"the federation produced no model: {reason}")
    # The latest global model: the last round's, or the one before a round the budget forbade.
    digest = keeper.run_directory.save_final(keeper.last_round, keeper.last_state, keeper.hparams)
    result = mode_result(keeper, keeper.last_round, digest)
    result.stop_reason = outcome.stop_reason
    result.score_counts = keeper.score_counts
    result.cross_site = keeper.cross_site
    return result


def evaluation_result(keeper: RoundKeeper) -> ModeResult:
    """An evaluation-only run: the evaluated model is `final.ckpt`, its metrics are round 0's."""
    digest = keeper.run_directory.save_final(0, keeper.last_state, keeper.hparams)
    result = mode_result(keeper, 0, digest)
    result.best_metrics = {"round": None}
    result.score_counts = keeper.score_counts
    result.evaluated = {**keeper.evaluated, "model_sha256": digest}
    return result


def mode_result(keeper: RoundKeeper, rounds: int, digest: str) -> ModeResult:
    table = keeper.table

    def global_metrics(round_: int) -> dict[str, float]:
        found: dict[str, float] = {}
        for split in ("val", "test"):
            found.update(table.at_round(round_, split, FEDERATED))
            found.update({f"server:{k}": v for k, v in table.at_round(round_, split, SERVER).items()})
        return found

    site_metrics: dict[str, dict[str, float]] = {}
    for name in sorted({row[1] for row in table.rows} - {FEDERATED, SERVER}):
        for split in ("train", "val", "test"):
            site_metrics.setdefault(name, {}).update(table.at_round(rounds, split, name))
    return ModeResult(
        rounds=rounds,
        model_sha256=digest,
        metrics=global_metrics(rounds),
        best_metrics={"round": keeper.best_round, **global_metrics(keeper.best_round)},
        table=table,
        sites=[keeper.sites[index] for index in sorted(keeper.sites)],
        failures=keeper.failures,
        withheld=keeper.withheld,
        privacy=keeper.ledger.summary(keeper.site_names) if keeper.ledger else {},
        site_metrics=site_metrics,
    )
