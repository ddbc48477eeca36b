"""flip's Flower ServerApp: maps nodes to sites, then runs the configured strategy."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result
from omegaconf import DictConfig

from flip.config.allowlist import AllowList
from flip.errors import FlipError
from flip.federation.client_app import CONFIG_KEY, DIGEST_KEY, INITIAL_MODEL_KEY, MODEL_KEY
from flip.federation.keeper import RoundKeeper
from flip.federation.shipping import pack_config
from flip.federation.strategy import FlipSettings, SiteGrid, build_flip_strategy, error_summary
from flip.privacy.accounting import PrivacyBudgetSpent
from flip.privacy.plan import UNIFORM_WEIGHT, PrivacyPlan

log = logging.getLogger(__name__)


@dataclass
class ServerOutcome:
    keeper: RoundKeeper | None = None
    result: Result | None = None
    # Why the run ended before its last round (the privacy budget), if it did.
    stop_reason: str | None = None


@dataclass
class SiteAnswers:
    """What the handshake established: which site each node serves (its index in the run's
    site names), and the run's starting model."""

    node_to_site: dict[int, int]
    initial_arrays: ArrayRecord
    hparams: dict[str, Any]


@dataclass
class Handshake:
    """The server's question to every site: which site is this node, and does it accept the run?

    Each node answers with its site's own name (from its own settings), so a site's identity never
    depends on the order nodes connect in.

    `announce` sends it and returns at once, so the sites check the config and their policy, and
    load their training code, while the server prepares its own side; `answers` collects them.
    The first node is also asked for the initial model, which every site would build alike from
    the run's seed: so the server itself never loads Lightning unless it evaluates.
    """

    grid: Grid
    site_names: list[str]
    deadline: float
    pending: set[str]

    @classmethod
    def announce(cls, grid: Grid, site_names: list[str], timeout: float, shipped: dict[str, str]) -> Handshake:
        """Wait for a node per site, then send each the question, which carries the config."""
        num_sites = len(site_names)
        deadline = time.monotonic() + timeout
        while len(nodes := sorted(grid.get_node_ids())) < num_sites:
            if time.monotonic() > deadline:
                raise FlipError(f"only {len(nodes)} of {num_sites} sites connected within {timeout:.0f} s")
            time.sleep(0.1)
        queries = [
            Message(
                RecordDict({"config": ConfigRecord({**shipped, INITIAL_MODEL_KEY: node == nodes[0]})}),
                dst_node_id=node,
                message_type=MessageType.QUERY,
            )
            for node in nodes
        ]
        return cls(grid, list(site_names), deadline, set(grid.push_messages(queries)))

    def answers(self) -> SiteAnswers:
        """The sites' answers, once every site gave one; a clear error if any refused or stayed silent."""
        replies: list[Message] = []
        while True:  # pulls at least once: the answers may all be in by now
            arrived = list(self.grid.pull_messages(self.pending))
            replies += arrived
            self.pending -= {reply.metadata.reply_to_message_id for reply in arrived}
            if not self.pending or time.monotonic() > self.deadline:
                break
            time.sleep(0.05)
        mapping, problems, model = {}, [], None
        index_of = {name: index for index, name in enumerate(self.site_names)}
        for reply in replies:
            if reply.has_error():
                problems.append(error_summary(reply.error.reason, lines=1))
                continue
            name = str(reply.content["site"]["name"])
            if name not in index_of:
                problems.append(f"a node answered as site '{name}', which is not one of this run's sites")
            elif index_of[name] in mapping.values():
                problems.append(f"two nodes answered as site '{name}'")
            else:
                mapping[reply.metadata.src_node_id] = index_of[name]
            if MODEL_KEY in reply.content:
                model = reply.content["arrays"], json.loads(str(reply.content[MODEL_KEY]["hparams"]))
        if model is None and not problems:
            problems.append("the first site sent no initial model")
        missing = [name for name, index in index_of.items() if index not in mapping.values()]
        if problems or missing:
            silent = f"no answer from {', '.join(missing)}; " if missing else ""
            raise FlipError(f"site handshake failed: {silent}{'; '.join(problems)}".rstrip("; "))
        return SiteAnswers(mapping, *model)


def build_server_app(
    cfg: DictConfig, site_names: list[str], prepare: Callable[[], RoundKeeper], outcome: ServerOutcome
) -> ServerApp:
    """The ServerApp of a run across the sites `site_names`; `prepare` builds the server's own
    side (model, data, records) while the sites answer the handshake."""
    app = ServerApp()
    federation = cfg.federation

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        text, digest = pack_config(cfg)
        shipped = {CONFIG_KEY: text, DIGEST_KEY: digest}
        handshake = Handshake.announce(grid, site_names, federation.round_timeout, shipped)
        outcome.keeper = keeper = prepare()
        answers = handshake.answers()
        keeper.hparams = answers.hparams
        keeper.site_names = list(site_names)
        plan = PrivacyPlan.from_config(cfg)
        settings = FlipSettings(cfg.seed, federation.min_successful_sites, keeper)
        weighting = {"weighted_by_key": UNIFORM_WEIGHT} if plan.uniform_weights else {}
        strategy = plan.wrap_strategy(build_flip_strategy(cfg.strategy, AllowList.of(cfg.allowed_targets), settings, **weighting))
        try:
            outcome.result = strategy.start(
                grid=SiteGrid(plan.wrap_grid(grid, federation.round_timeout), answers.node_to_site, settings),
                initial_arrays=answers.initial_arrays,
                num_rounds=federation.num_rounds,
                timeout=federation.round_timeout,
                train_config=ConfigRecord(dict(shipped)),
                evaluate_config=ConfigRecord(dict(shipped)),
                evaluate_fn=keeper.end_round,
            )
        except PrivacyBudgetSpent as stop:
            log.warning("%s", stop)
            outcome.stop_reason = str(stop)

    return app
