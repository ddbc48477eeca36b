"""What every flip classifier shares: loss, metrics per split, optimizer and scheduler from config.

A model subclasses `Classifier`, builds its network and defines `forward(*inputs)`; batches are
`(*inputs, labels)`, so one-input and multi-input (multimodal) models train the same way.

`logit_adjustment` (tau) trains on logits + tau·log(class prior of the training split), the
logit-adjusted loss of Menon et al. (2021) that FedLC (Zhang et al., 2022) applies per site: a
site whose labels are skewed then has no cause to shift the model towards its own prior, and
predictions (raw logits) are for balanced classes.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Optional

import lightning as L
import torch
from torch import nn

from flip.models.metrics import ScoreCounts, classification_metrics
from flip.models.schema import ClassifierConfig

SPLITS = ("train", "val", "test")
EVALUATED = ("val", "test")


def mlp_head(in_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Linear-ReLU-Dropout-Linear from an encoder's embedding to class logits."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))


def label_log_prior(datamodule: Any, num_classes: int) -> torch.Tensor:
    """Log class frequencies of a data module's training split (plus one of each class, so an
    absent class stays finite)."""
    datasets = getattr(datamodule, "datasets", None) or {}
    if "train" not in datasets:
        raise ValueError("model.logit_adjustment needs a flip data module: it reads the training split's label counts")
    train = datasets["train"]
    parts = getattr(train, "datasets", [train])  # a pooled baseline's: every site's split, concatenated
    labels = torch.cat([part.tensors[-1] for part in parts])
    counts = torch.bincount(labels, minlength=num_classes).double() + 1.0
    return (counts / counts.sum()).log().float()


class Classifier(L.LightningModule):
    # The schema that declares this model's parameters (each subclass names its own).
    schema: ClassVar[type] = ClassifierConfig

    @classmethod
    def default_optimizer(cls) -> Callable[..., torch.optim.Optimizer]:
        """The optimizer factory the model's schema declares, for a model built without one."""
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        return instantiate(OmegaConf.structured(cls.schema).optimizer)

    def __init__(
        self,
        num_classes: int,
        metrics: tuple[str, ...],
        optimizer: Optional[Callable[..., torch.optim.Optimizer]],
        scheduler: Optional[Callable[..., Any]],
        logit_adjustment: float = 0.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.logit_adjustment = logit_adjustment
        # log class frequencies of the training split, set when fitting with logit_adjustment
        # (a plain attribute, not a buffer: it stays out of the weights a site sends)
        self.label_log_prior: torch.Tensor | None = None
        self.optimizer_factory = optimizer or self.default_optimizer()
        self.scheduler_factory = scheduler or None  # {} from the config: none
        # ModuleDict keys must not shadow nn.Module attributes such as `train`.
        self.split_metrics = nn.ModuleDict(
            {f"{split}_metrics": classification_metrics(list(metrics), num_classes, f"{split}/") for split in SPLITS}
        )
        # Two classes: each evaluation's score counts per bin, kept after the epoch as
        # `score_counts[split]` = (positives, negatives), for metrics of pooled predictions.
        self.split_counts = nn.ModuleDict({f"{split}_counts": ScoreCounts() for split in EVALUATED} if num_classes == 2 else {})
        self.score_counts: dict[str, tuple[list[int], list[int]]] = {}

    def on_fit_start(self) -> None:
        if self.logit_adjustment:
            self.label_log_prior = label_log_prior(self.trainer.datamodule, self.num_classes)

    def _step(self, batch: tuple[torch.Tensor, ...], split: str) -> torch.Tensor:
        *inputs, labels = batch
        logits = self(*inputs)
        trained = logits
        if split == "train" and self.label_log_prior is not None:
            trained = logits + self.logit_adjustment * self.label_log_prior.to(logits)
        loss = nn.functional.cross_entropy(trained, labels)
        probabilities = logits.softmax(dim=-1)
        scores = probabilities[:, 1] if self.num_classes == 2 else probabilities
        self.split_metrics[f"{split}_metrics"].update(scores, labels)
        if f"{split}_counts" in self.split_counts:
            self.split_counts[f"{split}_counts"].update(scores, labels)
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
        if f"{split}_counts" in self.split_counts:
            counts = self.split_counts[f"{split}_counts"]
            self.score_counts[split] = counts.compute()
            counts.reset()

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
