"""flip's Flower ClientApp: the site's own settings accept the run (`flip.federation.trust`), then
the plain site functions do the work.

The module itself loads no torch or Lightning: the simulation driver imports it before Flower
starts, and a deployment's `flwr-clientapp` process pays for the training code only when a
message needs it. The handshake loads it, so a site that cannot fails before round 1.
"""

from __future__ import annotations

import json
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod.utils import make_ffn
from flwr.clientapp import ClientApp

import flip
from flip.federation.keeper import COUNT_KINDS, SCORE_COUNTS, site_record
from flip.federation.site_config import node_site_settings
from flip.federation.strategy import WITHHELD
from flip.federation.trust import AcceptedRun, accept_run, refusal
from flip.privacy.policy import site_epsilon_cap
from flip.privacy.secagg import is_secagg_message, secagg_train

if TYPE_CHECKING:
    from flip.federation.site import SiteReply

CONFIG_KEY = "flip-config"
DIGEST_KEY = "flip-config-sha256"
INITIAL_MODEL_KEY = "flip-initial-model"
MODEL_KEY = "model"
OPTIMIZER_STATE_KEY = "flip-optimizer-state"
# The wire protocol between flip's server and its sites, sent in the handshake: bumped when a
# message changes, so a site never serves a server it would misunderstand.
PROTOCOL_KEY = "flip-protocol"
PROTOCOL = 1

app = ClientApp()


def accepted_run(message: Message, context: Context) -> AcceptedRun:
    """The run in `message`, once this node's own site settings accept it; before any data is read."""
    site = node_site_settings(context.node_config)
    config = message.content["config"]
    return accept_run(str(config[CONFIG_KEY]), str(config[DIGEST_KEY]), site)


def site_code(run: AcceptedRun) -> ModuleType:
    """flip's site functions (`flip.federation.site`), loaded on first use, with torch held to
    this site's CPU share (oversubscribed threads make every step slower)."""
    import torch

    from flip.federation import site

    if run.site.cpus:
        torch.set_num_threads(max(1, int(run.site.cpus)))
    return site


def _reply(message: Message, reply: SiteReply, run: AcceptedRun, extra: dict[str, float]) -> Message:
    content = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": reply.num_examples, **reply.metrics, **run.plan.reply_weights(), **extra}),
            "site": site_record(reply.report, run.site.policy.min_cohort),
        }
    )
    if reply.state is not None:
        content["arrays"] = ArrayRecord(reply.state)
    if reply.score_counts:  # counts per score bin and class, never a per-item score
        content[SCORE_COUNTS] = ConfigRecord(  # a MetricRecord would be a second one: Flower allows one
            {f"{split}/{kind}": list(values) for split, pair in reply.score_counts.items() for kind, values in zip(COUNT_KINDS, pair)}
        )
    return Message(content, reply_to=message)


def _withheld(message: Message, reason: str) -> Message:
    """A reply that carries nothing but why: the site's cohort is below its policy's k."""
    return Message(RecordDict({WITHHELD: ConfigRecord({"reason": reason})}), reply_to=message)


def _small_splits(run: AcceptedRun, splits: dict[str, int]) -> str | None:
    k = run.site.policy.min_cohort
    small = [f"{n} {split}" for split, n in splits.items() if n < k]
    return f"{', '.join(small)} sample(s), fewer than the site's policy.min_cohort={k}" if small else None


@app.query()
def identify(message: Message, context: Context) -> Message:
    """The server's handshake: which site is this node, and does it accept the run?

    The site also loads its training code now, while the server prepares its own side. The site
    asked for it (`INITIAL_MODEL_KEY`) also sends the run's initial weights and hyperparameters.
    """
    run = accepted_run(message, context)
    theirs = int(message.content["config"].get(PROTOCOL_KEY, PROTOCOL))
    if theirs != PROTOCOL:
        raise refusal(
            run.site, [f"the server speaks flip protocol {theirs}, this site runs flip {flip.__version__} (protocol {PROTOCOL}): install the same flip release on both (rule: compatible flip)"]
        )
    site = site_code(run)
    content = RecordDict({"site": ConfigRecord({"name": run.site.name, "flip-version": flip.__version__})})
    if message.content["config"].get(INITIAL_MODEL_KEY, False):
        state, hparams = site.initial_model(run.cfg)
        content["arrays"] = ArrayRecord(state)
        content[MODEL_KEY] = ConfigRecord({"hparams": json.dumps(hparams)})
    return Message(content, reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    if is_secagg_message(message):
        return secagg_train(message, context, _private_train)
    return _private_train(message, context)


def _private_train(message: Message, context: Context) -> Message:
    """The privacy plan's client mods around the site's training."""
    run = accepted_run(message, context)
    n_train = site_code(run).site_datamodule(run.cfg, run.site).split_sizes[0]
    if reason := _small_splits(run, {"train": n_train}):
        return _withheld(message, reason)
    return make_ffn(partial(_train, run=run), run.plan.train_mods())(message, context)


def _train(message: Message, context: Context, run: AcceptedRun) -> Message:
    config = message.content["config"]
    kept = context.state.get(OPTIMIZER_STATE_KEY)  # Flower keeps a node's state between rounds
    reply = site_code(run).train_round(
        run.cfg,
        run.site,
        message.content["arrays"].to_torch_state_dict(),
        server_round=int(config["server-round"]),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        epsilon_cap=site_epsilon_cap(run.site.policy, run.plan),
        optimizer_state=bytes(kept["state"]) if kept is not None else None,
    )
    if reply.optimizer_state is not None:
        context.state[OPTIMIZER_STATE_KEY] = ConfigRecord({"state": reply.optimizer_state})
    # QFedAvg reads the local loss under this key.
    return _reply(message, reply, run, {"train_loss": reply.metrics.get("train/loss", 0.0)})


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    run = accepted_run(message, context)
    site = site_code(run)
    _, n_val, n_test = site.site_datamodule(run.cfg, run.site).split_sizes
    if reason := _small_splits(run, {"val": n_val, "test": n_test}):
        return _withheld(message, reason)
    reply = site.evaluate_round(run.cfg, run.site, message.content["arrays"].to_torch_state_dict())
    return _reply(message, reply, run, {})
