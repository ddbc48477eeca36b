"""Push, then pull replies on a short poll: Flower's HttpGrid sleeps 3 s between pulls, which a
round pays twice (training, evaluation) for nothing once the replies are in."""

from __future__ import annotations

import time
from typing import Any, Iterable

from flwr.app import Message

POLL_S = 0.05
MAX_POLL_S = 0.5


class PollingGrid:
    """A grid whose `send_and_receive` pushes and then pulls every 50 ms, backing off to 0.5 s
    while nothing arrives; everything else is the wrapped grid's."""

    def __init__(self, grid: Any):
        self._grid = grid

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        pending = set(self._grid.push_messages(list(messages)))
        pending.discard(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        wait = POLL_S
        while pending:
            arrived = list(self._grid.pull_messages(pending))
            replies += arrived
            pending -= {reply.metadata.reply_to_message_id for reply in arrived}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            wait = POLL_S if arrived else min(MAX_POLL_S, wait * 1.5)
            time.sleep(wait)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)
