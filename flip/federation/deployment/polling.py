"""Push, then pull replies on a short poll: Flower's HttpGrid sleeps 3 s between pulls, which a
round pays twice (training, evaluation) for nothing once the replies are in.

It also notices a node that restarted while its message was out: the SuperLink answers for a
node that stopped (NODE_UNAVAILABLE) only while the node counts as offline, and a site's node
that restarts at once takes its identity back before that; its reply is then lost, and the
round would wait for it until `round_timeout`. A node whose activation time changed since the
push gets an error reply in its place.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode

POLL_S = 0.05
MAX_POLL_S = 0.5
CHECK_NODES_S = 1.0
RESTARTED = "its node restarted while this round's message was out, so its reply is lost"


class PollingGrid:
    """A grid whose `send_and_receive` pushes and then pulls every 50 ms, backing off to 0.5 s
    while nothing arrives; everything else is the wrapped grid's."""

    def __init__(self, grid: Any):
        self._grid = grid

    def _activations(self) -> dict[int, str]:
        """Node id -> when it was last activated, for every node online."""
        return {int(node.node_id): str(node.last_activated_at) for node in self._grid.get_nodes()}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        activated = self._activations()
        sent = dict(zip(self._grid.push_messages(messages), messages))
        sent.pop(None, None)
        pending = set(sent)
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        wait, checked = POLL_S, time.monotonic()
        while pending:
            arrived = list(self._grid.pull_messages(pending))
            replies += arrived
            pending -= {reply.metadata.reply_to_message_id for reply in arrived}
            if pending and time.monotonic() - checked > CHECK_NODES_S:
                replies += self._restarted(pending, sent, activated)
                pending -= {reply.metadata.reply_to_message_id for reply in replies}
                checked = time.monotonic()
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            wait = POLL_S if arrived else min(MAX_POLL_S, wait * 1.5)
            time.sleep(wait)
        return replies

    def _restarted(self, pending: set[str], sent: dict[str, Message], activated: dict[int, str]) -> list[Message]:
        now = self._activations()
        lost = []
        for message_id in pending:
            node = sent[message_id].metadata.dst_node_id
            if node in now and now[node] != activated.get(node):
                lost.append(Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason=RESTARTED), reply_to=sent[message_id]))
        return lost

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)
