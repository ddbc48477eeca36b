"""Several sites' set-up data modules as one: a pooled baseline trains on the union of their
training splits and is tested on the union of their test splits, each site split as it would
split itself in a federation."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader

from flip.data.base import SPLITS


class PooledDataModule(L.LightningDataModule):
    """The splits of every module in `sites` (already set up), concatenated in the given order."""

    def __init__(self, sites: list[L.LightningDataModule], batch_size: int, seed: int, num_workers: int = 0):
        super().__init__()
        if not sites:
            raise ValueError("a pooled data set needs at least one site")
        self.sites = sites
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.site_name = "pooled"
        self.datasets = {split: ConcatDataset([site.datasets[split] for site in sites]) for split in SPLITS}

    @property
    def split_sizes(self) -> tuple[int, int, int]:
        return tuple(len(self.datasets[split]) for split in SPLITS)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.datasets["train"], batch_size=self.batch_size, shuffle=True, generator=generator, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["val"], batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["test"], batch_size=self.batch_size, num_workers=self.num_workers)
