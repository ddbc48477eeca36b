"""The percentile filter of FLIP and NVFlare (flip.privacy.percentile)."""

from __future__ import annotations

import numpy as np

from flip.privacy.percentile import filter_update


def test_percentile_filter_sends_only_large_entries_clipped():
    rng = np.random.default_rng(3)
    old = [rng.normal(size=(50, 20)), rng.normal(size=(100,))]
    new = [o + rng.normal(scale=0.05, size=o.shape) for o in old]
    sent = filter_update(new, old, percentile=75.0, gamma=0.02)
    deltas = np.concatenate([(s - o).ravel() for s, o in zip(sent, old)])
    assert np.abs(deltas).max() <= 0.02 + 1e-12
    assert abs(np.mean(deltas == 0) - 0.75) < 0.01
