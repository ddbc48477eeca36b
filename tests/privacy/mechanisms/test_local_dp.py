"""Local DP (flip.privacy.mechanisms.local_dp): its rule, and its site half on Flower's LocalDpMod.
Its epsilons are checked in tests/privacy/test_accounting.py."""

from __future__ import annotations

import math

import pytest

from tests.conftest import in_memory_grid
from tests.privacy.conftest import as_record, flat, model_state, plan_for, problems, run_site_mods


def test_a_sensitivity_below_twice_the_clipping_norm_is_refused():
    assert (
        "privacy.sensitivity: 1.5 is below 2 x privacy.clipping_norm (2), how far a site's clipped update can move "
        "when its data is replaced; the noise would not give the stated epsilon"
    ) in problems("privacy=local_dp", "privacy.sensitivity=1.5")


def test_local_dp_adds_noise_of_its_calibration_at_the_site(monkeypatch):
    in_memory_grid(monkeypatch, 1)
    plan = plan_for("local_dp", "privacy.epsilon=5.0", "privacy.delta=1e-5")
    global_state = model_state(0)
    barely_moved = {k: v + model_state(7, scale=1e-9)[k] for k, v in global_state.items()}
    sent = run_site_mods(plan, global_state, barely_moved, {})
    expected = 2.0 * math.sqrt(2 * math.log(1.25 / 1e-5)) / 5.0  # LocalDpMod: sensitivity sqrt(2 ln(1.25/delta)) / epsilon
    assert plan.mechanism.noise_multiplier * plan.settings["clipping_norm"] == pytest.approx(expected)
    assert abs((sent - flat(as_record(global_state))).std() / expected - 1) < 0.1
