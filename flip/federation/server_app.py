"""flip's Flower ServerApp: maps nodes to sites, then runs the configured strategy."""

from __future__ import annotations

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


@dataclass
class ServerOutcome:
    result: Result | None = None


def map_sites(grid: Grid, num_sites: int, timeout: float) -> dict[int, int]:
    """Wait for `num_sites` nodes, then ask each which site it serves: node id -> site index."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < num_sites:
        if time.monotonic() > deadline:
            raise FlipError(f"only {len(nodes)} of {num_sites} sites connected within {timeout:.0f} s")
        time.sleep(0.1)
    queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    mapping, problems = {}, []
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if reply.has_error():
            problems.append(f"node {reply.metadata.src_node_id}: {error_summary(reply.error.reason)}")
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
        node_to_site = map_sites(grid, federation.num_sites, federation.round_timeout)
        text, digest = pack_config(cfg)
        settings = FlipSettings(cfg.seed, federation.min_successful_sites, keeper)
        strategy = build_flip_strategy(cfg.strategy, cfg.allowed_targets, settings)
        shipped = {CONFIG_KEY: text, DIGEST_KEY: digest}
        outcome.result = strategy.start(
            grid=SiteGrid(grid, node_to_site),
            initial_arrays=ArrayRecord(keeper.model.state_dict()),
            num_rounds=federation.num_rounds,
            timeout=federation.round_timeout,
            train_config=ConfigRecord(dict(shipped)),
            evaluate_config=ConfigRecord(dict(shipped)),
            evaluate_fn=keeper.end_round,
        )

    return app
