"""Every epsilon flip reports, checked independently of the accountant call flip makes.

Expected figures come from first principles written here: the sensitivity of each (relation,
aggregation) pair, the exact epsilon of the Gaussian mechanism (Balle & Wang 2018), the RDP of
the Gaussian with the RDP -> (epsilon, delta) conversion of Canonne, Kamath & Steinke (2020),
events composed here with dp_accounting, and Opacus's RDP accountant as a second implementation
for Poisson sampling. The sensitivity is also measured: one site's data replaced by an
adversarial one, through flip's real server half.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event, privacy_accountant, rdp
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from opacus.accountants import RDPAccountant
from scipy.optimize import minimize_scalar

from flip.experiment.recipes import resolve_recipe
from flip.privacy.schema import SitePolicy
from flip.experiment.validate import validate
from flip.audit.run_directory import RunDirectory
from flip.federation.keeper import RoundKeeper
from flip.privacy.accounting import PrivacyBudgetSpent, PrivacyLedger, projected_run_epsilon
from flip.privacy.central import PoissonSampled, poisson_draws
from flip.privacy.plan import UNIFORM_WEIGHT, PrivacyPlan
from flip.privacy.policy import policy_refusals
from tests.conftest import in_memory_grid
from tests.privacy.conftest import as_record, flat, model_state

DELTA = 1e-5


def plan_for(option: str, num_sites: int, *overrides: str) -> PrivacyPlan:
    sim = ["federation=simulation", f"federation.num_sites={num_sites}", f"privacy={option}"]
    return PrivacyPlan.from_config(validate(resolve_recipe("dicom_synthetic_fedavg"), [*sim, *overrides]))


def run_rounds(plan: PrivacyPlan, rounds: list[tuple[list[int], list[int]]], population: int | None = None) -> float:
    """flip's ledger over rounds of (sampled sites, sites that replied)."""
    ledger = PrivacyLedger(plan)
    for server_round, (sampled, replied) in enumerate(rounds, start=1):
        ledger.before_round(server_round, sampled, population)
        ledger.after_round(replied, {})
    return ledger.epsilon


# -- first principles


def phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def exact_gaussian_epsilon(mu: float, delta: float = DELTA) -> float:
    """The exact epsilon of one Gaussian release with sensitivity / std = mu (Balle & Wang 2018, Thm 8)."""

    def delta_at(eps: float) -> float:
        return phi(mu / 2 - eps / mu) - math.exp(eps) * phi(-mu / 2 - eps / mu)

    low, high = 0.0, 200.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if delta_at(middle) > delta else (low, middle)
    return high


def rdp_gaussian_epsilon(mu: float, releases: int = 1, delta: float = DELTA) -> float:
    """`releases` Gaussian releases, RDP alpha * mu^2 / 2 each, at the best real order alpha."""

    def epsilon(alpha: float) -> float:
        return releases * alpha * mu**2 / 2 + math.log1p(-1 / alpha) - math.log(delta * alpha) / (alpha - 1)

    return minimize_scalar(epsilon, bounds=(1.01, 5000), method="bounded").fun


def composed(events: list[dp_event.DpEvent], relation: str) -> float:
    accountant = rdp.RdpAccountant(neighboring_relation=getattr(privacy_accountant.NeighboringRelation, relation))
    for event in events:
        accountant.compose(event)
    return accountant.get_epsilon(DELTA)


# -- one round, every site sampled: flip is at least the exact epsilon and close to RDP's


def check_single_release(epsilon: float, mu: float) -> None:
    assert epsilon >= exact_gaussian_epsilon(mu)
    assert epsilon == pytest.approx(rdp_gaussian_epsilon(mu), rel=0.01)


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0])
def test_replace_one_round_is_a_gaussian_of_the_replace_one_sensitivity(sigma):
    # Replace-one: the mean of 3 updates clipped to C moves by up to 2C/3; the noise std is sigma C / 3.
    clip, sites = 0.5, 3
    plan = plan_for("dp_client_fixed", sites, f"privacy.noise_multiplier={sigma}", f"privacy.clipping_norm={clip}")
    mu = (2 * clip / sites) / (sigma * clip / sites)
    check_single_release(run_rounds(plan, [([0, 1, 2], [0, 1, 2])]), mu)


def test_the_issues_example_round_one():
    """dp_client_fixed, sigma = C = 1, 3 sites: the exact epsilon is 9.997, RDP's 10.726 (the issue)."""
    plan = plan_for("dp_client_fixed", 3)
    epsilon = run_rounds(plan, [([0, 1, 2], [0, 1, 2])])
    assert exact_gaussian_epsilon(2.0) == pytest.approx(9.997, abs=1e-3)
    assert exact_gaussian_epsilon(2.0) <= epsilon == pytest.approx(10.726, abs=1e-3)


