"""The hand-written baselines for fl_overhead.py: Flower 1.42 + pydicom + PyTorch or Lightning, no flip.

FedAvg over the site folders site-1..site-N of a DICOM data set (labels.csv per site). Each site
decodes its files once per process (rescale, window, resize), splits them 60/20/20 at random,
trains the same small CNN for LOCAL_EPOCHS per round with Adam, and evaluates the global model on
its val and test splits every round. TRAINER picks how a site trains: `torch`, a bare loop, or
`lightning`, the same network in a minimal LightningModule trained by `lightning.Trainer` (as in
Flower's own PyTorch Lightning quickstart). Launched with `run_simulation` (client num_cpus=1, Ray
num_cpus=2).
Usage: python plain_flower_app.py DATA_ROOT SITES ROUNDS LOCAL_EPOCHS IMAGE_SIZE BATCH LR SEED TRAINER
"""

import csv
import functools
import os
import sys
from pathlib import Path

import numpy as np
import pydicom
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from torch import nn


def make_model() -> nn.Module:
    class Standardize(nn.Module):
        def forward(self, x):
            return (x - 0.5) / 0.25

    layers, width = [Standardize()], 1
    for out in (16, 32, 64):
        layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        width = out
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 2))


@functools.cache  # once per process: Ray actors are reused across rounds
def site_splits(site_dir: str, size: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    images, labels = [], []
    for row in csv.DictReader(open(Path(site_dir) / "labels.csv")):
        ds = pydicom.dcmread(Path(site_dir) / row["path"])
        pixels = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)
        pixels = (pixels - pixels.min()) / max(float(pixels.max() - pixels.min()), 1e-6)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            pixels = 1.0 - pixels
        image = torch.from_numpy(pixels)[None, None]
        images.append(nn.functional.interpolate(image, size=(size, size), mode="bilinear", antialias=True)[0])
        labels.append(int(row["label"]))
    x, y = torch.stack(images), torch.tensor(labels)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = n_val = int(0.2 * len(y))
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {name: (x[idx], y[idx]) for name, idx in parts.items()}


def local_data(msg: Message, context: Context):
    conf = msg.content["config"]
    site = f"site-{int(context.node_config['partition-id']) + 1}"
    torch.set_num_threads(1)
    return conf, site_splits(str(Path(conf["root"]) / site), int(conf["image-size"]), int(conf["seed"]))


def model_from(msg: Message) -> nn.Module:
    model = make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


def train_torch(model: nn.Module, data, conf) -> float:
    """Local epochs of a bare Adam loop; the mean training loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=float(conf["lr"]))
    x, y = data["train"]
    batch, total = int(conf["batch-size"]), 0.0
    model.train()
    for _ in range(int(conf["local-epochs"])):
        for idx in torch.randperm(len(y)).split(batch):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
    return total / len(y) / int(conf["local-epochs"])


def evaluate_torch(model: nn.Module, data, conf) -> dict[str, float]:
    metrics = {}
    model.eval()
    with torch.no_grad():
        for split in ("val", "test"):
            x, y = data[split]
            logits = torch.cat([model(chunk) for chunk in x.split(int(conf["batch-size"]))])
            metrics[f"{split}_loss"] = float(nn.functional.cross_entropy(logits, y))
            metrics[f"{split}_accuracy"] = float((logits.argmax(1) == y).float().mean())
    return metrics


def lightning_module(model: nn.Module, lr: float):
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def _step(self, batch, split):
            x, y = batch
            logits = self.model(x)
            loss = nn.functional.cross_entropy(logits, y)
            self.log(f"{split}_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
            self.log(f"{split}_accuracy", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True,
                     batch_size=len(y))
            return loss

        def training_step(self, batch, batch_idx):
            return self._step(batch, "train")

        def validation_step(self, batch, batch_idx):
            self._step(batch, "val")

        def test_step(self, batch, batch_idx):
            self._step(batch, "test")

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=lr)

    return Module()


def lightning_trainer(**kwargs):
    import lightning as L

    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", **kwargs)


def loader(data, split: str, conf, shuffle: bool = False):
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(*data[split]), batch_size=int(conf["batch-size"]), shuffle=shuffle)


def train_lightning(model: nn.Module, data, conf) -> float:
    module = lightning_module(model, float(conf["lr"]))
    trainer = lightning_trainer(max_epochs=int(conf["local-epochs"]))
    trainer.fit(module, loader(data, "train", conf, shuffle=True))
    return float(trainer.callback_metrics["train_loss"])


def evaluate_lightning(model: nn.Module, data, conf) -> dict[str, float]:
    module, trainer, metrics = lightning_module(model, float(conf["lr"])), lightning_trainer(), {}
    metrics.update(trainer.validate(module, loader(data, "val", conf), verbose=False)[0])
    metrics.update(trainer.test(module, loader(data, "test", conf), verbose=False)[0])
    return metrics


TRAINERS = {"torch": (train_torch, evaluate_torch), "lightning": (train_lightning, evaluate_lightning)}
client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    conf, data = local_data(msg, context)
    torch.manual_seed(int(conf["seed"]) * 1000 + int(conf["server-round"]))
    model = model_from(msg)
    train_loss = TRAINERS[conf["trainer"]][0](model, data, conf)
    metrics = MetricRecord({"num-examples": len(data["train"][1]), "train_loss": train_loss})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    conf, data = local_data(msg, context)
    metrics = TRAINERS[conf["trainer"]][1](model_from(msg), data, conf)
    metrics = {key: float(value) for key, value in metrics.items()}
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": len(data["val"][1]), **metrics})}), reply_to=msg)


def build_server_app(settings: dict) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(settings["seed"])
        result = FedAvg(min_available_nodes=settings["sites"]).start(
            grid=grid,
            initial_arrays=ArrayRecord(make_model().state_dict()),
            num_rounds=settings["rounds"],
            train_config=ConfigRecord(settings["config"]),
            evaluate_config=ConfigRecord(settings["config"]),
        )
        torch.save(result.arrays.to_torch_state_dict(), "plain_final.pt")
        print("final", dict(result.evaluate_metrics_clientapp[settings["rounds"]]))

    return server_app


def main() -> None:
    root, (sites, rounds, epochs, size, batch), lr, seed = sys.argv[1], map(int, sys.argv[2:7]), float(sys.argv[7]), int(sys.argv[8])
    trainer = sys.argv[9]
    # Import this file as a module so Ray actors unpickle the ClientApp by reference and keep
    # `site_splits`' cache between rounds (functions of __main__ travel by value, cache and all).
    here = str(Path(__file__).parent)
    sys.path.insert(0, here)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    import plain_flower_app as app
    from flwr.simulation import run_simulation

    config = {"root": str(Path(root).resolve()), "local-epochs": epochs, "image-size": size,
              "batch-size": batch, "seed": seed, "lr": lr, "trainer": trainer}
    run_simulation(
        server_app=app.build_server_app({"sites": sites, "rounds": rounds, "seed": seed, "config": config}),
        client_app=app.client_app,
        num_supernodes=sites,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}},
    )


if __name__ == "__main__":
    main()
