"""An end-to-end local run of the default recipe: the full run directory (its determinism:
tests/audit/test_audit.py reproduces it)."""

from __future__ import annotations

import csv
import json

import matplotlib.image
import pytest
import torch

from flip.models.image import ImageClassifier
from flip.results import model_sha256

pytestmark = pytest.mark.slow


def test_default_recipe_writes_the_full_run_directory(local_run):
    run = local_run
    assert run.parent.parent.name == "runs" and run.name.endswith("_dicom_synthetic_local")
    assert [path.name for path in run.parents[2].iterdir()] == ["runs"]  # nothing written beside the run directory
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "metrics.csv",
                 "summary.json", "manifest.json", "events.jsonl", "recipe.yaml", "checkpoints/best.ckpt",
                 "checkpoints/final.ckpt", "checkpoints/round_1.ckpt", "dicom_synthetic_local.log",
                 "plots/monitor.png", "plots/loss.png", "plots/roc.png"):
        assert (run / name).is_file(), name

    summary = json.loads((run / "summary.json").read_text())
    assert summary["mode"] == "local" and summary["recipe"] == "dicom_synthetic_local"
    assert summary["status"] == "completed" and len(summary["config_sha256"]) == 64
    assert {"test/accuracy", "test/auroc", "test/f1", "val/loss"} <= set(summary["metrics"])
    assert {"round", "test/accuracy", "val/loss"} <= set(summary["best_metrics"])
    (site,) = summary["sites"]
    assert site["site"] == "site-1" and sum(site["split_sizes"]) == site["found"] > 0

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config_sha256"] == summary["config_sha256"] and manifest["seed"] == 42
    for package in ("flip-fl", "torch", "lightning", "flwr", "hydra-core"):
        assert manifest["versions"][package], package
    assert manifest["python"] and manifest["status"] == "completed"
    assert manifest["data"]["site-1"]["fingerprint"] == site["fingerprint"]

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert set(rows[0]) == {"round", "site", "split", "metric", "value"}
    assert {(row["split"], row["metric"]) for row in rows} >= {("train", "loss"), ("val", "auroc"), ("test", "accuracy")}

    assert not (run / "plots" / "privacy.png").exists()  # no privacy accounted, nothing to plot
    image = matplotlib.image.imread(run / "plots" / "monitor.png")
    assert image.shape[0] > 100 and image.shape[1] > 100

    # The final checkpoint holds exactly the weights whose hash the summary reports.
    final = ImageClassifier.load_from_checkpoint(run / "checkpoints" / "final.ckpt", weights_only=True)
    assert model_sha256(final.state_dict()) == summary["model_sha256"]


def test_checkpoint_weights_are_plain_tensors(local_run):
    run = local_run
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in checkpoint["state_dict"].values())


def test_pooled_baseline_trains_on_the_federations_sites_and_tests_on_each(tmp_path):
    """`federation=pooled` on the flagship federated recipe, unchanged: one model trained on every
    federated site's training split (not the server's held-out site), tested on each site's split."""
    from tests.conftest import FAST_OVERRIDES, flip_run_dir

    run = flip_run_dir(tmp_path, "dicom_synthetic_fedavg", *FAST_OVERRIDES, "federation=pooled", "federation.num_sites=2",
                       "federation.server_eval_site=site-3", "federation.num_rounds=1",
                       "model.logit_adjustment=1.0")  # its class prior: from every site's training split
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["mode"], summary["rounds"]) == ("pooled", 1)
    assert [site["site"] for site in summary["sites"]] == ["site-1", "site-2"]
    trained = sum(site["split_sizes"][0] for site in summary["sites"])
    log = (run / "dicom_synthetic_fedavg.log").read_text()
    assert f"training on pooled: {trained} train" in log
    assert "pooled baseline: trains on site-1, site-2 for 1 epochs" in log and "site-3 (the server's held-out site)" in log
    assert set(summary["site_metrics"]) == {"site-1", "site-2", "site-3"}
    assert all("test/auroc" in metrics for metrics in summary["site_metrics"].values())
    assert summary["metrics"]["server:test/auroc"] == summary["site_metrics"]["site-3"]["test/auroc"]
