"""Real Flower simulation runs (Ray backend) of 2 sites on this machine."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST_OVERRIDES

pytestmark = pytest.mark.slow

SIM = [*FAST_OVERRIDES, "federation.num_sites=2", "federation.num_rounds=2",
       "federation.server_eval_site=site-3"]


def flip_run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flip.cli", "run", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def run_dirs(cwd: Path) -> list[Path]:
    return sorted(path.parent for path in (cwd / "runs").rglob("summary.json"))


def test_two_sites_two_rounds_fill_the_run_directory(tmp_path):
    # With the label-skew options on: kept optimizer state goes through Flower's per-node state.
    result = flip_run(tmp_path, "dicom_synthetic_fedavg", *SIM, "federation.keep_optimizer_state=true",
                      "model.logit_adjustment=1.0")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
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


def test_same_seed_gives_the_same_global_weights(tmp_path):
    hashes = []
    for _ in range(2):
        result = flip_run(tmp_path, "dicom_synthetic_fedavg", *SIM, "federation.num_rounds=1")
        assert result.returncode == 0, result.stderr[-3000:]
    for run in run_dirs(tmp_path):
        hashes.append(json.loads((run / "summary.json").read_text())["model_sha256"])
    assert len(hashes) == 2 and hashes[0] == hashes[1]


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


def test_too_few_successful_sites_stop_the_run_with_a_clear_message(tmp_path):
    broken = "+federation.sites.site-2={data: {root: /nonexistent/site-2}}"
    result = flip_run(tmp_path, "dicom_synthetic_fedavg", *SIM, "federation.min_successful_sites=2", broken)
    assert result.returncode == 1
    assert "round 1: 1 of 2 sampled site(s) sent an update, fewer than federation.min_successful_sites=2" in result.stderr
    (manifest,) = (tmp_path / "runs").rglob("manifest.json")
    assert json.loads(manifest.read_text())["status"] == "failed"


def test_sweep_of_strategies_and_seeds_then_report(tmp_path):
    result = flip_run(tmp_path, "dicom_synthetic_fedavg", *SIM, "federation.num_rounds=1", "-m",
                      "strategy=fedavg,fedprox", "seed=0,1")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = run_dirs(tmp_path)
    assert len(runs) == 4
    (sweep,) = {run.parent for run in runs}
    report = subprocess.run([sys.executable, "-m", "flip.cli", "report", str(sweep)], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert sorted((row["strategy"], row["seed"]) for row in rows) == [("fedavg", "0"), ("fedavg", "1"), ("fedprox", "0"), ("fedprox", "1")]
    assert (sweep / "report.png").stat().st_size > 0 and (sweep / "report.md").is_file()


def test_ctrl_c_stops_the_simulation_cleanly(tmp_path):
    import os
    import signal
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "flip.cli", "run", "dicom_synthetic_fedavg", *SIM, "federation.num_rounds=50"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not list((tmp_path / "runs").rglob("round_1.ckpt")):  # interrupt once rounds are running
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()[-3000:]
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-3000:]
    assert "flip: interrupted" in output
    (manifest,) = (tmp_path / "runs").rglob("manifest.json")
    assert json.loads(manifest.read_text())["status"] == "interrupted"
    # Anything left of the run's process group (Ray workers included)? They get a while to exit
    # on a busy machine, but must go by themselves.
    leftover, deadline = True, time.monotonic() + 30
    while leftover and time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
            time.sleep(0.5)
        except ProcessLookupError:
            leftover = False
    assert not leftover, "processes of the interrupted run are still alive 30 s after it stopped"
