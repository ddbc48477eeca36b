"""The privacy plan's two halves, the accountant, the budget, site policies and the percentile filter,
each run on Flower's real strategy wrappers, mods and accountant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod.utils import make_ffn
from flwr.serverapp.strategy import FedAvg

from flip.experiment.recipes import resolve_recipe
from flip.privacy.schema import SitePolicy
from flip.experiment.validate import config_problems, validate
from flip.errors import ConfigError
from flip.privacy.accounting import PrivacyBudgetSpent, PrivacyLedger, local_dp_noise_multiplier, projected_run_epsilon
from flip.privacy.percentile import filter_update
from flip.privacy.plan import UNIFORM_WEIGHT, PrivacyPlan
from flip.federation.site_config import SiteSettings
from flip.privacy.policy import policy_refusals
from tests.conftest import in_memory_grid

NUM_SITES = 4
SIM = ["federation=simulation", f"federation.num_sites={NUM_SITES}"]


def plan_for(option: str, *overrides: str) -> PrivacyPlan:
    return PrivacyPlan.from_config(validate(resolve_recipe("dicom_synthetic_fedavg"), [*SIM, f"privacy={option}", *overrides]))


def model_state(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"conv.weight": scale * rng.normal(size=(8, 1, 3, 3)), "fc.weight": scale * rng.normal(size=(2, 400)), "fc.bias": np.zeros(2)}


def as_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: torch.tensor(value, dtype=torch.float64) for key, value in state.items()})


def flat(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([array.ravel() for array in record.to_numpy_ndarrays()])


def aggregate_with(plan: PrivacyPlan, grid, global_state: dict, site_states: list[dict]) -> np.ndarray:
    """One round of the plan's server half over real Flower messages; returns the aggregate."""
    strategy = plan.wrap_strategy(FedAvg(fraction_evaluate=0.0, weighted_by_key=UNIFORM_WEIGHT))
    instructions = list(strategy.configure_train(1, as_record(global_state), ConfigRecord(), grid))
    assert len(instructions) == NUM_SITES
    replies = [
        Message(RecordDict({"arrays": as_record(state), "metrics": MetricRecord({"num-examples": 10 * (i + 1), UNIFORM_WEIGHT: 1.0})}), reply_to=message)
        for i, (message, state) in enumerate(zip(instructions, site_states))
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    return flat(arrays)


# -- validation


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["privacy=dp_server_fixed", "privacy.noise_multiplier=0"], "privacy.noise_multiplier: must be positive, got 0"),
        (["privacy=dp_client_fixed", "privacy.clipping_norm=-1.0"], "privacy.clipping_norm: must be positive, got -1.0"),
        (["privacy=dp_client_fixed", "privacy.delta=0.3"], "privacy.delta: 0.3 must be below 1/N = 0.25 for N = federation.num_sites (4)"),
        (
            ["privacy=secagg", "privacy.secagg.reconstruction_threshold=3", "strategy.fraction_train=0.5"],
            "privacy.secagg.reconstruction_threshold: 3 is more than the 2 sites sampled per round",
        ),
        (
            ["privacy=dp_client_adaptive", "privacy.clipped_count_stddev=null"],
            "privacy.clipped_count_stddev: null (sites per round / 20 = 0.2) is too small for privacy.noise_multiplier=0.5; "
            "adaptive clipping needs noise_multiplier < 2 x clipped_count_stddev",
        ),
        (
            ["privacy=secagg_dp_client_fixed", "privacy.mechanism=dp_server_fixed"],
            "privacy.mechanism: dp_server_fixed clips each site's update on the server, which secure aggregation hides; "
            "use dp_client_fixed or dp_client_adaptive with privacy.secagg",
        ),
        (["privacy=percentile", "privacy.max_epsilon=3"], "privacy.max_epsilon: percentile is not differential privacy, so there is no epsilon to budget"),
        (
            ["privacy=local_dp", "privacy.sensitivity=1.5"],
            "privacy.sensitivity: 1.5 is below 2 x privacy.clipping_norm (2), how far a site's clipped update can move "
            "when its data is replaced; the noise would not give the stated epsilon",
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
        (
            ["privacy=dp_client_fixed", "+federation.sites.site-2.policy.require_dpp=true"],
            "federation.sites.site-2.policy.require_dpp: unknown key (did you mean 'require_dp'?)",
        ),
    ],
)
def test_bad_privacy_settings_are_named(overrides, expected):
    problems = config_problems(resolve_recipe("dicom_synthetic_fedavg"), [*SIM, *overrides])
    assert expected in problems, problems


def test_server_side_mechanisms_refuse_a_local_run():
    problems = config_problems(resolve_recipe("dicom_synthetic_local"), ["privacy=dp_server_fixed"])
    assert problems == [
        "privacy.mechanism: dp_server_fixed protects what sites send to a server; a local run sends nothing "
        "(use federation=simulation, or privacy=dp_sgd for a private local model)"
    ]


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


# -- the site half: Flower's client mods, and the percentile filter


