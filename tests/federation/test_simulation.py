"""Real Flower simulation runs (Ray backend) of 2 sites on this machine (their determinism:
tests/audit/test_audit.py reproduces one)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SIMULATION_OVERRIDES

pytestmark = pytest.mark.slow

SIM = SIMULATION_OVERRIDES[1:]


def flip_run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flip.cli", "run", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def run_dirs(cwd: Path) -> list[Path]:
    return sorted(path.parent for path in (cwd / "runs").rglob("summary.json"))


def test_two_sites_two_rounds_fill_the_run_directory(simulation_run):
    run = simulation_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mode"] == "simulation" and summary["rounds"] == 2 and summary["failures"] == []
    assert [site["site"] for site in summary["sites"]] == ["site-1", "site-2"]
    assert {"val/auroc", "test/accuracy", "server:test/auroc"} <= set(summary["metrics"])
    assert summary["best_metrics"]["round"] in (1, 2)
    assert set(summary["site_metrics"]) == {"site-1", "site-2"}
    for metrics in summary["site_metrics"].values():
        assert {"train/loss", "train/lr", "val/accuracy", "test/auroc"} <= set(metrics)
    for name in ("round_1.ckpt", "round_2.ckpt", "best.ckpt", "final.ckpt"):
        assert (run / "checkpoints" / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert {row["site"] for row in rows} == {"site-1", "site-2", "federated", "server"}
    assert {row["round"] for row in rows if row["site"] == "federated"} == {"1", "2"}
    rates = {(row["round"], row["site"]) for row in rows if row["split"] == "train" and row["metric"] == "lr"}
    assert rates == {(r, s) for r in ("1", "2") for s in ("site-1", "site-2")}
    round_times = {row["round"]: float(row["value"]) for row in rows if row["split"] == "time"}
    assert set(round_times) == {"1", "2"} and all(t > 0 for t in round_times.values())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and set(manifest["data"]) == {"site-1", "site-2"}
    assert (run / ".hydra" / "config.yaml").is_file()
    # The final model's ROC and calibration over both sites' test splits, from their score counts.
    assert sorted(path.name for path in (run / "plots").iterdir()) == ["calibration.png", "loss.png", "monitor.png", "roc.png"]


def test_a_failing_site_is_reported_and_the_round_goes_on(tmp_path):
    broken = "+federation.sites.site-2={data: {root: /nonexistent/site-2}}"
    result = flip_run(tmp_path, "dicom_synthetic_fedavg", *SIM, "federation.num_rounds=1", broken)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    failures = summary["failures"]
    assert {(f["round"], f["site"], f["phase"]) for f in failures} == {(1, "site-2", "train"), (1, "site-2", "evaluate")}
    assert "/nonexistent/site-2" in failures[0]["error"]
    log = next(run.glob("*.log")).read_text()
    assert "site-2 failed in train" in log
    # The event stream has it too, between the run's start and end, with each round's model hash.
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    kinds = [event["event"] for event in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_ended" and events[-1]["status"] == "completed"
    assert {(e["round"], e["site"], e["phase"]) for e in events if e["event"] == "site_failed"} == {(1, "site-2", "train"), (1, "site-2", "evaluate")}
    assert [e["round"] for e in events if e["event"] == "round_ended"] == [0, 1]


def test_too_few_successful_sites_stop_the_run_with_a_clear_message(tmp_path):
    broken = "+federation.sites.site-2={data: {root: /nonexistent/site-2}}"
    result = flip_run(tmp_path, "dicom_synthetic_fedavg", *SIM, "federation.min_successful_sites=2", broken)
    assert result.returncode == 1
    assert "round 1: 1 of 2 sampled site(s) sent an update, fewer than federation.min_successful_sites=2" in result.stderr
    (manifest,) = (tmp_path / "runs").rglob("manifest.json")
    assert json.loads(manifest.read_text())["status"] == "failed"
