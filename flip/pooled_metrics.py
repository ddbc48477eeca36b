"""Metrics of the pooled predictions of every site, from what a site may send: counts.

A site sends, per split, how many of its positive and of its negative items scored in each of
`BINS` equal bins of [0, 1] (the positive-class probability), never a per-item score. Summed over
sites, those counts give the ROC curve at the bin edges, the AUROC (pairs in one bin count a
half, as tied scores do) and a calibration curve.
"""

from __future__ import annotations

import numpy as np

BINS = 100


def bin_counts(scores: np.ndarray, labels: np.ndarray, bins: int = BINS) -> tuple[np.ndarray, np.ndarray]:
    """(positives, negatives) per score bin: bin i holds scores in [i/bins, (i+1)/bins), 1.0 the last."""
    index = np.clip((np.asarray(scores, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)
    labels = np.asarray(labels)
    positives = np.bincount(index[labels == 1], minlength=bins)
    negatives = np.bincount(index[labels != 1], minlength=bins)
    return positives, negatives


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """P(a positive scores above a negative), a pair within one bin counting a half; None
    without both classes."""
    positives, negatives = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    n_pos, n_neg = positives.sum(), negatives.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    negatives_below = np.cumsum(negatives) - negatives
    return float((positives * (negatives_below + 0.5 * negatives)).sum() / (n_pos * n_neg))


def roc_curve(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every bin edge, from threshold 1 down to 0."""
    positives, negatives = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    tpr = np.concatenate([[0.0], np.cumsum(positives[::-1])]) / max(positives.sum(), 1.0)
    fpr = np.concatenate([[0.0], np.cumsum(negatives[::-1])]) / max(negatives.sum(), 1.0)
    return fpr, tpr


def calibration_curve(positives: np.ndarray, negatives: np.ndarray, groups: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted probability, observed positive fraction, items) per group of bins with items."""
    positives, negatives = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    bins = len(positives)
    centres = (np.arange(bins) + 0.5) / bins
    group = np.minimum((np.arange(bins) * groups) // bins, groups - 1)
    items = np.bincount(group, weights=positives + negatives, minlength=groups)
    predicted = np.bincount(group, weights=centres * (positives + negatives), minlength=groups)
    observed = np.bincount(group, weights=positives, minlength=groups)
    kept = items > 0
    return predicted[kept] / items[kept], observed[kept] / items[kept], items[kept]
