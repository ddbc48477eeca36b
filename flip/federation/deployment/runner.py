"""`flip run RECIPE federation=deployment`: submit the run to the server's SuperLink through the
Control API, follow its log, and end with the same summary as a simulation.

The run directory with the model (checkpoints, metrics, manifest, summary) is written on the
server, in its runs folder; the local run directory gets the metrics, the summary, the
manifest (with the server's run id and run directory) and the log. `deployment.json` there
says which server run it is, so `flip run --resume` can find it: while that run still goes,
`--resume` follows it again; when it stopped, it continues on the server from its last
completed round.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from flip.audit.run_directory import RunDirectory
from flip.errors import FlipError
from flip.federation.deployment.control import Control, ca_bytes
from flip.federation.deployment.server_run import RESULT_MARK, RUN_DIR_MARK
from flip.results import MetricsTable
from flip.run_types import ModeResult, SiteReport

log = logging.getLogger(__name__)
RECEIPT = "deployment.json"
_TAIL = 12


def _hydra_job() -> tuple[str, list[str]]:
    """The recipe's name and the overrides of this Hydra job (what the server records)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        job = HydraConfig.get()
        return job.job.name, list(job.overrides.task)
    except ValueError:
        return "run", []


def _recipe_sha256(cfg: DictConfig) -> str:
    from flip.audit.manifest import file_sha256
    from flip.experiment.recipes import resolve_recipe

    name, _ = _hydra_job()
    try:
        return file_sha256(resolve_recipe(name))
    except FlipError:
        return ""


def run_config(cfg: DictConfig, resume_dir: str = "") -> dict[str, Any]:
    import flip
    from flip.federation.client_app import PROTOCOL
    from flip.federation.shipping import pack_config

    text, digest = pack_config(cfg)
    recipe, overrides = _hydra_job()
    return {
        "flip-config": text,
        "flip-config-sha256": digest,
        "flip-recipe": recipe,
        "flip-recipe-sha256": _recipe_sha256(cfg),
        "flip-overrides": json.dumps(overrides),
        "flip-resume": resume_dir,
        "flip-protocol": PROTOCOL,
        "flip-version": flip.__version__,
    }


def connect(cfg: DictConfig) -> Control:
    from flip.config.schema_deployment import connection_problems
    from flip.errors import ConfigError

    federation = cfg.federation
    if problems := connection_problems(federation):
        raise ConfigError(problems)
    ca = None if federation.insecure else ca_bytes(federation.root_certificates, "federation.root_certificates")
    return Control(str(federation.superlink), ca, bool(federation.insecure))


class Follower:
    """Prints the server's log lines as they come and picks out flip's own markers."""

    def __init__(self, on_run_dir: Any = lambda path: None) -> None:
        self.on_run_dir = on_run_dir
        self.server_run_dir: str | None = None
        self.result: dict[str, Any] | None = None
        self.tail: deque[str] = deque(maxlen=_TAIL)
        self._partial = ""
        self.after = 0.0

    def feed(self, text: str) -> None:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.line(line.rstrip("\r"))

    def line(self, line: str) -> None:
        if RUN_DIR_MARK in line:
            self.server_run_dir = line.split(RUN_DIR_MARK, 1)[1].strip()
            log.info("server run directory: %s", self.server_run_dir)
            self.on_run_dir(self.server_run_dir)
        elif RESULT_MARK in line:
            self.result = json.loads(line.split(RESULT_MARK, 1)[1])
        elif line.strip():
            self.tail.append(line)
            log.info("server | %s", line)

    def follow(self, control: Control, run_id: int) -> None:
        for text, timestamp in control.logs(run_id, self.after):
            self.feed(text)
            self.after = max(self.after, timestamp)
        if self._partial:
            self.feed("\n")


def _receipt(run_dir: Path, **fields: Any) -> dict[str, Any]:
    path = run_dir / RECEIPT
    receipt = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    receipt.update(fields)
    RunDirectory(run_dir).write_json(RECEIPT, receipt)
    return receipt


