"""A small multilayer perceptron for one row of features per patient (e.g. FHIR-derived)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from flip.models.base import Classifier
from flip.models.schema import TabularClassifierConfig


def mlp(in_features: int, hidden: list[int], num_classes: int, dropout: float) -> nn.Sequential:
    """Linear-ReLU-Dropout blocks, then a linear head (no batch norm: it suits DP and FL)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(), nn.Dropout(dropout)]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, num_classes))


class TabularClassifier(Classifier):
    """Classifies feature rows; `in_features` is the data's width (the runner passes it)."""

    schema = TabularClassifierConfig

    def __init__(
        self,
        in_features: Optional[int] = None,
        num_classes: int = 2,
        hidden: tuple[int, ...] = (64, 32),
        dropout: float = 0.1,
        metrics: tuple[str, ...] = ("accuracy", "auroc", "f1"),
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        logit_adjustment: float = 0.0,
    ):
        super().__init__(num_classes, metrics, optimizer, scheduler, logit_adjustment)
        if in_features is None or in_features < 1:
            raise ValueError(
                f"TabularClassifier needs in_features (the data's feature count), got {in_features}; "
                "flip passes it from the data config (flip.data.fhir.features.num_features)"
            )
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = mlp(in_features, list(hidden), num_classes, dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
