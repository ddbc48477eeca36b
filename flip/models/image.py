"""A small convolutional classifier for 2-D medical images."""

from __future__ import annotations

from typing import Any, Callable, Optional

import lightning as L
import torch
from torch import nn

from flip.models.metrics import classification_metrics


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


class ImageClassifier(L.LightningModule):
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
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory = optimizer or torch.optim.Adam
        self.scheduler_factory = scheduler
        self.net = nn.Sequential(
            conv_backbone(in_channels, list(channels), global_pool),
            nn.Linear(list(channels)[-1], hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.num_classes = num_classes
        names = list(metrics)
        # ModuleDict keys must not shadow nn.Module attributes such as `train`.
        self.split_metrics = nn.ModuleDict(
            {f"{split}_metrics": classification_metrics(names, num_classes, f"{split}/") for split in ("train", "val", "test")}
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = nn.functional.cross_entropy(logits, labels)
        probabilities = logits.softmax(dim=-1)
        scores = probabilities[:, 1] if self.num_classes == 2 else probabilities
        self.split_metrics[f"{split}_metrics"].update(scores, labels)
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _log_epoch_metrics(self, split: str) -> None:
        metrics = self.split_metrics[f"{split}_metrics"]
        self.log_dict(metrics.compute())
        metrics.reset()

    def on_train_epoch_end(self):
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self):
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self):
        self._log_epoch_metrics("test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
