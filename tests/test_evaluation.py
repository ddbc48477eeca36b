"""Evaluation people can trust: cross-site evaluation, evaluation-only runs (`job=evaluate`),
metrics chosen in YAML with bootstrap intervals, and the errors of each bad input."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from torchmetrics.classification import BinaryAccuracy

from flip.audit.manifest import file_sha256
from flip.errors import ConfigError
from flip.experiment.compose import compose_recipe
from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import config_problems
from flip.models.evaluation import bootstrap_intervals
from flip.results import model_sha256
from tests.conftest import (
    CROSS_SITE_RECIPE,
    FAST_OVERRIDES,
    SIMULATION_EXTRA,
    SIMULATION_OVERRIDES,
    at_site,
    flip_run_dir,
    simulated_sites,
    write_recipe,
)

SIM = SIMULATION_OVERRIDES[1:]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def composed(overrides: list[str], recipe: str | None = None):
    return compose_recipe(resolve_recipe(recipe), overrides)


def check(overrides: list[str], recipe: str | None = None) -> list[str]:
    """The problems `flip run` reports before it starts anything."""
    from flip.run import check_config

    try:
        check_config(composed(overrides, recipe))
    except ConfigError as error:
        return error.problems
    return []


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    height, width, _ = imread(path).shape
    assert height > 100 and width > 100


# ---------------------------------------------------------------- cross-site evaluation


@pytest.mark.slow
def test_the_cross_site_matrix_equals_direct_evaluation_of_the_same_models(simulation_run):
    from flip.audit.run_directory import load_weights
    from flip.federation.site import evaluate_model, server_datamodule, site_datamodule

    run = simulation_run
    rows = list(csv.DictReader((run / "cross_site.csv").open()))
    matrix = {(r["model"], r["site"], f"{r['split']}/{r['metric']}"): float(r["value"]) for r in rows}
    assert {model for model, _, _ in matrix} == {"global", "site-1", "site-2"}
    assert {site for _, site, _ in matrix} == {"site-1", "site-2", "site-3"}  # site-3: the server's own
    cfg = composed([*SIM, *SIMULATION_EXTRA], CROSS_SITE_RECIPE)
    models = {
        "global": load_weights(run / "checkpoints" / "final.ckpt"),
        "site-1": load_weights(run / "checkpoints" / "sites" / "site-1.ckpt"),
        "site-2": load_weights(run / "checkpoints" / "sites" / "site-2.ckpt"),
    }
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["models"]["sites"] == {site: model_sha256(models[site]) for site in ("site-1", "site-2")}
    # The site models are the sites' own: neither is the global model, and they differ.
    assert not all(torch.equal(models["site-1"][k], models["global"][k]) for k in models["global"])
    assert not all(torch.equal(models["site-1"][k], models["site-2"][k]) for k in models["global"])
    evaluators = {}
    for index in range(2):
        site_cfg, settings = at_site(cfg, index)
        evaluators[settings.name] = (site_cfg, site_datamodule(site_cfg, settings))
    evaluators["site-3"] = (cfg, server_datamodule(cfg))
    checked = 0
    for model, state in models.items():
        for site, (site_cfg, datamodule) in evaluators.items():
            direct = evaluate_model(site_cfg, datamodule, state, site)
            for key in ("val/loss", "val/auroc", "test/loss", "test/accuracy", "test/auroc", "test/f1"):
                assert matrix[(model, site, key)] == pytest.approx(direct[key], abs=1e-6), (model, site, key)
                checked += 1
    assert checked == 3 * 3 * 6
    summary = json.loads((run / "summary.json").read_text())
    headline = summary["cross_site"]
    assert headline["metric"] == "test/auroc"
    assert headline["models"]["site-1"]["site-2"] == pytest.approx(matrix[("site-1", "site-2", "test/auroc")])
    others = [matrix[("site-1", "site-2", "test/auroc")], matrix[("site-2", "site-1", "test/auroc")]]
    assert headline["site_models_mean_on_other_sites"] == pytest.approx(sum(others) / 2)
    assert headline["global_mean_over_sites"] == pytest.approx(
        (matrix[("global", "site-1", "test/auroc")] + matrix[("global", "site-2", "test/auroc")]) / 2
    )
    assert_png(run / "cross_site.png")
    assert_png(run / "plots" / "calibration.png")


def test_cross_site_is_refused_where_it_would_leak_or_mean_nothing():
    fed = [*SIMULATION_OVERRIDES[1:], "evaluation.cross_site=true"]
    recipe = resolve_recipe(SIMULATION_OVERRIDES[0])
    assert any("a local run has one site" in p for p in config_problems(resolve_recipe(None), ["evaluation.cross_site=true"]))
    secagg = config_problems(recipe, [*fed, "privacy=secagg"])
    assert any(p.startswith("evaluation.cross_site: with secure aggregation the server never holds") for p in secagg), secagg
    central = config_problems(recipe, [*fed, "privacy=dp_server_fixed"])
    assert any(p.startswith("evaluation.cross_site: sends each site's own model to the other sites, which dp_server_fixed") for p in central)
    assert config_problems(recipe, [*fed, "privacy=local_dp"]) == []


def test_a_site_whose_policy_keeps_its_model_refuses_a_cross_site_run():
    from flip.federation.shipping import pack_config
    from flip.federation.site_config import SiteSettings
    from flip.federation.trust import SiteRefusal, accept_run

    cfg = composed([*SIMULATION_OVERRIDES[1:], "evaluation.cross_site=true"], SIMULATION_OVERRIDES[0])
    raw = simulated_sites(cfg)[0]
    raw["policy"] = {**raw.get("policy", {}), "share_model": False}
    with pytest.raises(SiteRefusal) as refused:
        accept_run(*pack_config(cfg), SiteSettings.from_mapping(raw, raw["name"]))
    assert "policy.share_model: this site's model may not go to other sites" in str(refused.value)


# ---------------------------------------------------------------- evaluation-only runs


@pytest.mark.slow
def test_the_evaluate_recipe_reproduces_a_simulations_final_metrics_at_every_site(simulation_run, tmp_path):
    run = flip_run_dir(tmp_path, "dicom_synthetic_evaluate", *SIM, *SIMULATION_EXTRA, f"evaluation.checkpoint={simulation_run}")
    trained = json.loads((simulation_run / "summary.json").read_text())
    evaluated = json.loads((run / "summary.json").read_text())
    assert evaluated["job"] == "evaluate" and evaluated["rounds"] == 0
    assert evaluated["evaluated"]["file_sha256"] == file_sha256(simulation_run / "checkpoints" / "final.ckpt")
    assert evaluated["model_sha256"] == trained["model_sha256"]
    for key, value in trained["metrics"].items():  # pooled (federated) and the server's own
        assert evaluated["metrics"][key] == pytest.approx(value, abs=1e-6), key
    for site in ("site-1", "site-2"):
        metrics = evaluated["site_metrics"][site]
        for key, value in trained["site_metrics"][site].items():
            if not key.startswith("train/"):
                assert metrics[key] == pytest.approx(value, abs=1e-6), (site, key)
        # The recipe's own metrics, with each site's bootstrap interval around them.
        for name in ("sensitivity", "specificity", "calibration_error"):
            low, value, high = (metrics[f"test/{name}{part}"] for part in ("_ci_low", "", "_ci_high"))
            assert 0.0 <= low <= high <= 1.0, (site, name)
    # Pooled over sites: weighted means of the metrics; an interval is a site's own, never averaged.
    assert "test/specificity" in evaluated["metrics"] and "test/specificity_ci_low" not in evaluated["metrics"]
    # Same layout as a training run: the evaluated model is the run's final model.
    assert (run / "checkpoints" / "final.ckpt").is_file() and (run / "metrics.csv").is_file()
    assert not (run / "checkpoints" / "round_1.ckpt").exists()
    assert_png(run / "plots" / "roc.png")


EVALUATION_RECIPE = """\
# Evaluation-only, with metrics chosen as torchmetrics classes and bootstrap intervals.
defaults:
  - flip
  - _self_

