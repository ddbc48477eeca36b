"""Seeded draws that leave the global generators as they were: Flower samples sites with `random`
and draws DP noise with numpy's global generator, so flip seeds each call from a string."""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np


@contextmanager
def seeded_random(seed: str) -> Iterator[None]:
    """Seed the global `random` module for one call, then restore its state."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


@contextmanager
def seeded_numpy(seed: str) -> Iterator[None]:
    """Seed numpy's global generator for one call, then restore it."""
    state = np.random.get_state()
    np.random.seed(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:4], "little"))
    try:
        yield
    finally:
        np.random.set_state(state)
