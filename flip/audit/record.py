"""The run directory's records, the same for every mode and wherever the run happens: the
manifest before and after, metrics.csv and summary.json (a deployment's ServerApp writes them
in the server's runs folder, `flip run` in the Hydra run directory)."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from flip.audit.manifest import now_iso, run_environment, start_manifest
from flip.audit.run_directory import (
    MANIFEST,
    ROUND_ENDED,
    RUN_ENDED,
    RUN_STARTED,
    SITE_MODELS,
    SUMMARY,
    RunDirectory,
    load_weights,
    read_events,
)
from flip.results import CROSS_SITE_COLUMNS, CROSS_SITE_CSV, CROSS_SITE_PNG, cross_site_headline, model_sha256
from flip.audit.tracking import Tracker, start_tracking
from flip.config.schema import BASELINE_MODES
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
    cross_site = write_cross_site(directory, result.cross_site, [site.site for site in result.sites])
    summary = {
        "mode": record.mode,
        "job": "evaluate" if result.evaluated else "train",
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
    if result.evaluated:
        summary["evaluated"] = result.evaluated
    if cross_site:
        summary["cross_site"] = cross_site
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
    local = record.mode in BASELINE_MODES  # one model trained here: its metrics are the run's own
    return start_tracking(record.tracker, directory, local=local, recipe=_recipe_name(record), tags=tags, params=config)


def _recipe_name(record: RunRecord) -> str | None:
    return record.recipe.stem if record.recipe else record.recipe_name


def write_cross_site(directory: RunDirectory, rows: list[dict[str, Any]], site_names: list[str]) -> dict[str, Any]:
    """cross_site.csv (every model, site, split and metric) and cross_site.png (a heat map of the
    headline metric); returns the headline for summary.json ({} without cross-site evaluation)."""
    if not rows:
        return {}
    from flip.plots import cross_site_figure, png_bytes

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CROSS_SITE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    directory.write_bytes(CROSS_SITE_CSV, buffer.getvalue().encode())
    headline = cross_site_headline(rows, site_names)
    if headline:
        directory.write_bytes(CROSS_SITE_PNG, png_bytes(cross_site_figure(headline["models"], headline["metric"])))
    return headline


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
    records = {
        "rounds": {str(round_): rounds[round_] for round_ in sorted(rounds)},
        "final": result.model_sha256,
        "best_round": best_round,
        "best": rounds.get(best_round) if isinstance(best_round, int) else None,
    }
    site_models = sorted((directory.checkpoints / SITE_MODELS).glob("*.ckpt"))
    if site_models:  # evaluation.cross_site: each site's own model, as evaluated
        records["sites"] = {path.stem: model_sha256(load_weights(path)) for path in site_models}
    return records
