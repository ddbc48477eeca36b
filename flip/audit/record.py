"""The run directory's records, the same for every mode and wherever the run happens: the
manifest before and after, metrics.csv and summary.json (a deployment's ServerApp writes them
in the server's runs folder, `flip run` in the Hydra run directory)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from flip.audit.manifest import now_iso, run_environment, start_manifest
from flip.audit.run_directory import MANIFEST, ROUND_ENDED, RUN_ENDED, RUN_STARTED, SUMMARY, RunDirectory, read_events
from flip.audit.tracking import Tracker, start_tracking
from flip.run_types import ModeResult, SiteReport


@dataclass
class RunRecord:
    """What a run directory says about the run, besides its results."""

    mode: str
    config_sha256: str
    seed: int
    monitor: str
    recipe: Path | None = None
    # Where the recipe is not on this machine (a deployment's server): its name and sha256.
    recipe_name: str | None = None
    recipe_sha256: str | None = None
    manifest_extra: dict[str, Any] = field(default_factory=dict)
    # Continue the records of a run that stopped (the manifest keeps its start and lists resumes).
    resumed: bool = False
    # The resolved `logger` node: the tracker that mirrors this run (None: no tracker here).
    tracker: dict[str, Any] | None = None


def _manifest(run_dir: Path, record: RunRecord) -> dict[str, Any]:
    path = run_dir / MANIFEST
    if record.resumed and path.is_file():
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest.setdefault("resumes", []).append({"at": now_iso(), "previous_status": manifest.get("status")})
        for key in ("error", "finished_at", "files"):
            manifest.pop(key, None)
    else:
        manifest = start_manifest(recipe=record.recipe, config_sha256=record.config_sha256, seed=record.seed, mode=record.mode)
    if record.recipe_name and manifest.get("recipe") is None:
        manifest.update(recipe=record.recipe_name, recipe_sha256=record.recipe_sha256)
    manifest.update(record.manifest_extra)
    return manifest


def record_run(directory: RunDirectory, record: RunRecord, body: Callable[[RunDirectory], ModeResult]) -> dict[str, Any]:
    """Run `body` with the manifest saying `running`, then write every record; returns the summary.

    A failure or an interrupt is written to the manifest (`failed` with the error, or
    `interrupted`) and raised again. The completed manifest ends with the sha256 of every other
    file in the directory, so nothing is written into it afterwards (but in `logs/`: the run's
    tracker, `record.tracker`, adds the sealed manifest last).
    """
    run_dir = directory.path
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(run_dir, record)
    manifest["status"] = "running"
    directory.write_json(MANIFEST, manifest)
    tracker = _tracker(directory, record)
    directory.emit(RUN_STARTED, mode=record.mode, config_sha256=record.config_sha256, seed=record.seed, resumed=record.resumed)
    started = time.perf_counter()
    try:
        result = body(directory)
    except BaseException as error:
        status = "interrupted" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "failed"
        manifest.update(record.manifest_extra)
        manifest.update(status=status, error=f"{type(error).__name__}: {error}", finished_at=now_iso())
        directory.emit(RUN_ENDED, status=status, error=manifest["error"])
        manifest["environment"] = run_environment()
        directory.write_json(MANIFEST, manifest)
        if tracker is not None:
            tracker.finish(status)
            tracker.close(status)
        raise
    wall_time = time.perf_counter() - started

    directory.write_metrics(result.table)
    from flip.plots import plot_files  # matplotlib: loaded once the rounds are done, not at start-up

    for name, png in plot_files(result.table.rows, record.monitor, result.score_counts.get("test")).items():
        directory.write_bytes(name, png)
    summary = {
        "mode": record.mode,
        "recipe": _recipe_name(record),
        "status": "completed",
        "config_sha256": record.config_sha256,
        "model_sha256": result.model_sha256,
        "seed": record.seed,
        "rounds": result.rounds,
        "monitor": record.monitor,
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
    directory.write_json(SUMMARY, summary)
    directory.emit(RUN_ENDED, status="completed", rounds=result.rounds, model_sha256=result.model_sha256, metrics=result.metrics)
    if tracker is not None:
        tracker.finish("completed")  # it may log: before the run's log file is sealed
    manifest.update(record.manifest_extra)  # the body may have added to it (e.g. the sites' versions)
    manifest.update(result.manifest_extra)
    manifest.update(
        status="completed",
        finished_at=now_iso(),
        model_sha256=result.model_sha256,
        privacy=result.privacy,
        data={site.site: data_record(site) for site in result.sites},
        models=model_records(directory, result),
        environment=run_environment(),
    )
    manifest["files"] = directory.file_hashes()
    directory.write_json(MANIFEST, manifest)
    if tracker is not None:  # the sealed manifest; it writes only under logs/, which is not sealed
        tracker.close("completed")
    return summary


def _tracker(directory: RunDirectory, record: RunRecord) -> Tracker | None:
    config = record.manifest_extra.get("config") or {}
    tags = {"flip.mode": record.mode, "flip.config_sha256": record.config_sha256, "flip.seed": record.seed,
            "flip.recipe": _recipe_name(record), "flip.run_dir": str(directory.path.resolve())}
    return start_tracking(record.tracker, directory, local=record.mode == "local", recipe=_recipe_name(record), tags=tags, params=config)


def _recipe_name(record: RunRecord) -> str | None:
    return record.recipe.stem if record.recipe else record.recipe_name


def data_record(site: SiteReport) -> dict[str, Any]:
    """A site's data as the manifest keeps it: counts, label counts (those a site sends: at least
    its k) and the fingerprint, sha256 over the sorted per-item content hashes."""
    return {
        "fingerprint": site.fingerprint,
        "items": site.found,
        "skipped": site.skipped,
        "split_sizes": list(site.split_sizes),
        "label_counts": dict(site.label_counts),
    }


def model_records(directory: RunDirectory, result: ModeResult) -> dict[str, Any]:
    """sha256 of the global model after every round (0: the initial one), the final and the best."""
    rounds = {int(event["round"]): event["model_sha256"] for event in read_events(directory.path) if event["event"] == ROUND_ENDED}
    best_round = result.best_metrics.get("round")
    return {
        "rounds": {str(round_): rounds[round_] for round_ in sorted(rounds)},
        "final": result.model_sha256,
        "best_round": best_round,
        "best": rounds.get(best_round) if isinstance(best_round, int) else None,
    }
