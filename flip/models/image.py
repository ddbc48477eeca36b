"""A small convolutional classifier for 2-D medical images."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from flip.models.base import Classifier, mlp_head
from flip.models.schema import ImageClassifierConfig


class Standardize(nn.Module):
    """Centres inputs in [0, 1] around zero; without it small nets barely move in a few epochs."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - 0.5) / 0.25


_LAYERS = {
    2: (nn.Conv2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d),
    3: (nn.Conv3d, nn.MaxPool3d, nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool3d),
}


def conv_backbone(in_channels: int, channels: list[int], global_pool: str, spatial_dims: int = 2) -> nn.Sequential:
    """Conv-ReLU-MaxPool blocks, then global pooling (no batch norm: it suits DP and FL).

    Max pooling keeps a small bright finding visible wherever it is; average pooling dilutes it.
    `spatial_dims` 3 builds the same for volumes (pooling rounds up, for thin stacks).
    """
    conv, max_pool, global_max, global_avg = _LAYERS[spatial_dims]
    layers: list[nn.Module] = [Standardize()]
    for out_channels in channels:
        layers += [conv(in_channels, out_channels, 3, padding=1), nn.ReLU(), max_pool(2, ceil_mode=spatial_dims == 3)]
        in_channels = out_channels
    layers += [global_max(1) if global_pool == "max" else global_avg(1), nn.Flatten()]
    return nn.Sequential(*layers)


class ImageClassifier(Classifier):
    schema = ImageClassifierConfig

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
        logit_adjustment: float = 0.0,
    ):
        super().__init__(num_classes, metrics, optimizer, scheduler, logit_adjustment)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = nn.Sequential(
            conv_backbone(in_channels, list(channels), global_pool), *mlp_head(list(channels)[-1], hidden, num_classes, dropout)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
