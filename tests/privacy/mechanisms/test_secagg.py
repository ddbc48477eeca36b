"""SecAgg+ as an add-on (flip.privacy.mechanisms.secagg): its rules. The weights sites give their
updates are tested in tests/privacy/test_plan.py, the protocol in tests/privacy/test_secagg.py."""

from __future__ import annotations

import pytest

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import config_problems
from flip.privacy.mechanisms.secagg import SecAggPlus
from tests.privacy.conftest import problems


def test_the_threshold_cannot_exceed_the_sites_a_round_samples():
    found = problems("privacy=secagg", "privacy.secagg.reconstruction_threshold=3", "strategy.fraction_train=0.5")
    assert "privacy.secagg.reconstruction_threshold: 3 is more than the 2 sites sampled per round" in found, found


@pytest.mark.parametrize(
    "settings, strategy, expected",
    [
        ({"num_shares": 2}, "FedAvg", "privacy.secagg.num_shares: must be at least 3 (or null for every sampled site), got 2"),
        (
            {"modulus_range": 1000, "quantization_range": 4096}, "FedAvg",
            "privacy.secagg.modulus_range: must be a power of 2 above quantization_range, got 1000",
        ),
        (
            {}, "FedMedian",
            "strategy: FedMedian needs each site's update, but secure aggregation only reveals their sum "
            "(use one of FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad)",
        ),
    ],
)
def test_bad_secagg_settings_are_named(settings, strategy, expected):
    assert SecAggPlus.problems(settings, {"_target_": f"flwr.serverapp.strategy.{strategy}"}, per_round=4) == [expected]


def test_secure_aggregation_needs_a_federation():
    assert config_problems(resolve_recipe("dicom_synthetic_local"), ["privacy=secagg"]) == [
        "privacy.secagg: secure aggregation needs a federation (federation=simulation)"
    ]
