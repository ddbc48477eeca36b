"""A real Hydra sweep: its index, `flip report` and `flip audit verify` over the sweep directory."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import flip_cli

pytestmark = pytest.mark.slow


def test_a_sweep_is_indexed_reported_and_verified(local_sweep):
    sweep = local_sweep
    jobs_dirs = sorted(path.parent.name for path in sweep.rglob("manifest.json"))
    assert [name[:2] for name in jobs_dirs] == ["0_", "1_"] and "seed=0" in jobs_dirs[0] and "seed=1" in jobs_dirs[1]
    report = flip_cli(sweep, "report", str(sweep), timeout=120)
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert [row["seed"] for row in rows] == ["0", "1"]
    assert (sweep / "report.png").stat().st_size > 0 and (sweep / "report.md").is_file()
    # The sweep's index lists every job with its manifest's key facts.
    jobs = json.loads((sweep / "index.json").read_text())["jobs"]
    assert [job["job"] for job in jobs] == [0, 1] and {job["status"] for job in jobs} == {"completed"}
    for job in jobs:
        manifest = json.loads((sweep / job["run_dir"] / "manifest.json").read_text())
        assert (job["model_sha256"], job["config_sha256"], job["overrides"], job["seed"]) == (
            manifest["model_sha256"], manifest["config_sha256"], manifest["overrides"], manifest["seed"])
        assert job["monitor"] == manifest["config"]["monitor"] and isinstance(job["final"], float)
    assert [job["seed"] for job in jobs] == [0, 1] and jobs[0]["model_sha256"] != jobs[1]["model_sha256"]
    verified = flip_cli(sweep, "audit", "verify", str(sweep), timeout=120)
    assert verified.returncode == 0 and verified.stdout.count("PASS") == 2, verified.stdout + verified.stderr