def test_add_remove_round_with_every_site_sampled():
    # Add-or-remove with the fixed denominator q N: the sum over q N moves by C / (q N); noise sigma C / (q N).
    sigma, sites = 1.3, 4
    plan = plan_for("dp_client_fixed", sites, "privacy.neighbours=add_remove", "privacy.sampling_rate=1.0", f"privacy.noise_multiplier={sigma}")
    check_single_release(run_rounds(plan, [([0, 1, 2, 3], [0, 1, 2, 3])]), 1 / sigma)


@pytest.mark.parametrize("neighbours, count_sensitivity", [("replace_one", 1.0), ("add_remove", 0.5)])
def test_adaptive_clipping_spends_its_update_and_count_noise_together(neighbours, count_sensitivity):
    sigma, count_std, sites = 0.8, 1.5, 4
    extra = ["privacy.sampling_rate=1.0"] if neighbours == "add_remove" else []
    plan = plan_for(
        "dp_client_adaptive", sites, f"privacy.neighbours={neighbours}", *extra,
        f"privacy.noise_multiplier={sigma}", f"privacy.clipped_count_stddev={count_std}",
    )
    # Andrew et al.: the update's noise multiplier once the count has its share of the budget.
    update_noise = (sigma**-2 - (2 * count_std) ** -2) ** -0.5
    update_sensitivity_over_std = (2 if neighbours == "replace_one" else 1) / update_noise  # per C/k or C/(qN)
    mu = math.hypot(update_sensitivity_over_std, count_sensitivity / count_std)
    check_single_release(run_rounds(plan, [([0, 1, 2, 3], [0, 1, 2, 3])]), mu)


def test_local_dp_round_is_a_gaussian_of_a_replaced_sites_update():
    plan = plan_for("local_dp", 3, "privacy.epsilon=4.0", "privacy.delta=1e-5", "privacy.clipping_norm=0.5", "privacy.sensitivity=1.0")
    std = 1.0 * math.sqrt(2 * math.log(1.25 / 1e-5)) / 4.0  # LocalDpMod's calibration
    check_single_release(run_rounds(plan, [([0, 1, 2], [0, 1, 2])]), 2 * 0.5 / std)


# -- over rounds and with sampling: the same composition, built here


def test_fixed_size_sampling_composes_like_sampling_without_replacement_of_replace_one():
    sigma = 1.2
    plan = plan_for("dp_server_fixed", 6, "strategy.fraction_train=0.5", f"privacy.noise_multiplier={sigma}")
    # Round 3 loses a site: its mean is over 2 replies, and so is its noise; round 4: a site offline.
    rounds = [([0, 1, 2], [0, 1, 2]), ([1, 3, 5], [1, 3, 5]), ([0, 2, 4], [0, 4]), ([1, 2, 3], [1, 2, 3])]
    populations = [6, 6, 6, 5]
    ledger = PrivacyLedger(plan)
    for server_round, ((sampled, replied), population) in enumerate(zip(rounds, populations), start=1):
        ledger.before_round(server_round, sampled, population)
        ledger.after_round(replied, {})
    events = []
    for (sampled, replied), population in zip(rounds, populations):
        sensitivity, std = 2 / len(replied), sigma / len(replied)  # in units of C
        events.append(dp_event.SampledWithoutReplacementDpEvent(population, len(sampled), dp_event.GaussianDpEvent(std / sensitivity)))
    assert ledger.epsilon == pytest.approx(composed(events, "REPLACE_ONE"), rel=1e-9)
    summary = ledger.summary()
    assert (summary["neighbours"], summary["sampling"], summary["noise_to_sensitivity"]) == ("replace_one", "fixed_size", sigma / 2)
    assert sum(r["count"] for r in summary["releases"]) == 4


def test_poisson_sampling_composes_like_dp_accounting_and_opacus():
    sigma, rate, sites, steps = 1.1, 0.4, 5, 6
    plan = plan_for("dp_client_fixed", sites, "privacy.neighbours=add_remove", f"privacy.sampling_rate={rate}", f"privacy.noise_multiplier={sigma}")
    # Whoever was sampled or replied, each round is one Poisson-sampled Gaussian, an empty one included.
    rounds = [([0, 3], [0, 3]), ([], []), ([1, 2, 4], [1, 4]), ([2], [2]), ([0, 1], [0, 1]), ([4], [4])]
    epsilon = run_rounds(plan, rounds)
    event = dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent((sigma / (rate * sites)) / (1 / (rate * sites))))
    assert epsilon == pytest.approx(composed([event] * steps, "ADD_OR_REMOVE_ONE"), rel=1e-9)
    opacus = RDPAccountant()
    opacus.history = [(sigma, rate, steps)]
    assert epsilon == pytest.approx(opacus.get_epsilon(DELTA), rel=1e-3)


