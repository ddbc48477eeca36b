"""run(cfg): validate, write the manifest, dispatch on the federation mode, write the results."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from flip.audit.manifest import now_iso, start_manifest
from flip.config.allowlist import AllowList, entry_problems, target_problems
from flip.experiment.rules import rule_problems
from flip.errors import ConfigError
from flip.results import config_sha256, write_json
from flip.run_types import ModeResult

log = logging.getLogger(__name__)


def _local(cfg: DictConfig, run_dir: Path) -> ModeResult:
    from flip.local import run_local
    from flip.training import configure_torch

    configure_torch(cfg)

    return run_local(cfg, run_dir)


def _simulation(cfg: DictConfig, run_dir: Path) -> ModeResult:
    from flip.federation.simulation import run_simulation_mode

    return run_simulation_mode(cfg, run_dir)


RUNNERS: dict[str, Callable[[DictConfig, Path], ModeResult]] = {"local": _local, "simulation": _simulation}


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
    problems += target_problems(container, allowed, resolve=cfg.federation.mode == "local")
    if not problems and cfg.federation.mode != "local":
        problems += target_problems({"strategy": container["strategy"]}, allowed, resolve=True)
    if problems:
        raise ConfigError(problems)


def run(cfg: DictConfig, run_dir: Path, recipe: Path | None = None) -> RunResult:
    """Run the experiment `cfg` describes and fill `run_dir`; same layout for every mode."""
    check_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    mode = cfg.federation.mode
    digest = config_sha256(cfg)
    manifest = start_manifest(recipe=recipe, config_sha256=digest, seed=cfg.seed, mode=mode)
    manifest["status"] = "running"
    write_json(run_dir / "manifest.json", manifest)
    started = time.perf_counter()
    try:
        result = RUNNERS[mode](cfg, run_dir)
    except BaseException as error:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        manifest.update(status=status, error=f"{type(error).__name__}: {error}", finished_at=now_iso())
        write_json(run_dir / "manifest.json", manifest)
        raise
    wall_time = time.perf_counter() - started

    result.table.write_csv(run_dir / "metrics.csv")
    summary = {
        "mode": mode,
        "recipe": recipe.stem if recipe else None,
        "status": "completed",
        "config_sha256": digest,
        "model_sha256": result.model_sha256,
        "seed": cfg.seed,
        "rounds": result.rounds,
        "monitor": cfg.monitor,
        "metrics": result.metrics,
        "best_metrics": result.best_metrics,
        "sites": [asdict(site) for site in result.sites],
        "site_metrics": result.site_metrics,
        "failures": result.failures,
        "withheld": result.withheld,
        "privacy": result.privacy,
        "stop_reason": result.stop_reason,
        "wall_time_s": round(wall_time, 3),
    }
    write_json(run_dir / "summary.json", summary)
    manifest.update(
        status="completed",
        finished_at=now_iso(),
        model_sha256=result.model_sha256,
        privacy=result.privacy,
        data={site.site: {"fingerprint": site.fingerprint, "items": site.found} for site in result.sites},
    )
    write_json(run_dir / "manifest.json", manifest)
    log.info("run directory: %s", run_dir)
    return RunResult(run_dir, summary)
