"""Making any Flower strategy repeatable, and accountable for the sites that failed.

Flower samples from random node ids with the global `random` module and aggregates replies in
arrival order, so the same seed can give different weights. flip shows the strategy a grid whose
node ids are ordered by site and whose replies come back sorted by site, and seeds `random` for
each sampling call from (seed, phase, round).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

from flwr.app import Message, MessageType
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig, OmegaConf

from flip.config.allowlist import AllowList, Kind, checked_class, target_problems
from flip.errors import ConfigError, FlipError
from flip.seeding import seeded_random

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class RoundObserver(Protocol):
    """Receives what happened in each round (implemented by the server's round keeper)."""

    def before_train(self, server_round: int, sites: list[int], population: int | None = None) -> None: ...
    def site_failed(self, server_round: int, phase: str, site: int, error: str) -> None: ...
    def site_withheld(self, server_round: int, phase: str, site: int, reason: str) -> None: ...
    def train_replies(self, server_round: int, replies: list[tuple[int, Message]]) -> None: ...
    def evaluate_replies(self, server_round: int, replies: list[tuple[int, Message]]) -> None: ...


WITHHELD = "withheld"


def error_summary(reason: str, lines: int = 3) -> str:
    """A site's own error message if Flower wrapped one, else the last lines of the remote traceback."""
    text = [line.rstrip() for line in _ANSI.sub("", reason).splitlines() if line.strip()]
    for line in reversed(text):
        _, wrapped, message = line.partition("Exception ClientAppException occurred. Message: ")
        if wrapped and message.strip("'> "):
            return message.rstrip("'> ")
    return " | ".join(line.strip() for line in text[-lines:]) or "unknown error"


@dataclass
class FlipSettings:
    seed: int
    min_successful_sites: int
    observer: RoundObserver


class SiteGrid:
    """The grid a strategy sees: node ids ordered by site, replies sorted by site and accounted for.

    Every exchange passes through here, so failed, silent and withholding sites are reported
    once, whatever strategy or privacy wrapper aggregates the rest.
    """

    def __init__(self, grid: Any, node_to_site: dict[int, int], settings: FlipSettings):
        self._grid = grid
        self.node_to_site = node_to_site
        self.settings = settings

    def get_node_ids(self) -> list[int]:
        online = set(self._grid.get_node_ids())
        return sorted((n for n in self.node_to_site if n in online), key=self.node_to_site.__getitem__)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        if not messages:
            return []
        phase = "train" if messages[0].metadata.message_type == MessageType.TRAIN else "evaluate"
        server_round = int(messages[0].content["config"]["server-round"])
        sampled = sorted(self.node_to_site[m.metadata.dst_node_id] for m in messages)
        observer = self.settings.observer
        if phase == "train":  # the sites sampled, and how many were online to sample from
            observer.before_train(server_round, sampled, population=len(self.get_node_ids()))
        replies = sorted(self._grid.send_and_receive(messages, timeout=timeout), key=self._site)
        usable = []
        for message in replies:
            site = self._site(message)
            if message.has_error():
                observer.site_failed(server_round, phase, site, error_summary(message.error.reason))
            elif WITHHELD in message.content:
                observer.site_withheld(server_round, phase, site, str(message.content[WITHHELD]["reason"]))
            else:
                usable.append(message)
        replied = {self._site(m) for m in replies}
        for site in sampled:
            if site not in replied:
                observer.site_failed(server_round, phase, site, "no reply before federation.round_timeout")
        if phase == "train" and len(usable) < self.settings.min_successful_sites:
            raise FlipError(
                f"round {server_round}: {len(usable)} of {len(sampled)} sampled site(s) sent an update, "
                f"fewer than federation.min_successful_sites={self.settings.min_successful_sites}; stopping the run"
            )
        pairs = [(self._site(m), m) for m in usable]
        (observer.train_replies if phase == "train" else observer.evaluate_replies)(server_round, pairs)
        return usable

    def _site(self, message: Message) -> int:
        return self.node_to_site[message.metadata.src_node_id]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class FlipStrategyMixin:
    """Put in front of a Flower strategy class by `build_flip_strategy`: seeded site sampling."""

    flip: FlipSettings

    def configure_train(self, server_round, arrays, config, grid):
        with seeded_random(f"{self.flip.seed}-train-{server_round}"):
            return list(super().configure_train(server_round, arrays, config, grid))

    def configure_evaluate(self, server_round, arrays, config, grid):
        with seeded_random(f"{self.flip.seed}-evaluate-{server_round}"):
            return list(super().configure_evaluate(server_round, arrays, config, grid))


def build_flip_strategy(strategy_cfg: DictConfig, allowed: AllowList, settings: FlipSettings, **extra: Any) -> Strategy:
    """The configured Flower strategy with flip's seeded sampling; `extra` adds constructor arguments."""
    kwargs = {**OmegaConf.to_container(strategy_cfg, resolve=True), **extra}
    problems = target_problems(kwargs, allowed, "strategy")
    if problems:
        raise ConfigError(problems)
    base = checked_class("strategy._target_", Kind.STRATEGY, kwargs.pop("_target_"), allowed)
    strategy = type(f"Flip{base.__name__}", (FlipStrategyMixin, base), {})(**kwargs)
    strategy.flip = settings
    return strategy
