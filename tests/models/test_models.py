"""Every flip model: built from its schema's defaults, it maps a batch of its inputs to logits,
trains a step, and keeps what it learns of a site's labels out of the weights it sends."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from flip.models.base import Classifier
from flip.models.fusion import FusionClassifier
from flip.models.image import ImageClassifier
from flip.models.tabular import TabularClassifier
from flip.models.text import TextClassifier
from flip.models.volume import VolumeClassifier

BATCH = 6
# Each model with the one input (or inputs) its data source gives it, built from its schema.
INPUTS = {
    ImageClassifier: ({}, lambda: (torch.rand(BATCH, 1, 16, 16),)),
    VolumeClassifier: ({}, lambda: (torch.rand(BATCH, 1, 4, 16, 16),)),
    TabularClassifier: ({"in_features": 5}, lambda: (torch.rand(BATCH, 5),)),
    TextClassifier: ({"num_buckets": 64}, lambda: (torch.randint(1, 64, (BATCH, 12)),)),
    FusionClassifier: (
        {"tabular_features": 5, "num_buckets": 64},
        lambda: (torch.rand(BATCH, 1, 16, 16), torch.rand(BATCH, 5), torch.randint(1, 64, (BATCH, 12)), torch.ones(BATCH, 3)),
    ),
}


def build(model_class: type[Classifier], **extra) -> Classifier:
    settings, _ = INPUTS[model_class]
    config = OmegaConf.merge(OmegaConf.structured(model_class.schema), settings, extra)
    return instantiate(config, _convert_="all")


@pytest.mark.parametrize("model_class", list(INPUTS), ids=lambda c: c.__name__)
def test_a_model_built_from_its_schema_maps_inputs_to_logits_and_trains(model_class, tmp_path):
    torch.manual_seed(0)
    model = build(model_class)
    inputs = INPUTS[model_class][1]()
    assert model(*inputs).shape == (BATCH, 2)
    labels = torch.tensor([0, 1] * (BATCH // 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(TensorDataset(*inputs, labels), batch_size=BATCH))
    assert trainer.global_step == 1
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_logit_adjusted_prior_stays_out_of_the_weights(tmp_path):
    class Labelled(L.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.datasets = {"train": TensorDataset(torch.rand(8, 1, 16, 16), torch.tensor([0] * 7 + [1]))}

        def train_dataloader(self):
            return DataLoader(self.datasets["train"], batch_size=8)

    model = build(ImageClassifier, logit_adjustment=1.0)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=Labelled())
    prior = model.label_log_prior.exp()
    assert prior.tolist() == pytest.approx([8 / 10, 2 / 10])  # counts plus one of each class
    assert "label_log_prior" not in model.state_dict()
