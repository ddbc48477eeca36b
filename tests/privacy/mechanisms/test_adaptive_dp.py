"""Central DP with adaptive clipping (flip.privacy.mechanisms.adaptive_dp): the rules of its own keys."""

from __future__ import annotations

import pytest

from flip.privacy.mechanisms.adaptive_dp import DpClientAdaptive
from tests.privacy.conftest import problems


def test_the_noise_must_split_between_the_update_and_the_clipped_count():
    assert (
        "privacy.clipped_count_stddev: null (sites per round / 20 = 0.2) is too small for privacy.noise_multiplier=0.5; "
        "adaptive clipping needs noise_multiplier < 2 x clipped_count_stddev"
    ) in problems("privacy=dp_client_adaptive", "privacy.clipped_count_stddev=null")


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"target_clipped_quantile": 2}, "privacy.target_clipped_quantile: must be in [0, 1], got 2"),
        ({"clipped_count_stddev": -1}, "privacy.clipped_count_stddev: must be non-negative, got -1"),
        ({"initial_clipping_norm": 0}, "privacy.initial_clipping_norm: must be positive, got 0"),
    ],
)
def test_bad_adaptive_clipping_values_are_named(settings, expected):
    assert list(DpClientAdaptive.value_problems({"neighbours": "replace_one", **settings})) == [expected]