def run_site_mods(plan: PrivacyPlan, global_state: dict, local_state: dict, config: dict) -> np.ndarray:
    def train(message: Message, context: Context) -> Message:
        content = RecordDict({"arrays": as_record(local_state), "metrics": MetricRecord({"num-examples": 5})})
        return Message(content, reply_to=message)

    message = Message(
        RecordDict({"arrays": as_record(global_state), "config": ConfigRecord(config)}), dst_node_id=1, message_type=MessageType.TRAIN
    )
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    reply = make_ffn(train, plan.train_mods())(message, context)
    assert not reply.has_error(), reply.error
    return flat(reply.content["arrays"])


def test_client_side_clipping_happens_at_the_site(monkeypatch):
    in_memory_grid(monkeypatch, 1)  # messages take their sender from the running app's identity
    plan = plan_for("dp_client_fixed")
    global_state = model_state(0)
    local = {k: v + model_state(5, scale=2.0)[k] for k, v in global_state.items()}
    sent = run_site_mods(plan, global_state, local, {"clipping_norm": 0.25})
    assert np.linalg.norm(sent - flat(as_record(global_state))) == pytest.approx(0.25, rel=1e-6)


def test_local_dp_adds_noise_of_its_calibration_at_the_site(monkeypatch):
    in_memory_grid(monkeypatch, 1)
    plan = plan_for("local_dp", "privacy.epsilon=5.0", "privacy.delta=1e-5")
    global_state = model_state(0)
    barely_moved = {k: v + model_state(7, scale=1e-9)[k] for k, v in global_state.items()}
    sent = run_site_mods(plan, global_state, barely_moved, {})
    expected = local_dp_noise_multiplier(plan.settings) * plan.settings["clipping_norm"]
    assert abs((sent - flat(as_record(global_state))).std() / expected - 1) < 0.1


def test_percentile_filter_sends_only_large_entries_clipped():
    rng = np.random.default_rng(3)
    old = [rng.normal(size=(50, 20)), rng.normal(size=(100,))]
    new = [o + rng.normal(scale=0.05, size=o.shape) for o in old]
    sent = filter_update(new, old, percentile=75.0, gamma=0.02)
    deltas = np.concatenate([(s - o).ravel() for s, o in zip(sent, old)])
    assert np.abs(deltas).max() <= 0.02 + 1e-12
    assert abs(np.mean(deltas == 0) - 0.75) < 0.01


# -- the budget (its figures are checked from first principles in test_accounting.py)


def test_budget_stops_before_the_round_that_would_exceed_it():
    spent = [projected_run_epsilon(plan_for("dp_client_fixed"), rounds) for rounds in (1, 2, 3, 4)]
    budget = (spent[2] + spent[3]) / 2
    ledger = PrivacyLedger(plan_for("dp_client_fixed", f"privacy.max_epsilon={budget}"))
    sites = list(range(NUM_SITES))
    for server_round in (1, 2, 3):
        ledger.before_round(server_round, sites)
        ledger.after_round(sites, {})
    with pytest.raises(PrivacyBudgetSpent, match=rf"round 4 would spend epsilon {spent[3]:.3f} in total, more than privacy.max_epsilon"):
        ledger.before_round(4, sites)
    assert ledger.epsilon == pytest.approx(spent[2])


# -- site policy


def refusals(option: str, policy: dict, *overrides: str) -> list[str]:
    return policy_refusals(SitePolicy(**policy), plan_for(option, *overrides), num_rounds=5)


def test_a_site_refuses_a_run_weaker_than_its_policy():
    assert refusals("none", {"require_dp": True}) == [
        "policy.require_dp: this site requires differential privacy, the run uses no DP"
    ]
    assert refusals("dp_client_fixed", {"require_secure_aggregation": True}) == [
        "policy.require_secure_aggregation: this site requires SecAgg+, the run uses dp_client_fixed"
    ]
    assert refusals("dp_client_fixed", {"min_noise_multiplier": 2.0}) == [
        "policy.min_noise_multiplier: 2 required, the run's is 1"
    ]
    assert refusals("secagg", {"allowed_mechanisms": ["dp_client_fixed"]}) == [
        "policy.allowed_mechanisms: none is not one of dp_client_fixed"
    ]
    total = projected_run_epsilon(plan_for("dp_client_fixed"), 5)
    assert refusals("dp_client_fixed", {"max_epsilon": 1.0}) == [
        f"policy.max_epsilon: the run would spend epsilon {total:.3g} over 5 rounds, this site allows 1 "
        "(set privacy.max_epsilon <= 1, or add noise)"
    ]


def test_a_site_accepts_a_run_its_policy_allows():
    policy = {"require_dp": True, "require_secure_aggregation": True, "min_noise_multiplier": 1.0, "max_epsilon": 8.0}
    assert refusals("secagg_dp_client_fixed", policy, "privacy.max_epsilon=8.0") == []


def test_a_malformed_site_policy_is_a_config_error_naming_its_keys():
    with pytest.raises(ConfigError) as error:
        SiteSettings.from_mapping({"name": "site-2", "policy": {"min_cohort": "many", "require_dpp": True}}, "site-2")
    assert error.value.problems == [
        "site-2.policy.min_cohort: expected an int, got 'many'",
        "site-2.policy.require_dpp: unknown key (did you mean 'require_dp'?)",
    ]