def test_local_dp_accounts_each_site_over_the_rounds_it_trained():
    plan = plan_for("local_dp", 3)
    std = 2.0 * math.sqrt(2 * math.log(1.25 / 1e-5)) / 10.0
    epsilon = run_rounds(plan, [([0, 1, 2], [0, 1]), ([0, 1, 2], [0, 2]), ([0, 1, 2], [0])])
    assert epsilon == pytest.approx(rdp_gaussian_epsilon(2 * 1.0 / std, releases=3), rel=0.01)  # site 1: 3 rounds


# -- the sensitivity, measured through flip's real server half


def train_round(strategy, grid, updates: dict[int, np.ndarray], global_state: dict) -> np.ndarray:
    """One training round of a server half; `updates` maps a site to its update (absent: no reply).
    Returns the change of the global model."""
    instructions = list(strategy.configure_train(1, as_record(global_state), ConfigRecord(), grid))
    order = sorted(grid.get_node_ids())
    replies = []
    for message in instructions:
        site = order.index(message.metadata.dst_node_id)
        if site in updates:
            state = unflat(flat(as_record(global_state)) + updates[site], global_state)
            content = RecordDict({"arrays": as_record(state), "metrics": MetricRecord({"num-examples": 10, UNIFORM_WEIGHT: 1.0})})
            replies.append(Message(content, reply_to=message))
    arrays, _ = strategy.aggregate_train(1, replies)
    return flat(arrays) - flat(as_record(global_state))


def server_half(plan: PrivacyPlan):
    return plan.wrap_strategy(FedAvg(fraction_evaluate=0.0, weighted_by_key=UNIFORM_WEIGHT))


def one_round(plan: PrivacyPlan, grid, updates: dict[int, np.ndarray], global_state: dict) -> np.ndarray:
    return train_round(server_half(plan), grid, updates, global_state)


def unflat(vector: np.ndarray, like: dict) -> dict:
    out, start = {}, 0
    for key, value in like.items():
        out[key] = vector[start : start + value.size].reshape(value.shape)
        start += value.size
    return out


def assumed_sensitivity(option: str, num_sites: int, overrides: list[str], grid, updates: dict, global_state) -> float:
    """Noise std measured on a round of barely moved updates, over the noise multiplier flip accounts."""
    plan = plan_for(option, num_sites, *overrides, "privacy.noise_multiplier=2.0")
    noise = one_round(plan, grid, {site: 1e-9 * u / np.linalg.norm(u) for site, u in updates.items()}, global_state)
    return noise.std() / PrivacyLedger(plan).summary()["noise_to_sensitivity"]


@pytest.mark.parametrize("replying", [[0, 1, 2, 3], [0, 1, 2]])
def test_an_adversarial_replacement_moves_the_aggregate_by_at_most_the_sensitivity_accounted(monkeypatch, replying):
    """Site 0's data replaced by data whose update points the other way, at full strength."""
    sites, clip = 4, 0.5
    grid = in_memory_grid(monkeypatch, sites)
    global_state = model_state(0)
    size = flat(as_record(global_state)).size
    rng = np.random.default_rng(1)
    direction = rng.normal(size=size)
    honest = {site: 3 * clip * rng.normal(size=size) / math.sqrt(size) for site in replying}
    adversarial = {**honest, 0: -3 * clip * direction / np.linalg.norm(direction)}
    honest[0] = 3 * clip * direction / np.linalg.norm(direction)
    overrides = [f"privacy.clipping_norm={clip}"]
    exact = plan_for("dp_server_fixed", sites, *overrides, "privacy.noise_multiplier=1e-12")
    change = np.linalg.norm(one_round(exact, grid, honest, global_state) - one_round(exact, grid, adversarial, global_state))
    assert change == pytest.approx(2 * clip / len(replying), rel=1e-6)  # the server clipped both to C
    assert change <= 1.1 * assumed_sensitivity("dp_server_fixed", sites, overrides, grid, honest, global_state)


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_removing_a_site_moves_the_poisson_aggregate_by_at_most_the_sensitivity_accounted(monkeypatch, rate):
    sites, clip = 4, 0.5
    grid = in_memory_grid(monkeypatch, sites)
    global_state = model_state(0)
    size = flat(as_record(global_state)).size
    rng = np.random.default_rng(2)
    updates = {site: 3 * clip * rng.normal(size=size) / math.sqrt(size) for site in range(sites)}
    overrides = ["privacy.neighbours=add_remove", f"privacy.sampling_rate={rate}", f"privacy.clipping_norm={clip}"]
    exact = plan_for("dp_server_fixed", sites, *overrides, "privacy.noise_multiplier=1e-12")
    sampled = [site for site in range(sites) if poisson_draws(exact.seed, 1, sites)[site] < rate]
    assert sampled
    removed = {site: u for site, u in updates.items() if site != sampled[0]}
    with_site = one_round(exact, grid, updates, global_state)
    change = np.linalg.norm(with_site - one_round(exact, grid, removed, global_state))
    assert change == pytest.approx(clip / (rate * sites), rel=1e-6)
    # The sum of the clipped updates of the sampled sites, over the expected count q N.
    clipped = sum(updates[s] * min(1, clip / np.linalg.norm(updates[s])) for s in sampled)
    np.testing.assert_allclose(with_site, clipped / (rate * sites), atol=1e-6)
    assert change <= 1.1 * assumed_sensitivity("dp_server_fixed", sites, overrides, grid, updates, global_state)


