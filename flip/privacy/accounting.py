"""The server's privacy ledger: epsilon spent so far, and whether the next round fits the budget.

Central DP (dp_server_*, dp_client_*): each round is one sampled Gaussian release over sites,
composed with Flower's RDP accountant; Flower samples a fixed number of sites without
replacement, so the accountant uses that sampling with replace-one neighbouring sites.
local_dp: each site's update is a Gaussian release with noise std / clipping_norm as its
multiplier, composed over the rounds that site trains, no amplification claimed.
dp_sgd: each site accounts its own sample-level epsilon (Opacus) and reports it; the run's
epsilon is the largest over sites.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)

from flip.errors import FlipError
from flip.privacy.plan import CENTRAL_DP, PrivacyPlan


class PrivacyBudgetSpent(FlipError):
    """The next round would spend more than `privacy.max_epsilon`; the run stops before it."""


def local_dp_noise_multiplier(settings: dict) -> float:
    """LocalDpMod's noise std (the classic Gaussian calibration) relative to the clipping norm."""
    std = settings["sensitivity"] * math.sqrt(2 * math.log(1.25 / settings["delta"])) / settings["epsilon"]
    return std / settings["clipping_norm"]


@dataclass
class PrivacyLedger:
    plan: PrivacyPlan
    epsilon: float | None = None
    site_epsilons: dict[int, float] = field(default_factory=dict)
    site_next: dict[int, float] = field(default_factory=dict)
    site_deltas: dict[int, float] = field(default_factory=dict)
    _central: RdpAccountant | None = None
    _local: dict[int, RdpAccountant] = field(default_factory=dict)

    @property
    def delta(self) -> float | None:
        if not self.plan.is_dp:
            return None
        if self.plan.mechanism == "dp_sgd" and self.plan.settings.get("delta") is None:
            return max(self.site_deltas.values(), default=None)  # each site's own 1/n^1.1
        return self.plan.delta

    @property
    def max_epsilon(self) -> float | None:
        return self.plan.settings.get("max_epsilon")

    def before_round(self, server_round: int, sites: list[int]) -> None:
        """Raise PrivacyBudgetSpent if training `sites` this round would exceed the budget."""
        if self.max_epsilon is None:
            return
        projected = self._projected(sites)
        if projected is not None and projected > self.max_epsilon:
            spent = "nothing yet" if self.epsilon is None else f"epsilon {self.epsilon:.3f}"
            raise PrivacyBudgetSpent(
                f"round {server_round} would spend epsilon {projected:.3f} in total, more than "
                f"privacy.max_epsilon={self.max_epsilon:g} (spent so far: {spent}); stopped before it"
            )

    def after_round(self, sites: list[int], site_metrics: dict[int, dict[str, float]]) -> float | None:
        """Compose the round that just released an update; returns the run's epsilon so far."""
        mechanism = self.plan.mechanism
        if mechanism in CENTRAL_DP:
            self._central_accountant().compose(self._central_event(len(sites)))
            self.epsilon = self._central_accountant().get_epsilon(self.plan.delta)
        elif mechanism == "local_dp":
            for site in sites:
                self._local_accountant(site).compose(self._local_event())
            self.epsilon = max(a.get_epsilon(self.plan.delta) for a in self._local.values())
        elif mechanism == "dp_sgd":
            for site, metrics in site_metrics.items():
                if "privacy/epsilon" in metrics:
                    self.site_epsilons[site] = metrics["privacy/epsilon"]
                    self.site_next[site] = metrics.get("privacy/epsilon_next", math.inf)
                    self.site_deltas[site] = metrics.get("privacy/delta", math.nan)
            self.epsilon = max(self.site_epsilons.values(), default=None)
        return self.epsilon

    def summary(self) -> dict:
        return {
            "mechanism": self.plan.mechanism,
            "secure_aggregation": self.plan.secagg is not None,
            "is_dp": self.plan.is_dp,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "max_epsilon": self.max_epsilon,
        }

    def _projected(self, sites: list[int]) -> float | None:
        mechanism = self.plan.mechanism
        if mechanism in CENTRAL_DP:
            accountant = self._central_accountant()
            projected = _copy(accountant)
            projected.compose(self._central_event(len(sites)))
            return projected.get_epsilon(self.plan.delta)
        if mechanism == "local_dp":
            worst = None
            for site in sites:
                projected = _copy(self._local_accountant(site))
                projected.compose(self._local_event())
                worst = max(worst or 0.0, projected.get_epsilon(self.plan.delta))
            return worst
        if mechanism == "dp_sgd":
            # Sites check their own budget before training; here: what they reported for next round.
            return max((self.site_next.get(site, 0.0) for site in sites), default=None) or None
        return None

    def _central_accountant(self) -> RdpAccountant:
        if self._central is None:
            self._central = RdpAccountant(
                PrivacyConfig(
                    target_delta=self.plan.delta,
                    population_size=self.plan.num_sites,
                    neighboring_relation=NeighboringRelation.REPLACE_ONE,
                    sampling_method=SamplingMethod.WITHOUT_REPLACEMENT,
                )
            )
        return self._central

    def _central_event(self, sampled: int) -> GaussianPrivacyEvent:
        noise = self.plan.noise_multiplier
        return GaussianPrivacyEvent(noise_multiplier=noise, sample_size=sampled, population_size=self.plan.num_sites)

    def _local_accountant(self, site: int) -> RdpAccountant:
        if site not in self._local:
            self._local[site] = RdpAccountant(
                PrivacyConfig(
                    target_delta=self.plan.delta,
                    population_size=1,
                    neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                    sampling_method=SamplingMethod.NO_AMPLIFICATION,
                )
            )
        return self._local[site]

    def _local_event(self) -> GaussianPrivacyEvent:
        noise = local_dp_noise_multiplier(self.plan.settings)
        return GaussianPrivacyEvent(noise_multiplier=noise, sample_size=1, population_size=1)


def _copy(accountant: RdpAccountant) -> RdpAccountant:
    twin = RdpAccountant(accountant.config)
    twin.load_state_dict(accountant.state_dict())
    return twin


def projected_run_epsilon(plan: PrivacyPlan, num_rounds: int) -> float:
    """Epsilon a whole run of central DP or local DP would spend, every round sampling as planned."""
    ledger = PrivacyLedger(plan)
    sites = list(range(plan.sites_per_round))
    for _ in range(num_rounds):
        ledger.after_round(sites, {})
    return ledger.epsilon if ledger.epsilon is not None else math.inf
