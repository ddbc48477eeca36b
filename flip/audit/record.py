"""The run directory's records, the same for every mode and wherever the run happens: the
manifest before and after, metrics.csv and summary.json (a deployment's ServerApp writes them
in the server's runs folder, `flip run` in the Hydra run directory)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from flip.audit.manifest import now_iso, start_manifest
from flip.results import write_json
from flip.run_types import ModeResult


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


def _manifest(run_dir: Path, record: RunRecord) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    if record.resumed and path.is_file():
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest.setdefault("resumes", []).append({"at": now_iso(), "previous_status": manifest.get("status")})
        for key in ("error", "finished_at"):
            manifest.pop(key, None)
    else:
        manifest = start_manifest(recipe=record.recipe, config_sha256=record.config_sha256, seed=record.seed, mode=record.mode)
    if record.recipe_name and manifest.get("recipe") is None:
        manifest.update(recipe=record.recipe_name, recipe_sha256=record.recipe_sha256)
    manifest.update(record.manifest_extra)
    return manifest


def record_run(run_dir: Path, record: RunRecord, body: Callable[[], ModeResult]) -> dict[str, Any]:
    """Run `body` with the manifest saying `running`, then write every record; returns the summary.

    A failure or an interrupt is written to the manifest (`failed` with the error, or
    `interrupted`) and raised again.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(run_dir, record)
    manifest["status"] = "running"
    write_json(run_dir / "manifest.json", manifest)
    started = time.perf_counter()
    try:
        result = body()
    except BaseException as error:
        status = "interrupted" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "failed"
        manifest.update(record.manifest_extra)
        manifest.update(status=status, error=f"{type(error).__name__}: {error}", finished_at=now_iso())
        write_json(run_dir / "manifest.json", manifest)
        raise
    wall_time = time.perf_counter() - started

    result.table.write_csv(run_dir / "metrics.csv")
    recipe = record.recipe.stem if record.recipe else record.recipe_name
    summary = {
        "mode": record.mode,
        "recipe": recipe,
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
    write_json(run_dir / "summary.json", summary)
    manifest.update(record.manifest_extra)  # the body may have added to it (e.g. the sites' versions)
    manifest.update(result.manifest_extra)
    manifest.update(
        status="completed",
        finished_at=now_iso(),
        model_sha256=result.model_sha256,
        privacy=result.privacy,
        data={site.site: {"fingerprint": site.fingerprint, "items": site.found} for site in result.sites},
    )
    write_json(run_dir / "manifest.json", manifest)
    return summary