def run_deployment_mode(cfg: DictConfig, run_dir: Path, resume: bool = False) -> ModeResult:
    """Submit (or, with `resume`, follow again or continue) the run; its result, as a mode's."""
    from flip.federation.deployment.app_bundle import build_fab

    federation = cfg.federation
    logging.getLogger("httpx").setLevel(logging.WARNING)
    follower = Follower(lambda path: _receipt(run_dir, server_run_dir=path))
    with connect(cfg) as control:
        run_id, resume_dir = None, ""
        if resume:
            run_id, resume_dir, follower.server_run_dir = _resume_plan(control, run_dir)
        if run_id is None:
            run_id = control.start_run(build_fab(), run_config(cfg, resume_dir))
            log.info("submitted run %d to %s%s", run_id, federation.superlink, f" (continuing {resume_dir})" if resume_dir else "")
        _receipt(run_dir, superlink=str(federation.superlink), flower_run_id=run_id, server_run_dir=follower.server_run_dir)
        try:
            follower.follow(control, run_id)
        except KeyboardInterrupt:
            log.warning("interrupted: stopping run %d on the server", run_id)
            control.stop_run(run_id)
            _receipt(run_dir, server_run_dir=follower.server_run_dir)
            raise
        _receipt(run_dir, server_run_dir=follower.server_run_dir)
        info = control.run(run_id)
    if info.sub_status != "completed" or follower.result is None:
        tail = "\n".join(f"    {line}" for line in follower.tail) or "    (no log lines)"
        why = info.details or {"completed": "the ServerApp ended without a result", "stopped": "someone stopped it (`flip stop`)"}.get(info.sub_status, "no reason given")
        hint = ""
        if follower.server_run_dir and (Path(follower.server_run_dir) / "checkpoints" / "resume.json").exists():
            hint = f"\n  it completed rounds before it stopped: `flip run --resume {run_dir}` continues it"
        elif follower.server_run_dir:
            hint = f"\n  if rounds were completed, `flip run --resume {run_dir}` continues it on the server"
        raise FlipError(f"run {run_id} {info.sub_status or info.status} on the server at {federation.superlink}: {why}\n  its last log lines:\n{tail}{hint}")
    return _mode_result(follower.result, run_id, follower.server_run_dir)


def _resume_plan(control: Control, run_dir: Path) -> tuple[int | None, str, str | None]:
    """(a run to follow again, or None; the server run directory to continue; that directory)."""
    receipt_file = run_dir / RECEIPT
    if not receipt_file.is_file():
        raise FlipError(f"{run_dir}: no {RECEIPT}; is it the local directory of a deployment run?")
    receipt = json.loads(receipt_file.read_text(encoding="utf-8"))
    run_id, server_dir = int(receipt["flower_run_id"]), receipt.get("server_run_dir")
    try:
        info = control.run(run_id)
    except FlipError:
        info = None  # a server that lost its state: continue from its run directory
    if info is not None and info.status != "finished":
        log.info("run %d is still %s on the server: following it again", run_id, info.status)
        return run_id, "", server_dir
    if info is not None and info.sub_status == "completed":
        log.info("run %d completed on the server: collecting its result again", run_id)
        return run_id, "", server_dir
    if not server_dir:
        raise FlipError(f"run {run_id} stopped before the server made its run directory: there is nothing to resume; run it again")
    return None, server_dir, server_dir


def _mode_result(result: dict[str, Any], run_id: int, server_run_dir: str | None) -> ModeResult:
    summary = result["summary"]
    sites = [SiteReport(**{**site, "split_sizes": tuple(site["split_sizes"])}) for site in summary.get("sites", [])]
    log.info("the model and checkpoints are on the server, in %s", server_run_dir)
    return ModeResult(
        rounds=int(summary["rounds"]),
        model_sha256=str(summary["model_sha256"]),
        metrics=summary["metrics"],
        best_metrics=summary["best_metrics"],
        table=MetricsTable([tuple(row) for row in result["metrics"]]),
        sites=sites,
        failures=summary.get("failures", []),
        withheld=summary.get("withheld", []),
        privacy=summary.get("privacy", {}),
        stop_reason=summary.get("stop_reason"),
        site_metrics=summary.get("site_metrics", {}),
        cross_site=list(result.get("cross_site") or []),
        evaluated=dict(summary.get("evaluated") or {}),
        manifest_extra={"flower_run_id": run_id, "server_run_dir": server_run_dir, "server_wall_time_s": summary.get("wall_time_s")},
    )
