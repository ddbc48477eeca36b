"""A small convolutional classifier for 2-D medical images."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from flip.models.base import Classifier


class Standardize(nn.Module):
    """Centres inputs in [0, 1] around zero; without it small nets barely move in a few epochs."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - 0.5) / 0.25


def conv_backbone(in_channels: int, channels: list[int], global_pool: str) -> nn.Sequential:
    """Conv-ReLU-MaxPool blocks, then global pooling (no batch norm: it suits DP and FL).

    Max pooling keeps a small bright finding visible wherever it is; average pooling dilutes it.
    """
    layers: list[nn.Module] = [Standardize()]
    for out_channels in channels:
        layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        in_channels = out_channels
    pool = nn.AdaptiveMaxPool2d(1) if global_pool == "max" else nn.AdaptiveAvgPool2d(1)
    layers += [pool, nn.Flatten()]
    return nn.Sequential(*layers)


class ImageClassifier(Classifier):
    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        channels: tuple[int, ...] = (16, 32, 64),
        global_pool: str = "max",
        hidden: int = 64,
        dropout: float = 0.1,
        metrics: tuple[str, ...] = ("accuracy", "auroc", "f1"),
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
    ):
        super().__init__(num_classes, metrics, optimizer, scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = nn.Sequential(
            conv_backbone(in_channels, list(channels), global_pool),
            nn.Linear(list(channels)[-1], hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
