"""The percentile filter as a mechanism (flip.privacy.mechanisms.percentile): its rules and its site half."""

from __future__ import annotations

import numpy as np

from tests.conftest import in_memory_grid
from tests.privacy.conftest import as_record, flat, model_state, plan_for, problems, run_site_mods


def test_bad_percentile_settings_are_named():
    found = problems("privacy=percentile", "privacy.percentile=100", "privacy.gamma=0", "privacy.max_epsilon=3")
    assert found == [
        "privacy.gamma: must be positive, got 0",
        "privacy.percentile: must be in [0, 100), got 100",
        "privacy.max_epsilon: percentile is not differential privacy, so there is no epsilon to budget",
    ]


def test_a_site_sends_only_large_entries_clipped(monkeypatch):
    in_memory_grid(monkeypatch, 1)
    plan = plan_for("percentile", "privacy.percentile=75", "privacy.gamma=0.02")
    global_state = model_state(0)
    local = {k: v + model_state(9, scale=0.05)[k] for k, v in global_state.items()}
    sent = run_site_mods(plan, global_state, local, {}) - flat(as_record(global_state))
    assert np.abs(sent).max() <= 0.02 + 1e-12
    assert abs(np.mean(sent == 0) - 0.75) < 0.01
