"""The percentile privacy filter of FLIP and NVFlare, as a Flower client mod.

A site sends only the entries of its update (local - global weights) whose magnitude is at or
above the given percentile of all magnitudes, each clipped to [-gamma, gamma]; the rest of the
model is sent unchanged from the global weights. It makes exact reconstruction of an update
harder but gives no formal guarantee: it is a heuristic, not differential privacy.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable


def filter_update(local: list[np.ndarray], global_: list[np.ndarray], percentile: float, gamma: float) -> list[np.ndarray]:
    """Global weights plus the largest update entries, clipped; smaller entries are dropped."""
    deltas = [np.asarray(new, dtype=np.float64) - old for new, old in zip(local, global_, strict=True)]
    magnitudes = np.concatenate([np.abs(delta).ravel() for delta in deltas])
    cutoff = np.percentile(magnitudes, percentile) if magnitudes.size else 0.0
    filtered = []
    for delta, old in zip(deltas, global_, strict=True):
        kept = np.where(np.abs(delta) >= cutoff, np.clip(delta, -gamma, gamma), 0.0)
        filtered.append((old + kept).astype(old.dtype))
    return filtered


class PercentileFilterMod:
    """Client mod: filters the weights a site sends after training (`percentile`, `gamma`)."""

    def __init__(self, percentile: float, gamma: float):
        self.percentile = percentile
        self.gamma = gamma

    def __call__(self, message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        sent = message.content["arrays"]
        reply = call_next(message, context)
        if reply.has_error():
            return reply
        received = reply.content["arrays"]
        filtered = filter_update(received.to_numpy_ndarrays(), sent.to_numpy_ndarrays(), self.percentile, self.gamma)
        reply.content["arrays"] = ArrayRecord({key: Array(value) for key, value in zip(received.keys(), filtered, strict=True)})
        return reply
