"""Central DP (flip.privacy.mechanisms.central_dp): its rules, and both halves on Flower's real
DP wrappers and clipping mods. Its epsilons, adaptive clipping's included, are checked in
tests/privacy/test_accounting.py."""

from __future__ import annotations

import numpy as np
import pytest

from flip.privacy.plan import PrivacyPlan
from tests.conftest import in_memory_grid
from tests.privacy.conftest import NUM_SITES, aggregate_with, as_record, flat, model_state, plan_for, problems, run_site_mods


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["privacy=dp_server_fixed", "privacy.noise_multiplier=0"], "privacy.noise_multiplier: must be positive, got 0"),
        (["privacy=dp_client_fixed", "privacy.clipping_norm=-1.0"], "privacy.clipping_norm: must be positive, got -1.0"),
        (["privacy=dp_client_fixed", "privacy.delta=0.3"], "privacy.delta: 0.3 must be below 1/N = 0.25 for N = federation.num_sites (4)"),
        (
            ["privacy=secagg_dp_client_fixed", "privacy.mechanism=dp_server_fixed"],
            "privacy.mechanism: dp_server_fixed clips each site's update on the server, which secure aggregation hides; "
            "use dp_client_fixed or dp_client_adaptive with privacy.secagg",
        ),
        (["privacy=dp_client_fixed", "privacy.neighbours=nearby"], "privacy.neighbours: 'nearby' is not one of replace_one, add_remove"),
        (
            ["privacy=dp_server_adaptive", "privacy.neighbours=add_remove"],
            "privacy.sampling_rate: privacy.neighbours=add_remove needs it: the probability with which the server samples "
            "each site in every round (Poisson sampling, which the add-or-remove accounting assumes)",
        ),
        (
            ["privacy=dp_client_fixed", "privacy.sampling_rate=0.5"],
            "privacy.sampling_rate: only privacy.neighbours=add_remove samples sites at a rate; replace_one trains a "
            "fixed number of sites per round (strategy.fraction_train, strategy.min_train_nodes)",
        ),
        (
            ["privacy=dp_client_fixed", "privacy.neighbours=add_remove", "privacy.sampling_rate=0"],
            "privacy.sampling_rate: must be in (0, 1], got 0",
        ),
        (
            ["privacy=dp_client_fixed", "privacy.neighbours=add_remove", "privacy.sampling_rate=0.5", "strategy.fraction_train=0.5"],
            "strategy.fraction_train: 0.5 must be 1.0 with privacy.neighbours=add_remove: the server then samples each "
            "site with probability privacy.sampling_rate itself",
        ),
        (
            ["privacy=secagg_dp_client_fixed", "privacy.neighbours=add_remove", "privacy.sampling_rate=0.5"],
            "privacy.neighbours: add_remove samples a random number of sites, which can be fewer than SecAgg+ needs, "
            "and a round that cannot run shows whether a site took part; use replace_one with privacy.secagg",
        ),
        (
            ["privacy=dp_client_fixed", "privacy.neighbours=add_remove", "privacy.sampling_rate=0.5", "federation.min_successful_sites=2"],
            "federation.min_successful_sites: 2 stops a run whose Poisson sample (privacy.neighbours=add_remove) holds "
            "fewer sites, as it may; set it to 1",
        ),
        (
            ["privacy=dp_client_fixed", "strategy=fedadam"],
            "strategy: dp_client_fixed adds noise calibrated to the mean of the clipped updates, but FedAdam's result is "
            "not that mean (use FedAvg or FedProx)",
        ),
    ],
)
def test_bad_central_dp_settings_are_named(overrides, expected):
    found = problems(*overrides)
    assert expected in found, found


# -- the server half: Flower's DP wrappers


def test_server_side_clipping_bounds_each_update(monkeypatch):
    grid = in_memory_grid(monkeypatch, NUM_SITES)
    plan = plan_for("dp_server_fixed", "privacy.noise_multiplier=1e-9", "privacy.clipping_norm=0.5")
    global_state = model_state(0)
    sites = [{k: v + model_state(10 + i, scale=3.0)[k] for k, v in global_state.items()} for i in range(NUM_SITES)]
    update = aggregate_with(plan, grid, global_state, sites) - flat(as_record(global_state))
    assert np.linalg.norm(update) <= 0.5 + 1e-6
    assert np.linalg.norm(update) > 0.1


def test_noise_std_is_sigma_c_over_n_and_seeded(monkeypatch):
    grid = in_memory_grid(monkeypatch, NUM_SITES)
    plan = plan_for("dp_server_fixed", "privacy.noise_multiplier=2.0", "privacy.clipping_norm=0.3")
    global_state = model_state(0)
    # Sites that barely moved (an exactly unchanged update makes Flower's clipping divide by zero).
    unchanged = [{k: v + model_state(20 + i, scale=1e-9)[k] for k, v in global_state.items()} for i in range(NUM_SITES)]
    noise = aggregate_with(plan, grid, global_state, unchanged) - flat(as_record(global_state))
    expected = 2.0 * 0.3 / NUM_SITES
    assert noise.size > 800
    assert abs(noise.std() / expected - 1) < 0.1
    again = aggregate_with(plan, grid, global_state, unchanged) - flat(as_record(global_state))
    np.testing.assert_array_equal(noise, again)


def test_dp_weights_differ_from_plain_weights(monkeypatch):
    grid = in_memory_grid(monkeypatch, NUM_SITES)
    global_state = model_state(0)
    sites = [{k: v + model_state(10 + i, scale=0.01)[k] for k, v in global_state.items()} for i in range(NUM_SITES)]
    private = aggregate_with(plan_for("dp_server_fixed"), grid, global_state, sites)
    plain = aggregate_with(plan_for("none"), grid, global_state, sites)
    assert not np.allclose(private, plain)
    np.testing.assert_allclose(plain, np.mean([flat(as_record(s)) for s in sites], axis=0), atol=1e-9)


# -- the site half: Flower's clipping mods


def test_client_side_clipping_happens_at_the_site(monkeypatch):
    in_memory_grid(monkeypatch, 1)  # messages take their sender from the running app's identity
    plan = plan_for("dp_client_fixed")
    global_state = model_state(0)
    local = {k: v + model_state(5, scale=2.0)[k] for k, v in global_state.items()}
    sent = run_site_mods(plan, global_state, local, {"clipping_norm": 0.25})
    assert np.linalg.norm(sent - flat(as_record(global_state))) == pytest.approx(0.25, rel=1e-6)


@pytest.mark.parametrize("mechanism", ["dp_server_fixed", "dp_server_adaptive"])
def test_server_side_clipping_leaves_the_sites_update_as_it_is(mechanism):
    assert PrivacyPlan({"mechanism": mechanism}, NUM_SITES, NUM_SITES, 0).train_mods() == []


@pytest.mark.parametrize("mechanism", ["dp_server_fixed", "dp_client_fixed", "dp_server_adaptive", "dp_client_adaptive"])
def test_every_site_weighs_the_same_in_the_mean_the_noise_is_calibrated_for(mechanism):
    assert PrivacyPlan({"mechanism": mechanism}, NUM_SITES, NUM_SITES, 0).reply_weights() == {"dp-weight": 1.0}
