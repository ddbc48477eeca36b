"""Metrics of pooled predictions from per-bin counts, checked against the pooled scores themselves."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flip.federation.keeper import SCORE_COUNTS, pooled_counts
from flip.models.metrics import ScoreCounts
from flip.pooled_metrics import BINS, auroc, bin_counts, calibration_curve, roc_curve


def rank_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney: the share of (positive, negative) pairs ordered right, ties a half, by sorting."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    start = 0
    while start < len(scores):  # average ranks over ties
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def site_predictions(rng: np.random.Generator, n: int, prevalence: float, sharpness: float) -> tuple[np.ndarray, np.ndarray]:
    labels = (rng.random(n) < prevalence).astype(int)
    scores = np.where(labels == 1, rng.beta(4, 2, n), rng.beta(2, 4, n)) ** sharpness
    return scores, labels


@pytest.mark.parametrize("seed", range(20))
def test_the_auroc_of_summed_site_counts_is_within_0_005_of_the_pooled_predictions(seed):
    rng = np.random.default_rng(seed)
    sites = [site_predictions(rng, n, p, s) for n, p, s in ((400, 0.3, 1.0), (60, 0.6, 0.5), (150, 0.1, 2.0))]
    positives = sum(bin_counts(scores, labels)[0] for scores, labels in sites)
    negatives = sum(bin_counts(scores, labels)[1] for scores, labels in sites)
    pooled_scores = np.concatenate([scores for scores, _ in sites])
    pooled_labels = np.concatenate([labels for _, labels in sites])
    assert abs(auroc(positives, negatives) - rank_auroc(pooled_scores, pooled_labels)) < 0.005
    # The mean of the sites' own AUROCs is not that number in general: pooling matters.
    fpr, tpr = roc_curve(positives, negatives)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0) and np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    threshold = 0.7  # a bin edge: the rates at it are those of the pooled scores at or above it
    at = round((1 - threshold) * BINS)
    assert tpr[at] == pytest.approx(np.mean(pooled_scores[pooled_labels == 1] >= threshold))
    assert fpr[at] == pytest.approx(np.mean(pooled_scores[pooled_labels == 0] >= threshold))


def test_calibration_groups_hold_the_observed_positive_fraction():
    rng = np.random.default_rng(3)
    scores, labels = site_predictions(rng, 2000, 0.4, 1.0)
    predicted, observed, items = calibration_curve(*bin_counts(scores, labels), groups=5)
    group = np.minimum((scores * 5).astype(int), 4)
    for g, (mean_p, fraction, n) in enumerate(zip(predicted, observed, items, strict=True)):
        assert n == (group == g).sum() and fraction == pytest.approx(labels[group == g].mean())
        assert abs(mean_p - scores[group == g].mean()) < 1 / BINS


def test_one_class_has_no_auroc():
    assert auroc(*bin_counts(np.array([0.2, 0.9]), np.array([1, 1]))) is None


def test_the_models_score_counts_are_the_same_bins():
    rng = np.random.default_rng(4)
    scores, labels = site_predictions(rng, 500, 0.5, 1.0)
    metric = ScoreCounts()
    for part in np.array_split(np.arange(500), 7):  # batches
        metric.update(torch.tensor(scores[part], dtype=torch.float32), torch.tensor(labels[part]))
    positives, negatives = metric.compute()
    expected = bin_counts(scores.astype(np.float32), labels)
    assert positives == expected[0].tolist() and negatives == expected[1].tolist()


def reply(**counts) -> SimpleNamespace:
    """Stands for a site's evaluate reply: only its content is read."""
    return SimpleNamespace(content={SCORE_COUNTS: counts})


def test_the_server_sums_good_counts_and_leaves_out_what_a_hostile_site_sends():
    good = bin_counts(np.array([0.1, 0.8, 0.95]), np.array([0, 1, 1]))
    honest = reply(**{"test/positives": good[0].tolist(), "test/negatives": good[1].tolist()})
    hostile = [
        reply(**{"test/positives": "not a list", "test/negatives": good[1].tolist()}),
        reply(**{"test/positives": [1] * (BINS + 1), "test/negatives": good[1].tolist()}),
        reply(**{"test/positives": [-5] * BINS, "test/negatives": good[1].tolist()}),
        reply(**{"test/positives": [0.5] * BINS, "test/negatives": good[1].tolist()}),
        reply(**{"test/positives": good[0].tolist()}),
        reply(**{"val/positives": [2**62] * BINS, "val/negatives": [2**62] * BINS}),
        SimpleNamespace(content={}),
    ]
    pooled = pooled_counts([honest, *hostile, honest])
    assert set(pooled) == {"test"}
    assert pooled["test"][0].tolist() == (2 * good[0]).tolist() and pooled["test"][1].tolist() == (2 * good[1]).tolist()
