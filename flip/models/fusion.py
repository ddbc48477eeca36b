"""Late fusion of image, tabular and text encoders, aware of which modalities each patient has."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from flip.models.base import Classifier, mlp_head
from flip.models.image import conv_backbone
from flip.models.tabular import mlp
from flip.models.text import BagOfNgrams
from flip.models.schema import FusionClassifierConfig


class FusionClassifier(Classifier):
    """Encodes each configured modality, zeroes the embeddings of missing ones (the batch's mask),
    concatenates them and classifies. Inputs come as (image, features, note ids, mask), those
    configured, in that order (flip.data.multimodal.datamodule)."""

    schema = FusionClassifierConfig

    def __init__(
        self,
        modalities: tuple[str, ...] = ("image", "tabular", "text"),
        num_classes: int = 2,
        channels: tuple[int, ...] = (16, 32, 64),
        tabular_features: Optional[int] = None,
        tabular_hidden: tuple[int, ...] = (32,),
        num_buckets: int = 1 << 14,
        embedding_dim: int = 32,
        hidden: int = 64,
        dropout: float = 0.1,
        metrics: tuple[str, ...] = ("accuracy", "auroc", "f1"),
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        logit_adjustment: float = 0.0,
    ):
        super().__init__(num_classes, metrics, optimizer, scheduler, logit_adjustment)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.modalities = list(modalities)
        encoders, widths = {}, []
        if "image" in self.modalities:
            encoders["image"] = conv_backbone(1, list(channels), "max")
            widths.append(list(channels)[-1])
        if "tabular" in self.modalities:
            if not tabular_features:
                raise ValueError("FusionClassifier needs tabular_features (flip sets it from data.tabular's feature spec)")
            # The MLP's last layer is its embedding here: no class head.
            encoders["tabular"] = mlp(tabular_features, list(tabular_hidden)[:-1], list(tabular_hidden)[-1], dropout)
            widths.append(list(tabular_hidden)[-1])
        if "text" in self.modalities:
            encoders["text"] = BagOfNgrams(num_buckets, embedding_dim)
            widths.append(embedding_dim)
        self.encoders = nn.ModuleDict(encoders)
        self.head = mlp_head(sum(widths), hidden, num_classes, dropout)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *values, mask = inputs
        embeddings = [
            self.encoders[name](value) * mask[:, index : index + 1]
            for index, (name, value) in enumerate(zip(self.modalities, values))
        ]
        return self.head(torch.cat(embeddings, dim=1))