job: evaluate
evaluation:
  metrics:
    sensitivity: {_target_: torchmetrics.classification.BinaryRecall, threshold: 0.3}
    specificity: {_target_: torchmetrics.classification.BinarySpecificity, threshold: 0.3}
    calibration_error: {_target_: torchmetrics.classification.BinaryCalibrationError, n_bins: 5}
  bootstrap: 40
"""


@pytest.mark.slow
def test_local_evaluation_reproduces_the_final_metrics_and_adds_yaml_metrics_with_intervals(local_run, tmp_path):
    recipe = write_recipe(tmp_path, EVALUATION_RECIPE, "evaluate")
    checkpoint = local_run / "checkpoints" / "final.ckpt"
    run = flip_run_dir(tmp_path, str(recipe), *FAST_OVERRIDES, f"evaluation.checkpoint={checkpoint}")
    trained = json.loads((local_run / "summary.json").read_text())["metrics"]
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    for key in ("val/loss", "val/auroc", "test/loss", "test/accuracy", "test/auroc", "test/f1"):
        assert metrics[key] == pytest.approx(trained[key], abs=1e-6), key
    for split in ("val", "test"):
        for name in ("sensitivity", "specificity", "calibration_error"):
            low, value, high = (metrics[f"{split}/{name}{part}"] for part in ("_ci_low", "", "_ci_high"))
            assert 0.0 <= low <= high <= 1.0 and (low <= value <= high or low == high), (split, name, low, value, high)


def test_bootstrap_intervals_match_the_binomial_spread_of_accuracy():
    """Accuracy on n items is a mean of n correct/incorrect indicators: a resampled accuracy has
    standard deviation sqrt(p(1-p)/n), so the 95% percentile interval is p ± 1.96 of it."""
    n, correct = 2000, 1600
    labels = torch.ones(n, dtype=torch.long)
    scores = torch.cat([torch.full((correct,), 0.9), torch.full((n - correct,), 0.1)])
    (low, high), = bootstrap_intervals({"accuracy": BinaryAccuracy()}, scores, labels, 400, 0.95, "seed").values()
    p = correct / n
    spread = 1.96 * math.sqrt(p * (1 - p) / n)
    assert low == pytest.approx(p - spread, abs=0.006) and high == pytest.approx(p + spread, abs=0.006)
    again = bootstrap_intervals({"accuracy": BinaryAccuracy()}, scores, labels, 400, 0.95, "seed")
    assert again["accuracy"] == (low, high)  # seeded: the same draws every time
    assert np.isfinite([low, high]).all()


# ---------------------------------------------------------------- bad input


def test_a_missing_or_unfit_checkpoint_is_named_before_anything_runs(local_run, tmp_path):
    evaluate = [*FAST_OVERRIDES, "job=evaluate"]
    missing = tmp_path / "nope.ckpt"
    assert check([*evaluate, f"evaluation.checkpoint={missing}"]) == [
        f"evaluation.checkpoint: {missing} does not exist (give a flip run directory or a checkpoint file)"
    ]
    assert "is a folder but not a flip run directory" in check([*evaluate, f"evaluation.checkpoint={tmp_path}"])[0]
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    assert "is not a checkpoint torch can load safely" in check([*evaluate, f"evaluation.checkpoint={garbage}"])[0]
    copy = Path(shutil.copytree(local_run, tmp_path / "run"))
    problems = check([*evaluate, f"evaluation.checkpoint={copy}", "model.channels=[8,16,32]", "model.hidden=32"])
    assert problems and all(p.startswith(f"evaluation.checkpoint: {copy}/checkpoints/final.ckpt does not fit the configured model") for p in problems)
    assert any("weights of another shape: " in p and "[16, 1, 3, 3] in the checkpoint, [8, 1, 3, 3] in the model" in p for p in problems), problems
    (copy / "checkpoints" / "final.ckpt").unlink()
    assert "has no final model (checkpoints/final.ckpt); did the run complete?" in check([*evaluate, f"evaluation.checkpoint={copy}"])[0]


def test_evaluation_settings_and_metrics_that_do_not_fit_the_task_are_listed():
    assert check([*FAST_OVERRIDES, "job=evaluate"]) == [
        "evaluation.checkpoint: job=evaluate evaluates a model: set it to a flip run directory or a Lightning checkpoint file"
    ]
    problems = config_problems(resolve_recipe(None), ["evaluation.bootstrap=-1", "evaluation.confidence=1.5"])
    assert problems == [
        "evaluation.bootstrap: must be 0 (no intervals) or a number of resamples up to 10000, got -1",
        "evaluation.confidence: must be in (0, 1), got 1.5",
    ]
    multiclass = "++evaluation.metrics={kappa: {_target_: torchmetrics.classification.MulticlassAUROC, num_classes: 3}}"
    curve = "++evaluation.metrics={roc: {_target_: torchmetrics.classification.BinaryROC}}"
    clash = "++evaluation.metrics={auroc: {_target_: torchmetrics.classification.BinaryAUROC}}"
    assert check([multiclass])[0].startswith("evaluation.metrics.kappa: MulticlassAUROC does not fit a 2-class model's scores (the positive-class probability, shape [n]): ")
    assert check([curve]) == ["evaluation.metrics.roc: BinaryROC gives a tuple, not one number per split"]
    assert check([clash]) == ["evaluation.metrics.auroc: model.metrics reports auroc already; give this one another name"]
