"""A small text classifier over hashed n-gram ids: mean-pooled embeddings, then an MLP head."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from flip.data.text.tokenize import PAD
from flip.models.base import Classifier
from flip.models.schema import TextClassifierConfig


class BagOfNgrams(nn.Module):
    """The mean embedding of a note's n-gram ids; padding (id 0) takes no part.

    Embeddings start small (fastText's U(-1/dim, 1/dim)), so words shared by every class add
    little noise before training has found the words that matter.
    """

    def __init__(self, num_buckets: int, embedding_dim: int):
        super().__init__()
        self.bag = nn.EmbeddingBag(num_buckets, embedding_dim, mode="mean", padding_idx=PAD)
        with torch.no_grad():
            self.bag.weight.uniform_(-1 / embedding_dim, 1 / embedding_dim)
            self.bag.weight[PAD].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bag(ids)


def classifier_head(embedding_dim: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Linear head on the pooled embedding; with `hidden` > 0, one ReLU layer first."""
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(embedding_dim, num_classes))
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(embedding_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
    )


class TextClassifier(Classifier):
    """Classifies notes given as [batch, max_tokens] hashed n-gram ids (flip.data.text.datamodule)."""

    schema = TextClassifierConfig

    def __init__(
        self,
        num_classes: int = 2,
        num_buckets: int = 1 << 14,
        embedding_dim: int = 64,
        hidden: int = 64,
        dropout: float = 0.1,
        metrics: tuple[str, ...] = ("accuracy", "auroc", "f1"),
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        logit_adjustment: float = 0.0,
    ):
        super().__init__(num_classes, metrics, optimizer, scheduler, logit_adjustment)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.num_buckets = num_buckets
        self.net = nn.Sequential(BagOfNgrams(num_buckets, embedding_dim), classifier_head(embedding_dim, hidden, num_classes, dropout))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.net(ids)

    def on_fit_start(self) -> None:
        """Stops at once, clearly, when the data hashes into another number of buckets."""
        datamodule = getattr(self.trainer, "datamodule", None)
        data_buckets = getattr(datamodule, "num_buckets", self.num_buckets)
        if data_buckets != self.num_buckets:
            raise ValueError(f"model.num_buckets ({self.num_buckets}) must equal data.num_buckets ({data_buckets})")
