"""torchmetrics collections for classification, named as in `model.metrics`."""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import AUROC, Accuracy, F1Score, Precision, Recall

from flip.pooled_metrics import BINS

_METRICS = {"accuracy": Accuracy, "auroc": AUROC, "f1": F1Score, "precision": Precision, "recall": Recall}


def classification_metrics(names: list[str], num_classes: int, prefix: str) -> MetricCollection:
    """Binary metrics on the positive-class probability for two classes, macro multiclass otherwise."""
    if num_classes == 2:
        kwargs = {"task": "binary"}
    else:
        kwargs = {"task": "multiclass", "num_classes": num_classes, "average": "macro"}
    return MetricCollection({name: _METRICS[name](**kwargs) for name in names}, prefix=prefix)


class ScoreCounts(Metric):
    """How many positive and negative items scored in each bin of [0, 1]: what a site may send
    so that the server computes metrics of the pooled predictions (flip.pooled_metrics)."""

    full_state_update = False

    def __init__(self, bins: int = BINS):
        super().__init__()
        self.bins = bins
        self.add_state("positives", default=torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("negatives", default=torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        index = (scores.detach().double() * self.bins).long().clamp(0, self.bins - 1)
        self.positives += torch.bincount(index[labels == 1], minlength=self.bins)
        self.negatives += torch.bincount(index[labels != 1], minlength=self.bins)

    def compute(self) -> tuple[list[int], list[int]]:
        return self.positives.tolist(), self.negatives.tolist()
