"""The body of a deployment's ServerApp, on the server: check the run it was given, write its
run directory in the server's runs folder, and serve the rounds as a simulation would.

Everything comes from the run config (the config text + sha256, the recipe's name and hash,
the overrides, a run directory to resume) and from the server's own folder (its settings, its
enrolled sites). What the researcher's `flip run` reads back comes through the run's log: the
line starting `RUN_DIR_MARK` says where the run directory is, the last line starting
`RESULT_MARK` carries the summary and the metrics rows.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from flip.audit.record import RunRecord, record_run
from flip.audit.run_directory import SHIPPED_CONFIG, RunDirectory
from flip.audit.verify import FILE_BYTES
from flip.config.allowlist import AllowList, target_problems
from flip.config.checks import strip_markers
from flip.config.schema import job_of
from flip.experiment.rules import rule_problems
from flip.experiment.validate import schema_problems
from flip.privacy.schema import SitePolicy
from flip.errors import ConfigError, FlipError
from flip.federation.deployment.polling import PollingGrid
from flip.federation.deployment.server_home import ServerHome
from flip.federation.seeds import run_seeds
from flip.federation.shipping import unpack_config
from flip.federation.site_config import SiteSettings, site_run_config
from flip.federation.trust import marker_problems

RUN_DIR_MARK = "flip-run-directory: "
RESULT_MARK = "flip-result: "
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger(__name__)


def server_config(text: str, digest: str, settings: dict[str, Any]) -> DictConfig:
    """The config the server runs: the received one, checked as a site checks it, under the
    server's own data settings and allow-list (a strategy beyond Flower's must be listed there)."""
    server = SiteSettings(
        name="server",
        data=dict(settings.get("data") or {}),
        policy=SitePolicy(),
        allowed_targets=tuple(settings.get("allowed_targets") or ()),
        approved=None,
        cpus=None,
        partition=None,
    )
    try:
        received = unpack_config(text, digest)
    except ConfigError as error:
        raise FlipError(f"the server refuses this run: {'; '.join(error.problems)}") from None
    marked = site_run_config(received, server)
    plain = strip_markers(marked)
    problems = marker_problems(marked) or schema_problems(marked)
    # Every name is checked against the allow-list; the server builds only the strategy (and the
    # model and data it evaluates on, checked when built), so only that one is imported now.
    allowed = AllowList.of(server.allowed_targets)
    problems += target_problems(plain, allowed) + target_problems({"strategy": plain.get("strategy")}, allowed, resolve=True)
    if not problems:
        cfg = OmegaConf.create(plain)
        problems = rule_problems(cfg)
    if problems:
        raise FlipError(f"the server refuses this run: {'; '.join(problems)}")
    uri = (cfg.get("logger") or {}).get("tracking_uri")
    if uri and uri not in (settings.get("tracking_uris") or []):
        raise FlipError(
            f"the server refuses this run: logger.tracking_uri: {uri} is not one of the tracking URIs this server "
            "reports to (tracking_uris in its settings) (rule: server tracking_uris)"
        )
    if cfg.federation.mode != "deployment":
        raise FlipError(f"the server refuses this run: federation.mode is {cfg.federation.mode!r}, not 'deployment'")
    return cfg


def new_run_dir(runs: Path, recipe: str) -> Path:
    now = datetime.now()
    base = runs / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}_{recipe or 'run'}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}_{n}")
    return run_dir


def resumed_run_dir(runs: Path, name: str, digest: str) -> Path:
    """A run directory of this server's to continue; only one inside its runs folder, of the same config."""
    run_dir = (runs / name).resolve()
    if runs.resolve() not in run_dir.parents or not (run_dir / "manifest.json").is_file():
        raise FlipError(f"the server refuses to resume {name!r}: not a run directory in its runs folder")
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("config_sha256") != digest:
        raise FlipError(f"the server refuses to resume {name!r}: that run ran a different config")
    return run_dir


def evaluated_checkpoint(runs: Path, cfg: DictConfig) -> Path | None:
    """job=evaluate: the model a deployment evaluates is one of this server's runs (a run
    directory, or a checkpoint inside one, named relative to its runs folder): a received config
    never makes the server read a file elsewhere."""
    if job_of(cfg) != "evaluate":
        return None
    name = str(cfg.evaluation.checkpoint)
    path = (runs / name).resolve()
    if runs.resolve() not in path.parents:
        raise FlipError(
            f"the server refuses to evaluate {name!r}: evaluation.checkpoint must name one of its runs, relative to its "
            "runs folder (`flip runs` lists them)"
        )
    return path


