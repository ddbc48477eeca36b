"""SecAgg+ as an add-on (flip.privacy.mechanisms.secagg): its rules. The weights sites give their
updates are tested in tests/privacy/test_plan.py, the protocol in tests/privacy/test_secagg.py."""

from __future__ import annotations

import pytest

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import config_problems
from tests.privacy.conftest import problems


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["privacy=secagg", "privacy.secagg.reconstruction_threshold=3", "strategy.fraction_train=0.5"],
            "privacy.secagg.reconstruction_threshold: 3 is more than the 2 sites sampled per round",
        ),
        (["privacy=secagg", "privacy.secagg.num_shares=2"], "privacy.secagg.num_shares: must be at least 3 (or null for every sampled site), got 2"),
        (["privacy=secagg", "privacy.secagg.modulus_range=1000"], "privacy.secagg.modulus_range: must be a power of 2 above quantization_range, got 1000"),
        (
            ["privacy=secagg", "strategy=fedmedian"],
            "strategy: FedMedian needs each site's update, but secure aggregation only reveals their sum "
            "(use one of FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad)",
        ),
    ],
)
def test_bad_secagg_settings_are_named(overrides, expected):
    found = problems(*overrides)
    assert expected in found, found


def test_secure_aggregation_needs_a_federation():
    assert config_problems(resolve_recipe("dicom_synthetic_local"), ["privacy=secagg"]) == [
        "privacy.secagg: secure aggregation needs a federation (federation=simulation)"
    ]
