"""run(cfg): validate, write the manifest, dispatch on the federation mode, write the results."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from flip.audit.record import RunRecord, record_run
from flip.audit.run_directory import RECIPE_COPY, RunDirectory, read_overrides
from flip.audit.trackers import missing_package
from flip.audit.verify import RESOLVED_YAML
from flip.config.allowlist import AllowList, entry_problems, target_problems
from flip.config.schema import BASELINE_MODES, job_of
from flip.experiment.rules import rule_problems
from flip.errors import ConfigError, FlipError
from flip.results import config_sha256
from flip.run_types import ModeResult

log = logging.getLogger(__name__)


def _local(cfg: DictConfig, directory: RunDirectory) -> ModeResult:
    from flip.local import evaluate_local, run_local
    from flip.training import configure_torch

    configure_torch(cfg)
    return evaluate_local(cfg, directory) if job_of(cfg) == "evaluate" else run_local(cfg, directory)


def _simulation(cfg: DictConfig, directory: RunDirectory, resume: bool = False) -> ModeResult:
    from flip.federation.simulation import run_simulation_mode

    return run_simulation_mode(cfg, directory, resume=resume)


def _deployment(cfg: DictConfig, directory: RunDirectory, resume: bool = False) -> ModeResult:
    from flip.federation.deployment.runner import run_deployment_mode

    return run_deployment_mode(cfg, directory.path, resume=resume)


# local and pooled: one model trained on this machine (flip.local), on one site or on every site.
RUNNERS: dict[str, Callable[..., ModeResult]] = {"local": _local, "pooled": _local, "simulation": _simulation, "deployment": _deployment}


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def check_config(cfg: DictConfig) -> None:
    """The cross-group rules and the allow-list, on an already composed config.

    This machine builds every component of a local run, so each is resolved and checked now; a
    simulation's driver builds only the strategy (and the model and data it evaluates on, which
    are checked when built), while each simulated site checks the rest against its own settings.
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    allowed = AllowList.of(cfg.allowed_targets)
    problems = rule_problems(cfg) + entry_problems(container.get("allowed_targets"), "allowed_targets")
    baseline = cfg.federation.mode in BASELINE_MODES
    problems += target_problems(container, allowed, resolve=baseline)
    if not problems and not baseline:
        problems += target_problems({"strategy": container["strategy"]}, allowed, resolve=True)
        problems += target_problems({"evaluation": container["evaluation"]}, allowed, resolve=True)
    if not problems and cfg.evaluation.metrics:  # they passed the allow-list: built now, on scores shaped as the model's
        from flip.models.evaluation import fit_problems

        problems += fit_problems(cfg)
    if not problems and job_of(cfg) == "evaluate" and cfg.federation.mode != "deployment":
        from flip.local import checked_checkpoint

        checked_checkpoint(cfg)  # here, not after the sites started: a missing or unfit checkpoint
    tracker = container.get("logger") or {}
    missing = missing_package(str(tracker.get("kind"))) if cfg.federation.mode != "deployment" else None
    if missing:  # this machine tracks a local run or a simulation (a deployment's server tracks its own)
        problems.append(f"logger: {missing}")
    if problems:
        raise ConfigError(problems)


def run(cfg: DictConfig, run_dir: Path, recipe: Path | None = None, resume: bool = False) -> RunResult:
    """Run the experiment `cfg` describes and fill `run_dir`; same layout for every mode.

    With `resume`, `run_dir` holds a federated run that stopped: it continues after its last
    completed round (`flip run --resume RUN_DIR`).
    """
    check_config(cfg)
    mode = cfg.federation.mode
    if resume and mode in BASELINE_MODES:
        raise FlipError(f"--resume continues a federated run; a {mode} run has no rounds to resume")
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    record = RunRecord(
        mode=mode,
        config_sha256=config_sha256(cfg),
        seed=cfg.seed,
        monitor=cfg.monitor,
        recipe=recipe,
        resumed=resume,
        manifest_extra={
            "config": config,
            "config_file": {"path": ".hydra/config.yaml", "hash": RESOLVED_YAML},
            "overrides": read_overrides(run_dir),
        },
        # A deployment is tracked by its server, which writes the rounds and holds the model.
        tracker=None if mode == "deployment" else config.get("logger"),
    )
    runner = RUNNERS[mode]
    body = partial(runner, cfg, resume=True) if resume else partial(runner, cfg)
    log.info("run directory: %s", run_dir)  # before the records close: the log file is one of them
    directory = RunDirectory(run_dir)
    if recipe is not None and not resume:
        directory.write_bytes(RECIPE_COPY, recipe.read_bytes())
    summary = record_run(directory, record, body)
    return RunResult(run_dir, summary)