def clipped_share(plan: PrivacyPlan, grid, updates: dict, global_state: dict) -> tuple[float, float]:
    """The noisy share of clipped updates an adaptive round released (read from its clipping norm
    update C' = C exp(-lr (share - target))), and the noise std on the model."""
    strategy = server_half(plan)
    before = strategy.clipping_norm
    change = train_round(strategy, grid, updates, global_state)
    s = plan.settings
    return s["target_clipped_quantile"] - math.log(strategy.clipping_norm / before) / s["clip_norm_lr"], change.std()


@pytest.mark.parametrize("neighbours, moved_by", [("replace_one", 1.0), ("add_remove", 0.5)])
def test_one_site_moves_the_clipped_count_by_its_accounted_sensitivity(monkeypatch, neighbours, moved_by):
    """Adaptive clipping: the released count of clipped updates, with and without site 0 clipped."""
    sites = 4
    grid = in_memory_grid(monkeypatch, sites)
    global_state = model_state(0)
    size = flat(as_record(global_state)).size
    small = {site: 1e-6 * np.ones(size) / math.sqrt(size) for site in range(sites)}  # never clipped
    extra = ["privacy.sampling_rate=1.0"] if neighbours == "add_remove" else []
    settings = [f"privacy.neighbours={neighbours}", *extra, "privacy.noise_multiplier=1e-9", "privacy.clipped_count_stddev=1e-9"]
    plan = plan_for("dp_server_adaptive", sites, *settings)
    quiet, _ = clipped_share(plan, grid, small, global_state)
    if neighbours == "replace_one":  # site 0's data replaced: its update is now clipped
        other = {**small, 0: 5 * np.ones(size) / math.sqrt(size)}
        denominator = sites  # the share is over the replies
    else:  # site 0 removed
        other = {site: u for site, u in small.items() if site != 0}
        denominator = 1.0 * sites  # the share is over q N
    moved, _ = clipped_share(plan, grid, other, global_state)
    assert abs(moved - quiet) * denominator == pytest.approx(moved_by, rel=1e-6)


def test_adaptive_noise_follows_the_norm_the_updates_were_clipped_to(monkeypatch):
    sites = 4
    grid = in_memory_grid(monkeypatch, sites)
    global_state = model_state(0)
    size = flat(as_record(global_state)).size
    barely = {site: 1e-9 * np.ones(size) / math.sqrt(size) for site in range(sites)}
    plan = plan_for("dp_server_adaptive", sites, "privacy.noise_multiplier=2.0", "privacy.clipped_count_stddev=50", "privacy.clip_norm_lr=2.0")
    _, std = clipped_share(plan, grid, barely, global_state)
    update_noise = (2.0**-2 - 100.0**-2) ** -0.5
    # The clipping norm grew e-fold after the round; the noise is that of the norm the updates had.
    assert std == pytest.approx(update_noise * plan.settings["initial_clipping_norm"] / sites, rel=0.08)


# -- the server's Poisson sampling


def test_the_server_samples_each_site_with_the_rate_seeded_by_round(monkeypatch):
    grid = in_memory_grid(monkeypatch, 4)
    order = sorted(grid.get_node_ids())

    def samples(seed: int) -> list[list[int]]:
        strategy = PoissonSampled(FedAvg(fraction_evaluate=0.0), 0.3, 4, seed)
        return [
            sorted(order.index(m.metadata.dst_node_id) for m in strategy.configure_train(r, as_record(model_state(0)), ConfigRecord(), grid))
            for r in range(1, 201)
        ]

    first = samples(7)
    assert first == samples(7) and first != samples(8)
    assert abs(sum(map(len, first)) / (4 * 200) - 0.3) < 0.05
    assert [] in first  # some rounds sample no site, and still count


