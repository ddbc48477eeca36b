"""flip's Flower ClientApp: checks the config it receives, then calls the plain site functions."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from omegaconf import DictConfig

from flip.federation.keeper import site_record
from flip.federation.shipping import unpack_config
from flip.federation.site import SiteReply, evaluate_round, train_round

CONFIG_KEY = "flip-config"
DIGEST_KEY = "flip-config-sha256"

app = ClientApp()


def site_index(context: Context) -> int:
    """The site a node serves: Flower's partition id (simulation, or a SuperNode's --node-config)."""
    return int(context.node_config["partition-id"])


def received_config(message: Message) -> DictConfig:
    config = message.content["config"]
    cfg = unpack_config(str(config[CONFIG_KEY]), str(config[DIGEST_KEY]))
    torch.set_num_threads(max(1, int(cfg.federation.cpus_per_site)))
    return cfg


def _reply(message: Message, reply: SiteReply, extra: dict[str, float]) -> Message:
    content = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": reply.num_examples, **reply.metrics, **extra}),
            "site": site_record(reply.report),
        }
    )
    if reply.state is not None:
        content["arrays"] = ArrayRecord(reply.state)
    return Message(content, reply_to=message)


@app.query()
def identify(message: Message, context: Context) -> Message:
    """The server's handshake: which site is this node?"""
    return Message(RecordDict({"site": ConfigRecord({"partition-id": site_index(context)})}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    cfg = received_config(message)
    config = message.content["config"]
    reply = train_round(
        cfg,
        site_index(context),
        message.content["arrays"].to_torch_state_dict(),
        server_round=int(config["server-round"]),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
    )
    # QFedAvg reads the local loss under this key.
    return _reply(message, reply, {"train_loss": reply.metrics.get("train/loss", 0.0)})


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    cfg = received_config(message)
    reply = evaluate_round(cfg, site_index(context), message.content["arrays"].to_torch_state_dict())
    return _reply(message, reply, {})
