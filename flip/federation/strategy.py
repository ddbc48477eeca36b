"""Making any Flower strategy repeatable, and accountable for the sites that failed.

Flower samples from random node ids with the global `random` module and aggregates replies in
arrival order, so the same seed can give different weights. flip shows the strategy a grid whose
node ids are ordered by site, seeds `random` for each sampling call from (seed, phase, round),
and hands replies to aggregation sorted by site.
"""

from __future__ import annotations

import random
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from flip.config.allowlist import target_problems
from flip.errors import ConfigError, FlipError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class RoundObserver(Protocol):
    """Receives what happened in each round (implemented by the server's round keeper)."""

    def site_failed(self, server_round: int, phase: str, site: int, error: str) -> None: ...
    def train_replies(self, server_round: int, replies: list[tuple[int, Message]]) -> None: ...
    def evaluate_replies(self, server_round: int, replies: list[tuple[int, Message]]) -> None: ...


class SiteGrid:
    """A Grid whose node ids come back ordered by the site each node serves."""

    def __init__(self, grid: Grid, node_to_site: dict[int, int]):
        self._grid = grid
        self.node_to_site = node_to_site

    def get_node_ids(self) -> list[int]:
        online = set(self._grid.get_node_ids())
        return sorted((n for n in self.node_to_site if n in online), key=self.node_to_site.__getitem__)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


@contextmanager
def seeded_random(seed: str) -> Iterator[None]:
    """Seed the global `random` module for one call, then restore its state."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def error_summary(reason: str, lines: int = 3) -> str:
    """The last lines of a remote traceback, without terminal colours."""
    text = [line.rstrip() for line in _ANSI.sub("", reason).splitlines() if line.strip()]
    return " | ".join(line.strip() for line in text[-lines:]) or "unknown error"


@dataclass
class FlipSettings:
    seed: int
    min_successful_sites: int
    observer: RoundObserver


class FlipStrategyMixin:
    """Put in front of a Flower strategy class by `make_flip_strategy`."""

    flip: FlipSettings
    _sampled: dict[tuple[str, int], list[int]]

    def _site(self, message: Message) -> int:
        return self._grid_sites[message.metadata.src_node_id]

    def _configure(self, phase: str, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        self._grid_sites = grid.node_to_site
        configure = super().configure_train if phase == "train" else super().configure_evaluate
        with seeded_random(f"{self.flip.seed}-{phase}-{server_round}"):
            messages = list(configure(server_round, arrays, config, grid))
        self._sampled[(phase, server_round)] = sorted(self._grid_sites[m.metadata.dst_node_id] for m in messages)
        return messages

    def configure_train(self, server_round, arrays, config, grid):
        return self._configure("train", server_round, arrays, config, grid)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self._configure("evaluate", server_round, arrays, config, grid)

    def _sorted_replies(self, phase: str, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """Replies in site order; failed and missing sites are reported to the observer."""
        ordered = sorted(replies, key=self._site)
        observer = self.flip.observer
        for message in ordered:
            if message.has_error():
                observer.site_failed(server_round, phase, self._site(message), error_summary(message.error.reason))
        replied = {self._site(m) for m in ordered}
        for site in self._sampled.get((phase, server_round), []):
            if site not in replied:
                observer.site_failed(server_round, phase, site, "no reply before federation.round_timeout")
        return ordered

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ordered = self._sorted_replies("train", server_round, replies)
        ok = [(self._site(m), m) for m in ordered if not m.has_error()]
        sampled = len(self._sampled.get(("train", server_round), []))
        if len(ok) < self.flip.min_successful_sites:
            raise FlipError(
                f"round {server_round}: {len(ok)} of {sampled} sampled site(s) trained successfully, "
                f"fewer than federation.min_successful_sites={self.flip.min_successful_sites}; stopping the run"
            )
        self.flip.observer.train_replies(server_round, ok)
        return super().aggregate_train(server_round, ordered)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        ordered = self._sorted_replies("evaluate", server_round, replies)
        self.flip.observer.evaluate_replies(server_round, [(self._site(m), m) for m in ordered if not m.has_error()])
        return super().aggregate_evaluate(server_round, ordered)


def build_flip_strategy(strategy_cfg: DictConfig, allowed: Iterable[str], settings: FlipSettings) -> Strategy:
    """The configured Flower strategy with flip's seeded sampling, ordering and failure accounting."""
    kwargs = OmegaConf.to_container(strategy_cfg, resolve=True)
    problems = target_problems(kwargs, allowed, "strategy")
    if problems:
        raise ConfigError(problems)
    base = get_class(kwargs.pop("_target_"))
    strategy = type(f"Flip{base.__name__}", (FlipStrategyMixin, base), {})(**kwargs)
    strategy.flip = settings
    strategy._sampled = {}
    return strategy
