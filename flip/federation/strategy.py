"""Making any Flower strategy repeatable, and accountable for the sites that failed.

Flower samples from random node ids with the global `random` module and aggregates replies in
arrival order, so the same seed can give different weights. flip shows the strategy a grid whose
node ids are ordered by site and whose replies come back sorted by site, and seeds `random` for
each sampling call from (seed, phase, round).
"""

from __future__ import annotations

import re
import time
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
    # Seconds a round waits for sites that went offline to come back (a deployment's sites can).
    rejoin_timeout: float = 0.0
    # Rounds already done before this strategy started (a resumed run): round numbers stay absolute.
    round_offset: int = 0


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

    def await_sites(self, server_round: int, phase: str, needed: int, names: list[str] | None = None) -> None:
        """Before a round's phase: wait up to `rejoin_timeout` for every site to be online (a site
        that stopped comes back once its node restarts), then go on with those online, or stop
        with a message naming the missing sites when fewer than the strategy needs are online
        (Flower would wait for them forever)."""
        deadline = time.monotonic() + self.settings.rejoin_timeout
        while len(online := self.get_node_ids()) < len(self.node_to_site) and time.monotonic() < deadline:
            time.sleep(0.2)
        if len(online) >= needed:
            return
        missing = sorted(set(self.node_to_site.values()) - {self.node_to_site[n] for n in online})
        shown = ", ".join(names[i] if names else str(i) for i in missing)
        raise FlipError(
            f"round {server_round} ({phase}): {len(online)} site(s) online after waiting {self.settings.rejoin_timeout:.0f} s "
            f"(federation.rejoin_timeout) for {shown}; the strategy needs {needed} (min_available_nodes / min_{phase}_nodes)"
        )

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
        received = list(self._grid.send_and_receive(messages, timeout=timeout))
        # The grid gave each message its id when it pushed it; an error the SuperLink writes for
        # a node that went away comes from the SuperLink itself, so replies map back by that id.
        self._sent = {m.metadata.message_id: self.node_to_site[m.metadata.dst_node_id] for m in messages}
        replies = sorted((m for m in received if self._site(m) is not None), key=self._site)
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

    def _site(self, message: Message) -> int | None:
        site = self.node_to_site.get(message.metadata.src_node_id)
        return site if site is not None else getattr(self, "_sent", {}).get(message.metadata.reply_to_message_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class FlipStrategyMixin:
    """Put in front of a Flower strategy class by `build_flip_strategy`: seeded site sampling,
    sites that come back after a failure, and absolute round numbers in a resumed run."""

    flip: FlipSettings

    def _await(self, server_round: int, phase: str, grid: Any) -> None:
        if hasattr(grid, "await_sites"):
            needed = max(int(getattr(self, "min_available_nodes", 1)), int(getattr(self, f"min_{phase}_nodes", 1)))
            grid.await_sites(server_round, phase, needed, getattr(self.flip.observer, "site_names", None))

    def configure_train(self, server_round, arrays, config, grid):
        server_round += self.flip.round_offset
        self._await(server_round, "train", grid)
        with seeded_random(f"{self.flip.seed}-train-{server_round}"):
            return list(super().configure_train(server_round, arrays, config, grid))

    def aggregate_train(self, server_round, replies):
        return super().aggregate_train(server_round + self.flip.round_offset, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        server_round += self.flip.round_offset
        if getattr(self, "fraction_evaluate", 1.0) != 0:
            self._await(server_round, "evaluate", grid)
        with seeded_random(f"{self.flip.seed}-evaluate-{server_round}"):
            return list(super().configure_evaluate(server_round, arrays, config, grid))

    def aggregate_evaluate(self, server_round, replies):
        return super().aggregate_evaluate(server_round + self.flip.round_offset, replies)


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
