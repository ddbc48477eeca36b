"""Central DP with adaptive clipping (flip.privacy.mechanisms.adaptive_dp): the rules of its own keys."""

from __future__ import annotations

import pytest

from tests.privacy.conftest import problems


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["privacy.clipped_count_stddev=null"],
            "privacy.clipped_count_stddev: null (sites per round / 20 = 0.2) is too small for privacy.noise_multiplier=0.5; "
            "adaptive clipping needs noise_multiplier < 2 x clipped_count_stddev",
        ),
        (["privacy.target_clipped_quantile=2"], "privacy.target_clipped_quantile: must be in [0, 1], got 2"),
        (["privacy.clipped_count_stddev=-1"], "privacy.clipped_count_stddev: must be non-negative, got -1"),
        (["privacy.initial_clipping_norm=0"], "privacy.initial_clipping_norm: must be positive, got 0"),
    ],
)
def test_bad_adaptive_clipping_settings_are_named(overrides, expected):
    found = problems("privacy=dp_client_adaptive", *overrides)
    assert expected in found, found
