"""DP-SGD as a mechanism (flip.privacy.mechanisms.dp_sgd): its rules, and the one place a local run
and a federated site get its training callback from. The callback itself is tested in
tests/privacy/test_dp_sgd.py."""

from __future__ import annotations

import pytest

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import validate
from flip.privacy.dp_sgd import DEFAULTS, DpSgd
from flip.privacy.mechanisms.dp_sgd import SampleLevelDp
from flip.privacy.plan import PrivacyPlan
from tests.privacy.conftest import plan_for, problems


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"noise_multiplier": None}, "privacy.noise_multiplier: null needs privacy.target_epsilon to derive the noise from"),
        ({"target_epsilon": 3}, "privacy.target_epsilon: set privacy.noise_multiplier=null to derive the noise from the target"),
    ],
)
def test_the_noise_is_set_or_derived_from_a_target(settings, expected):
    assert list(SampleLevelDp.value_problems({"noise_multiplier": 1.0, "target_epsilon": None, **settings})) == [expected]


def test_nothing_may_edit_the_gradients_dp_sgd_clips_and_noises():
    found = problems("privacy=dp_sgd", "strategy=fedprox", "strategy.proximal_mu=0.1", "trainer.gradient_clip_val=1.0")
    assert found == [
        "strategy.proximal_mu: FedProx's proximal term would be dropped by DP-SGD's optimizer (privacy=dp_sgd); "
        "set it to 0 or use strategy=fedavg",
        "trainer.gradient_clip_val: DP-SGD clips each sample's gradient itself (privacy.clipping_norm); set it to null",
    ]


def test_a_local_run_and_a_federated_site_get_dp_sgd_from_the_plan():
    local = PrivacyPlan.from_config(validate(resolve_recipe("dicom_synthetic_local"), ["privacy=dp_sgd", "privacy.max_epsilon=8"]))
    (callback,) = local.site_training(epsilon_cap=local.max_epsilon).callbacks
    assert isinstance(callback, DpSgd)
    assert (callback.settings["max_epsilon"], callback.rounds_before, callback.rounds_total) == (8, 0, 1)

    federated = plan_for("dp_sgd", "privacy.max_epsilon=8")
    training = federated.site_training(rounds_before=2, rounds_total=5, epsilon_cap=6.0)  # the site's policy caps it lower
    (callback,) = training.callbacks
    assert callback.settings == {**DEFAULTS, **federated.settings, "max_epsilon": 6.0}
    assert (callback.rounds_before, callback.rounds_total) == (2, 5)
    assert training.spent == callback.spent


@pytest.mark.parametrize("mechanism", ["none", "dp_client_fixed", "local_dp", "percentile"])
def test_other_mechanisms_add_nothing_to_a_sites_training(mechanism):
    training = PrivacyPlan({"mechanism": mechanism}, 4, 4, 0).site_training(rounds_before=1, rounds_total=3, epsilon_cap=None)
    assert training.callbacks == () and training.spent() == {}


def test_sites_report_their_own_delta_unless_the_run_sets_one():
    assert PrivacyPlan({"mechanism": "dp_sgd", "delta": None}, 4, 4, 0).mechanism.reported_delta({0: 1e-3, 1: 2e-3}) == 2e-3
    assert PrivacyPlan({"mechanism": "dp_sgd", "delta": 1e-4}, 4, 4, 0).mechanism.reported_delta({0: 1e-3}) == 1e-4