def test_a_round_that_samples_no_site_still_releases_noise_and_is_accounted(monkeypatch, tmp_path):
    grid = in_memory_grid(monkeypatch, 3)
    plan = plan_for("dp_client_fixed", 3, "privacy.neighbours=add_remove", "privacy.sampling_rate=0.2")
    empty = next(r for r in range(1, 100) if (poisson_draws(plan.seed, r, 3) >= 0.2).all())
    keeper = RoundKeeper(run_directory=RunDirectory(tmp_path), monitor="val/auroc", monitor_mode="max", num_rounds=empty, ledger=PrivacyLedger(plan))
    inner = FedAvg(fraction_evaluate=0.0, weighted_by_key=UNIFORM_WEIGHT)
    inner.flip = type("Settings", (), {"observer": keeper})()
    strategy = plan.wrap_strategy(inner)
    global_state = as_record(model_state(0))
    assert list(strategy.configure_train(empty, global_state, ConfigRecord(), grid)) == []
    arrays, _ = strategy.aggregate_train(empty, [])
    noise = flat(arrays) - flat(global_state)
    assert noise.std() == pytest.approx(1.0 * 1.0 / (0.2 * 3), rel=0.1)  # sigma C / (q N)
    assert keeper.ledger.epsilon == pytest.approx(
        composed([dp_event.PoissonSampledDpEvent(0.2, dp_event.GaussianDpEvent(1.0))], "ADD_OR_REMOVE_ONE")
    )


# -- what consumes epsilon: the run's budget stop and a site's max_epsilon


def test_the_budget_stops_before_the_round_the_corrected_figures_exceed():
    # 3 sites, sigma = 1, every site every round: each round a Gaussian with mu = 2 (replace-one).
    second, third = rdp_gaussian_epsilon(2.0, 2), rdp_gaussian_epsilon(2.0, 3)
    ledger = PrivacyLedger(plan_for("dp_client_fixed", 3, f"privacy.max_epsilon={(second + third) / 2}"))
    sites = [0, 1, 2]
    for server_round in (1, 2):
        ledger.before_round(server_round, sites)
        ledger.after_round(sites, {})
    with pytest.raises(PrivacyBudgetSpent, match=r"round 3 would spend epsilon (\S+) in total") as stop:
        ledger.before_round(3, sites)
    assert float(stop.value.args[0].split()[5]) == pytest.approx(third, rel=0.01)
    assert ledger.epsilon == pytest.approx(second, rel=0.01)


def test_the_ledger_stops_where_the_projection_of_the_whole_run_says():
    spent = [projected_run_epsilon(plan_for("dp_client_fixed", 4), rounds) for rounds in (1, 2, 3, 4)]
    budget = (spent[2] + spent[3]) / 2
    ledger = PrivacyLedger(plan_for("dp_client_fixed", 4, f"privacy.max_epsilon={budget}"))
    sites = [0, 1, 2, 3]
    for server_round in (1, 2, 3):
        ledger.before_round(server_round, sites)
        ledger.after_round(sites, {})
    with pytest.raises(PrivacyBudgetSpent, match=rf"round 4 would spend epsilon {spent[3]:.3f} in total, more than privacy.max_epsilon"):
        ledger.before_round(4, sites)
    assert ledger.epsilon == pytest.approx(spent[2])


@pytest.mark.parametrize("neighbours", ["replace_one", "add_remove"])
def test_a_sites_max_epsilon_refuses_the_run_at_the_right_number_of_rounds(neighbours):
    extra = ["privacy.sampling_rate=1.0"] if neighbours == "add_remove" else []
    plan = plan_for("dp_client_fixed", 3, f"privacy.neighbours={neighbours}", *extra, "privacy.noise_multiplier=1.5")
    mu = 2 / 1.5 if neighbours == "replace_one" else 1 / 1.5
    limit = (rdp_gaussian_epsilon(mu, 4) + rdp_gaussian_epsilon(mu, 5)) / 2
    policy = SitePolicy(max_epsilon=limit)
    assert policy_refusals(policy, plan, num_rounds=4) == []
    (refusal,) = policy_refusals(policy, plan, num_rounds=5)
    assert refusal.startswith(f"policy.max_epsilon: the run would spend epsilon {rdp_gaussian_epsilon(mu, 5):.3g} over 5 rounds")
