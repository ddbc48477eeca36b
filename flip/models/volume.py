"""A small 3-D convolutional classifier for volumes ([channels, D, H, W], e.g. `data.mode=volume`)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from flip.models.base import Classifier, mlp_head
from flip.models.image import conv_backbone
from flip.models.schema import VolumeClassifierConfig


class VolumeClassifier(Classifier):
    """The image classifier's head over a Conv3d backbone."""

    schema = VolumeClassifierConfig

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
        logit_adjustment: float = 0.0,
    ):
        super().__init__(num_classes, metrics, optimizer, scheduler, logit_adjustment)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = nn.Sequential(
            conv_backbone(in_channels, list(channels), global_pool, spatial_dims=3),
            *mlp_head(list(channels)[-1], hidden, num_classes, dropout),
        )

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.net(volumes)
