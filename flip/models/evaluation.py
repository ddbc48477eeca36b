"""The metrics a config chooses in `evaluation.metrics` (torchmetrics classes), computed on a
site's own scores, with bootstrap intervals when `evaluation.bootstrap` asks for them.

Scores and labels never leave this module: what it returns is one number per metric and split
(and the bounds of its interval), the same as the metrics a model logs.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torchmetrics import Metric

from flip.config.allowlist import AllowList, safe_instantiate
from flip.results import CI_HIGH, CI_LOW

EVALUATION_METRICS = "evaluation.metrics"


def _spec(cfg: DictConfig) -> dict[str, Any]:
    evaluation = cfg.get("evaluation") or {}
    metrics = evaluation.get("metrics") or {}
    return OmegaConf.to_container(metrics, resolve=True) if OmegaConf.is_config(metrics) else dict(metrics)


def build_metrics(cfg: DictConfig) -> dict[str, Metric]:
    """Each configured metric, built after the allow-list of this machine passed it."""
    allow = AllowList.of(cfg.allowed_targets)
    return {name: safe_instantiate(node, allow, f"{EVALUATION_METRICS}.{name}") for name, node in _spec(cfg).items()}


def _example(num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores shaped as a model of `num_classes` gives them, and labels of every class."""
    labels = torch.arange(2 * num_classes) % num_classes
    if num_classes == 2:
        return torch.linspace(0.1, 0.9, len(labels)), labels
    return torch.full((len(labels), num_classes), 1.0 / num_classes), labels


def fit_problems(cfg: DictConfig) -> list[str]:
    """Metrics that do not fit the model's task: each is tried on scores shaped as the model
    gives them (two classes: the positive-class probability; more: a probability per class)."""
    num_classes = int(cfg.model.num_classes)
    shape = "the positive-class probability, shape [n]" if num_classes == 2 else f"class probabilities, shape [n, {num_classes}]"
    problems = []
    for name, metric in build_metrics(cfg).items():
        key = f"{EVALUATION_METRICS}.{name}"
        try:
            value = metric(*_example(num_classes))
        except Exception as error:  # torchmetrics says why in its own words
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            problems.append(f"{key}: {type(metric).__name__} does not fit a {num_classes}-class model's scores ({shape}): {first}")
            continue
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            problems.append(f"{key}: {type(metric).__name__} gives {_what(value)}, not one number per split")
    return problems


def _what(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return f"a {type(value).__name__}"


def collect_scores(model: torch.nn.Module, batches: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """A classifier's scores (as its metrics see them) and the labels of every batch."""
    scores, labels = [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for *inputs, batch_labels in batches:
            probabilities = model(*inputs).softmax(dim=-1)
            scores.append(probabilities[:, 1] if probabilities.shape[-1] == 2 else probabilities)
            labels.append(batch_labels)
    model.train(was_training)
    return torch.cat(scores), torch.cat(labels)


def _value(metric: Metric, scores: torch.Tensor, labels: torch.Tensor) -> float:
    metric.reset()
    value = float(metric(scores, labels))
    metric.reset()
    return value


def metric_values(metrics: dict[str, Metric], scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {name: _value(metric, scores, labels) for name, metric in metrics.items()}


def bootstrap_intervals(
    metrics: dict[str, Metric], scores: torch.Tensor, labels: torch.Tensor, resamples: int, confidence: float, seed: str
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of each metric over `resamples` draws of the items with replacement.

    Draws where a metric is undefined (NaN, e.g. a resample with one class only) are left out
    of that metric's interval.
    """
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little"))
    draws: dict[str, list[float]] = {name: [] for name in metrics}
    n = len(labels)
    for _ in range(resamples):
        index = torch.from_numpy(rng.integers(0, n, size=n))
        for name, value in metric_values(metrics, scores[index], labels[index]).items():
            if np.isfinite(value):
                draws[name].append(value)
    tail = (1.0 - confidence) / 2 * 100
    return {
        name: (float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))
        for name, values in draws.items()
        if values
    }


def evaluation_metrics(cfg: DictConfig, model: torch.nn.Module, datamodule: Any, site: str) -> dict[str, float]:
    """`split/name` for every configured metric on the val and test splits of a set-up data
    module, and `split/name_ci_low` / `_ci_high` with `evaluation.bootstrap`; {} when none is set."""
    metrics = build_metrics(cfg)
    if not metrics:
        return {}
    evaluation = cfg.evaluation
    found: dict[str, float] = {}
    for split, loader in (("val", datamodule.val_dataloader()), ("test", datamodule.test_dataloader())):
        scores, labels = collect_scores(model, loader)
        if len(labels) == 0:
            continue
        found.update({f"{split}/{name}": value for name, value in metric_values(metrics, scores, labels).items()})
        if evaluation.bootstrap > 0:
            seed = f"{cfg.seed}-bootstrap-{site}-{split}"
            for name, (low, high) in bootstrap_intervals(metrics, scores, labels, evaluation.bootstrap, evaluation.confidence, seed).items():
                found[f"{split}/{name}_{CI_LOW}"], found[f"{split}/{name}_{CI_HIGH}"] = low, high
    return found
