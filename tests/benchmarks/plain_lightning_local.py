"""The hand-written baseline for local_overhead.py: pydicom + Lightning, no flip.

Reads one site's DICOM folder and labels.csv, applies rescale, windowing and resizing, trains the
same small CNN for the same number of epochs with per-epoch validation, keeps the best checkpoint,
and tests at the end. Usage: python plain_lightning_local.py SITE_DIR EPOCHS IMAGE_SIZE BATCH_SIZE SEED
"""

import csv
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pydicom
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import BinaryAUROC


def load(site_dir: Path, size: int) -> TensorDataset:
    labels = {row["path"]: int(row["label"]) for row in csv.DictReader(open(site_dir / "labels.csv"))}
    images, targets = [], []
    for relative, label in sorted(labels.items()):
        ds = pydicom.dcmread(site_dir / relative)
        pixels = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)
        pixels = (pixels - pixels.min()) / max(float(pixels.max() - pixels.min()), 1e-6)
        image = torch.from_numpy(pixels)[None, None]
        images.append(nn.functional.interpolate(image, size=(size, size), mode="bilinear", antialias=True)[0])
        targets.append(label)
    return TensorDataset(torch.stack(images), torch.tensor(targets))


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
            nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 2),
        )
        self.auroc = BinaryAUROC()

    def forward(self, x):
        return self.net((x - 0.5) / 0.25)

    def training_step(self, batch, _):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        self.auroc.update(self(x).softmax(-1)[:, 1], y)

    def on_validation_epoch_end(self):
        self.log("val/auroc", self.auroc.compute())
        self.auroc.reset()

    test_step = validation_step
    on_test_epoch_end = on_validation_epoch_end

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.002)


def main():
    site_dir, epochs, size, batch, seed = Path(sys.argv[1]), *map(int, sys.argv[2:6])
    L.seed_everything(seed, verbose=False)
    data = load(site_dir, size)
    n = len(data)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = n_test = int(0.2 * n)
    test, val, train = (torch.utils.data.Subset(data, idx) for idx in (order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]))
    checkpoint = ModelCheckpoint(dirpath="plain_checkpoints", filename="best", monitor="val/auroc", mode="max")
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", deterministic=True, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[checkpoint])
    model = Net()
    trainer.fit(model, DataLoader(train, batch_size=batch, shuffle=True), DataLoader(val, batch_size=batch))
    trainer.save_checkpoint("plain_checkpoints/final.ckpt")
    print(trainer.test(model, DataLoader(test, batch_size=batch), verbose=False))


if __name__ == "__main__":
    main()
