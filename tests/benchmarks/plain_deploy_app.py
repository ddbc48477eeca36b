"""The hand-written Flower app of deploy_latency.py, as Flower's deployment runtime runs it: a
module-level ServerApp (FedAvg) and the ClientApp of plain_flower_app.py, shipped in the run's
app bundle. The ServerApp writes the wall time of every round (from the end of the one before,
as flip's `round_s`) to the run config's `times-file`."""

import json
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from plain_flower_app import client_app, make_model  # noqa: F401  (the ClientApp Flower loads)

CONFIG_KEYS = ("root", "image-size", "batch-size", "lr", "local-epochs", "seed", "trainer")
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = context.run_config
    torch.manual_seed(int(run_config["seed"]))
    ends: list[float] = []

    def end_round(server_round: int, arrays: ArrayRecord) -> None:
        ends.append(time.perf_counter())

    config = ConfigRecord({key: run_config[key] for key in CONFIG_KEYS})
    FedAvg(min_available_nodes=int(run_config["sites"])).start(
        grid=grid,
        initial_arrays=ArrayRecord(make_model().state_dict()),
        num_rounds=int(run_config["rounds"]),
        train_config=config,
        evaluate_config=config,
        evaluate_fn=end_round,
    )
    rounds = [later - earlier for earlier, later in zip(ends, ends[1:])]
    Path(str(run_config["times-file"])).write_text(json.dumps(rounds))
