"""A small 3-D convolutional classifier for volumes ([channels, D, H, W], e.g. `data.mode=volume`)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from flip.models.base import Classifier
from flip.models.image import Standardize


def conv3d_backbone(in_channels: int, channels: list[int], global_pool: str) -> nn.Sequential:
    """Conv3d-ReLU-MaxPool3d blocks, then global pooling; no batch norm, as in the 2-D backbone."""
    layers: list[nn.Module] = [Standardize()]
    for out_channels in channels:
        layers += [nn.Conv3d(in_channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2, ceil_mode=True)]
        in_channels = out_channels
    pool = nn.AdaptiveMaxPool3d(1) if global_pool == "max" else nn.AdaptiveAvgPool3d(1)
    layers += [pool, nn.Flatten()]
    return nn.Sequential(*layers)


class VolumeClassifier(Classifier):
    """The image classifier's head over a Conv3d backbone."""

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        channels: tuple[int, ...] = (8, 16, 32),
        global_pool: str = "max",
        hidden: int = 32,
        dropout: float = 0.1,
        metrics: tuple[str, ...] = ("accuracy", "auroc", "f1"),
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
    ):
        super().__init__(num_classes, metrics, optimizer, scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = nn.Sequential(
            conv3d_backbone(in_channels, list(channels), global_pool),
            nn.Linear(list(channels)[-1], hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.net(volumes)