def _log_to(run_dir: Path, recipe: str) -> logging.Handler:
    """flip's log lines to stderr (Flower streams them to `flip run`) and to the run's log file."""
    flip_logger = logging.getLogger("flip")
    flip_logger.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    file = logging.FileHandler(run_dir / f"{recipe or 'run'}.log", encoding="utf-8")
    file.setFormatter(logging.Formatter(FORMAT))
    for handler in (console, file):
        flip_logger.addHandler(handler)
    logging.getLogger("flwr").setLevel(logging.WARNING)  # flip reports rounds itself
    return file


def _write_config(directory: RunDirectory, cfg: DictConfig, text: str, overrides: list[str]) -> None:
    """The run's config as the server received it (its sha256 is the run's config hash) and, for
    readers of Hydra's layout, as `.hydra/` files."""
    directory.write_bytes(SHIPPED_CONFIG, text.encode())
    directory.write_bytes(".hydra/config.yaml", OmegaConf.to_yaml(cfg).encode())
    directory.write_bytes(".hydra/overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)).encode())


def serve_run(grid: Any, context: Any) -> None:
    """The deployment ServerApp's main (see the module docstring)."""
    from flip.federation.server_app import ServerOutcome, serve
    from flip.federation.simulation import federation_result, resume_point, server_side

    from flwr.superlink.grid import http_grid

    from flip.federation.deployment.daemon import short_object_retries

    short_object_retries(http_grid, 0.25)  # replies are pulled on a short poll (PollingGrid)
    home = ServerHome.from_env()
    settings = home.settings()
    run_config = context.run_config
    text, digest = str(run_config["flip-config"]), str(run_config["flip-config-sha256"])
    recipe = str(run_config.get("flip-recipe", "")) or "run"
    cfg = server_config(text, digest, settings)
    runs = Path(settings["runs_dir"])
    resume = str(run_config.get("flip-resume", ""))
    run_dir = resumed_run_dir(runs, resume, digest) if resume else new_run_dir(runs, recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(RUN_DIR_MARK + str(run_dir), file=sys.stderr, flush=True)
    handler = _log_to(run_dir, recipe)
    overrides = [str(item) for item in json.loads(str(run_config.get("flip-overrides", "[]")))]
    site_names = list(cfg.federation.site_names) or home.site_names(int(cfg.federation.num_sites))
    if not resume:
        _write_config(RunDirectory(run_dir), cfg, text, overrides)
    outcome = ServerOutcome()
    extra = {
        "command": ["flwr-serverapp", f"run {context.run_id}"],  # its argv holds the run's token
        "flower_run_id": int(context.run_id),
        "server_run_dir": str(run_dir),
        "site_names": site_names,
        "requested_by": {"flip_version": str(run_config.get("flip-version", "?"))},
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "config_file": {"path": SHIPPED_CONFIG, "hash": FILE_BYTES},
        "overrides": overrides,
    }
    record = RunRecord(
        mode="deployment",
        config_sha256=digest,
        seed=int(cfg.seed),
        monitor=str(cfg.monitor),
        recipe_name=recipe,
        recipe_sha256=str(run_config.get("flip-recipe-sha256", "")) or None,
        manifest_extra=extra,
        resumed=bool(resume),
        tracker=extra["config"].get("logger"),  # the server tracks a deployment; sites never do
    )

    def body(run_directory: RunDirectory):
        point = resume_point(cfg, run_dir) if resume else None
        log.info("serving %s across %s for %d rounds", recipe, ", ".join(site_names), cfg.federation.num_rounds)
        checkpoint = evaluated_checkpoint(runs, cfg)
        serve(PollingGrid(grid), cfg, site_names, partial(server_side, cfg, run_directory, None), outcome, point, (text, digest), checkpoint)
        extra["site_versions"] = outcome.site_versions
        result = federation_result(outcome)
        result.manifest_extra["seeds"] = run_seeds(cfg, site_names, result.rounds)
        return result

    started = time.perf_counter()
    try:
        summary = record_run(RunDirectory(run_dir), record, body)
    except BaseException as error:
        log.error("run failed: %s", error)
        raise
    finally:
        logging.getLogger("flip").removeHandler(handler)
        handler.close()
    rows = [list(row) for row in outcome.keeper.table.rows] if outcome.keeper else []
    log.info("done in %.1f s; run directory %s", time.perf_counter() - started, run_dir)
    cross_site = outcome.keeper.cross_site if outcome.keeper else []
    print(RESULT_MARK + json.dumps({"summary": summary, "metrics": rows, "cross_site": cross_site}, default=str), file=sys.stderr, flush=True)
