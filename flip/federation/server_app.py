"""flip's Flower ServerApp: maps nodes to sites, then runs the configured strategy."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result
from omegaconf import DictConfig

from flip.errors import FlipError
from flip.federation.client_app import CONFIG_KEY, DIGEST_KEY
from flip.federation.keeper import RoundKeeper
from flip.federation.shipping import pack_config
from flip.federation.strategy import FlipSettings, SiteGrid, build_flip_strategy, error_summary
from flip.privacy.accounting import PrivacyBudgetSpent
from flip.privacy.plan import UNIFORM_WEIGHT, PrivacyPlan

log = logging.getLogger(__name__)


@dataclass
class ServerOutcome:
    result: Result | None = None
    # Why the run ended before its last round (the privacy budget), if it did.
    stop_reason: str | None = None


def map_sites(grid: Grid, num_sites: int, timeout: float, shipped: dict[str, str]) -> dict[int, int]:
    """Wait for `num_sites` nodes, then ask each which site it serves: node id -> site index.

    The question carries the config, so a site checks it, and its own policy, before any round.
    """
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < num_sites:
        if time.monotonic() > deadline:
            raise FlipError(f"only {len(nodes)} of {num_sites} sites connected within {timeout:.0f} s")
        time.sleep(0.1)
    queries = [
        Message(RecordDict({"config": ConfigRecord(dict(shipped))}), dst_node_id=node, message_type=MessageType.QUERY)
        for node in nodes
    ]
    mapping, problems = {}, []
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if reply.has_error():
            problems.append(error_summary(reply.error.reason, lines=1))
        else:
            mapping[reply.metadata.src_node_id] = int(reply.content["site"]["partition-id"])
    if problems or sorted(mapping.values()) != list(range(num_sites)):
        raise FlipError(f"site handshake failed: got sites {sorted(mapping.values())} of {num_sites}; {'; '.join(problems)}")
    return mapping


def build_server_app(cfg: DictConfig, keeper: RoundKeeper, outcome: ServerOutcome) -> ServerApp:
    app = ServerApp()
    federation = cfg.federation

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        text, digest = pack_config(cfg)
        shipped = {CONFIG_KEY: text, DIGEST_KEY: digest}
        node_to_site = map_sites(grid, federation.num_sites, federation.round_timeout, shipped)
        plan = PrivacyPlan.from_config(cfg)
        settings = FlipSettings(cfg.seed, federation.min_successful_sites, keeper)
        weighting = {"weighted_by_key": UNIFORM_WEIGHT} if plan.uniform_weights else {}
        strategy = plan.wrap_strategy(build_flip_strategy(cfg.strategy, cfg.allowed_targets, settings, **weighting))
        try:
            outcome.result = strategy.start(
                grid=SiteGrid(plan.wrap_grid(grid, federation.round_timeout), node_to_site, settings),
                initial_arrays=ArrayRecord(keeper.model.state_dict()),
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
