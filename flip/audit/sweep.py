"""A sweep's index: one entry per job with its manifest's key facts (`index.json` in the sweep
directory, rewritten as each job ends)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flip.audit.run_directory import MANIFEST, RunDirectory, read_json

INDEX = "index.json"


def job_entry(sweep_dir: Path, job_dir: Path, job: int) -> dict[str, Any]:
    """The index entry of one job, from what its run directory holds."""
    manifest = read_json(job_dir / MANIFEST, "manifest") if (job_dir / MANIFEST).is_file() else {}
    summary_file = job_dir / "summary.json"
    summary = read_json(summary_file, "run summary") if summary_file.is_file() else {}
    monitor = summary.get("monitor") or (manifest.get("config") or {}).get("monitor")
    best = summary.get("best_metrics") or {}
    return {
        "job": job,
        "run_dir": job_dir.relative_to(sweep_dir).as_posix() if job_dir.is_relative_to(sweep_dir) else str(job_dir),
        "overrides": manifest.get("overrides", []),
        "status": manifest.get("status", "not started"),
        "error": manifest.get("error"),
        "config_sha256": manifest.get("config_sha256"),
        "seed": manifest.get("seed"),
        "model_sha256": manifest.get("model_sha256"),
        "monitor": monitor,
        "final": (summary.get("metrics") or {}).get(monitor),
        "best": best.get(monitor),
        "best_round": best.get("round"),
        "epsilon": (summary.get("privacy") or {}).get("epsilon"),
        "wall_time_s": summary.get("wall_time_s"),
    }


def record_job(sweep_dir: Path, job_dir: Path, job: int) -> None:
    """Add (or replace) job `job` in the sweep's index."""
    path = sweep_dir / INDEX
    index = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"jobs": []}
    jobs = [entry for entry in index["jobs"] if entry.get("job") != job]
    jobs.append(job_entry(sweep_dir, job_dir, job))
    index["jobs"] = sorted(jobs, key=lambda entry: entry["job"])
    RunDirectory(sweep_dir).write_json(INDEX, index)
