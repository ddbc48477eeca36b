"""Privacy end to end: `flip run` in simulation stops at the budget, and a site's policy refuses a run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import validate
from flip.privacy.accounting import projected_run_epsilon
from flip.privacy.central import poisson_draws
from flip.privacy.plan import PrivacyPlan
from tests.conftest import FAST_OVERRIDES

pytestmark = pytest.mark.slow

SIM = [*FAST_OVERRIDES, "federation.num_sites=2", "federation.server_eval_site=null"]


def flip_run(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flip.cli", "run", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_secure_dp_run_stops_before_the_round_that_would_exceed_the_budget(tmp_path):
    private = [*SIM, "privacy=secagg_dp_client_fixed", "federation.num_rounds=3"]
    plan = PrivacyPlan.from_config(validate(resolve_recipe("dicom_synthetic_fedavg"), private))
    first, second = (projected_run_epsilon(plan, rounds) for rounds in (1, 2))
    result = flip_run(tmp_path, "dicom_synthetic_fedavg", *private, f"privacy.max_epsilon={(first + second) / 2}")
    assert result.returncode == 0, result.stderr[-3000:]
    (summary_path,) = (tmp_path / "runs").rglob("summary.json")
    run = summary_path.parent
    summary = json.loads(summary_path.read_text())
    assert summary["rounds"] == 1
    assert summary["stop_reason"].startswith(f"round 2 would spend epsilon {second:.3f} in total, more than privacy.max_epsilon=")
    assert summary["privacy"]["mechanism"] == "dp_client_fixed" and summary["privacy"]["secure_aggregation"]
    assert summary["privacy"]["is_dp"] and summary["privacy"]["epsilon"] == pytest.approx(first)
    assert summary["privacy"]["delta"] == 1e-5
    rows = [row for row in csv.DictReader((run / "metrics.csv").open()) if row["split"] == "privacy"]
    assert {(row["round"], row["metric"]) for row in rows} == {("1", "epsilon"), ("1", "delta")}
    assert (run / "checkpoints" / "final.ckpt").is_file() and not (run / "checkpoints" / "round_2.ckpt").exists()
    manifest = json.loads((run / "manifest.json").read_text())["privacy"]
    assert manifest["epsilon"] == pytest.approx(first)
    for block in (summary["privacy"], manifest):
        assert (block["neighbours"], block["unit"], block["sampling"]) == ("replace_one", "site", "fixed_size")
        assert block["releases"] == [
            {"noise_to_sensitivity": 0.5, "sampling": "fixed_size", "population": 2, "sample_size": 2, "sampling_rate": None, "count": 1}
        ]
    assert "stopped early: round 2 would spend epsilon" in result.stdout


def test_a_site_policy_refuses_a_weaker_run_and_the_researcher_sees_why(tmp_path):
    sites_file = tmp_path / "sites.yaml"
    sites_file.write_text("site-2:\n  policy: {require_secure_aggregation: true, max_epsilon: 5.0}\n")
    result = flip_run(tmp_path, "dicom_synthetic_fedavg", *SIM, "privacy=dp_client_fixed", f"federation.sites_file={sites_file}")
    assert result.returncode == 1
    assert (
        "site-2 refuses this run: policy.require_secure_aggregation: this site requires SecAgg+, the run uses dp_client_fixed; "
        "policy.max_epsilon: the run would spend epsilon"
    ) in result.stderr
    (manifest,) = (tmp_path / "runs").rglob("manifest.json")
    assert json.loads(manifest.read_text())["status"] == "failed"


def test_add_remove_run_poisson_samples_its_sites_and_accounts_every_round(tmp_path):
    """Which sites trained each round is the seeded Poisson sample; a round without any still counts."""
    rate, rounds = 0.5, 3
    private = [
        *SIM, "seed=10", "privacy=dp_client_fixed", "privacy.neighbours=add_remove", f"privacy.sampling_rate={rate}",
        f"federation.num_rounds={rounds}",
    ]
    plan = PrivacyPlan.from_config(validate(resolve_recipe("dicom_synthetic_fedavg"), private))
    result = flip_run(tmp_path, "dicom_synthetic_fedavg", *private)
    assert result.returncode == 0, result.stderr[-3000:]
    (summary_path,) = (tmp_path / "runs").rglob("summary.json")
    privacy = json.loads(summary_path.read_text())["privacy"]
    assert (privacy["neighbours"], privacy["sampling"], privacy["sampling_rate"]) == ("add_remove", "poisson", rate)
    assert privacy["epsilon"] == pytest.approx(projected_run_epsilon(plan, rounds))
    rows = list(csv.DictReader((summary_path.parent / "metrics.csv").open()))
    trained = {(int(row["round"]), row["site"]) for row in rows if row["split"] == "train" and row["metric"] == "loss"}
    expected = {(r, f"site-{i + 1}") for r in range(1, rounds + 1) for i, u in enumerate(poisson_draws(plan.seed, r, 2)) if u < rate}
    assert trained == expected
    assert sorted(sum(r == n for r, _ in expected) for n in range(1, rounds + 1)) == [0, 1, 2]  # seed 10: 1, 0, 2 sites
    assert [row["round"] for row in rows if row["metric"] == "epsilon"] == [str(r) for r in range(1, rounds + 1)]
    # The privacy spent per round is plotted beside the metrics.
    plots = summary_path.parent / "plots"
    assert sorted(path.name for path in plots.iterdir()) == ["calibration.png", "loss.png", "monitor.png", "privacy.png", "roc.png"]
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in plots.iterdir())
