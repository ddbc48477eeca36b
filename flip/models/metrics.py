"""torchmetrics collections for classification, named as in `model.metrics`."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import AUROC, Accuracy, F1Score, Precision, Recall

_METRICS = {"accuracy": Accuracy, "auroc": AUROC, "f1": F1Score, "precision": Precision, "recall": Recall}


def classification_metrics(names: list[str], num_classes: int, prefix: str) -> MetricCollection:
    """Binary metrics on the positive-class probability for two classes, macro multiclass otherwise."""
    if num_classes == 2:
        kwargs = {"task": "binary"}
    else:
        kwargs = {"task": "multiclass", "num_classes": num_classes, "average": "macro"}
    return MetricCollection({name: _METRICS[name](**kwargs) for name in names}, prefix=prefix)
