"""The server's privacy ledger: the releases so far, the epsilon they spend, and whether the next
round fits the budget.

Every release is one dp_accounting event built from the mechanism's stated guarantee
(`flip.privacy.guarantee`), composed by an RDP accountant for its neighbouring relation:
- central DP: one sampled Gaussian per round, over the sites: a fixed number sampled without
  replacement from the sites online (replace_one), or each site with probability q (add_remove);
- local_dp: one Gaussian per site and round it trains, no amplification; the run's epsilon is the
  largest over sites;
- dp_sgd: each site accounts its own samples (Opacus) and reports its epsilon; the run's is the
  largest.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator

from dp_accounting import dp_event, privacy_accountant, rdp

from flip.errors import FlipError
from flip.privacy.guarantee import FIXED_SIZE, NO_AMPLIFICATION, POISSON, guarantee, local_dp_noise_std, statement
from flip.privacy.plan import CENTRAL_DP, PrivacyPlan

RELATIONS = {
    "replace_one": privacy_accountant.NeighboringRelation.REPLACE_ONE,
    "add_remove": privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE,
}


class PrivacyBudgetSpent(FlipError):
    """The next round would spend more than `privacy.max_epsilon`; the run stops before it."""


def local_dp_noise_multiplier(settings: dict) -> float:
    """LocalDpMod's noise std relative to the clipping norm (what `policy.min_noise_multiplier` checks)."""
    return local_dp_noise_std(settings) / settings["clipping_norm"]


@dataclass(frozen=True)
class Release:
    """One accounted Gaussian release: all an auditor needs to compose it again."""

    noise_to_sensitivity: float
    sampling: str  # fixed_size | poisson | none
    population: int | None = None  # sites to sample from
    sample_size: int | None = None  # fixed_size: sites sampled without replacement from `population`
    sampling_rate: float | None = None  # poisson

    def event(self) -> dp_event.DpEvent:
        gaussian = dp_event.GaussianDpEvent(self.noise_to_sensitivity)
        if self.sampling == POISSON:
            return dp_event.PoissonSampledDpEvent(self.sampling_rate, gaussian)
        if self.sampling == FIXED_SIZE:
            return dp_event.SampledWithoutReplacementDpEvent(self.population, self.sample_size, gaussian)
        return gaussian


def epsilon_of(releases: list[Release], delta: float, neighbours: str) -> float:
    """Epsilon at `delta` of all `releases` composed, with RDP for the relation."""
    accountant = rdp.RdpAccountant(neighboring_relation=RELATIONS[neighbours])
    # dp_accounting warns of each fractional order it cannot compute and leaves out: a looser bound.
    with _quiet("absl"):
        for release, count in Counter(releases).items():
            accountant.compose(release.event(), count)
        return float(accountant.get_epsilon(delta))


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def release_table(releases: list[Release]) -> list[dict]:
    """The releases as `summary.json` lists them: each distinct one once, with its count."""
    return [{**asdict(release), "count": count} for release, count in Counter(releases).items()]


@dataclass
class PrivacyLedger:
    plan: PrivacyPlan
    epsilon: float | None = None
    # Central DP: one release per round; local_dp: per site.
    releases: list[Release] = field(default_factory=list)
    site_releases: dict[int, list[Release]] = field(default_factory=dict)
    # dp_sgd: what each site reported.
    site_epsilons: dict[int, float] = field(default_factory=dict)
    site_next: dict[int, float] = field(default_factory=dict)
    site_deltas: dict[int, float] = field(default_factory=dict)
    # This round's sample: the sites sampled and the sites online they were sampled from.
    _sample: tuple[list[int], int] | None = None

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

    def before_round(self, server_round: int, sites: list[int], population: int | None = None) -> None:
        """Note the round's sample; raise PrivacyBudgetSpent if its release would exceed the budget."""
        self._sample = (list(sites), population or self.plan.num_sites)
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
        """Compose the round that just released; `sites` replied. Returns the run's epsilon so far."""
        mechanism = self.plan.mechanism
        if mechanism in CENTRAL_DP:
            # Under replace_one a round without replies releases nothing; a Poisson round always does.
            if sites or self.plan.neighbours == "add_remove":
                self.releases.append(self._central_release(sites))
            if self.releases:
                self.epsilon = epsilon_of(self.releases, self.plan.delta, self.plan.neighbours)
        elif mechanism == "local_dp":
            for site in sites:
                self.site_releases.setdefault(site, []).append(local_release(self.plan))
            self.epsilon = max((self._site_epsilon(r) for r in self.site_releases.values()), default=None)
        elif mechanism == "dp_sgd":
            for site, metrics in site_metrics.items():
                if "privacy/epsilon" in metrics:
                    self.site_epsilons[site] = metrics["privacy/epsilon"]
                    self.site_next[site] = metrics.get("privacy/epsilon_next", math.inf)
                    self.site_deltas[site] = metrics.get("privacy/delta", math.nan)
            self.epsilon = max(self.site_epsilons.values(), default=None)
        self._sample = None
        return self.epsilon

    def summary(self, site_names: list[str] | None = None) -> dict:
        """The `privacy` block of summary.json; local_dp's releases are listed by site name."""
        stated = guarantee(self.plan)
        releases = None
        if self.plan.mechanism in CENTRAL_DP:
            releases = release_table(self.releases)
        elif self.plan.mechanism == "local_dp":
            name = (lambda site: site_names[site]) if site_names else (lambda site: f"site-{site + 1}")
            releases = {name(site): release_table(r) for site, r in sorted(self.site_releases.items())}
        return {
            "mechanism": self.plan.mechanism,
            "secure_aggregation": self.plan.secagg is not None,
            "is_dp": self.plan.is_dp,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "max_epsilon": self.max_epsilon,
            **statement(stated),
            "releases": releases,
        }

    def _projected(self, sites: list[int]) -> float | None:
        mechanism = self.plan.mechanism
        if mechanism in CENTRAL_DP:
            releases = [*self.releases, self._central_release(sites)]
            return epsilon_of(releases, self.plan.delta, self.plan.neighbours)
        if mechanism == "local_dp":
            worst = None
            for site in sites:
                projected = self._site_epsilon([*self.site_releases.get(site, []), local_release(self.plan)])
                worst = max(worst or 0.0, projected)
            return worst
        if mechanism == "dp_sgd":
            # Sites check their own budget before training; here: what they reported for next round.
            return max((self.site_next.get(site, 0.0) for site in sites), default=None) or None
        return None

    def _central_release(self, replied: list[int]) -> Release:
        sampled, population = self._sample or (replied, self.plan.num_sites)
        return central_release(self.plan, len(sampled), population)

    def _site_epsilon(self, releases: list[Release]) -> float:
        return epsilon_of(releases, self.plan.delta, "replace_one")


def central_release(plan: PrivacyPlan, sampled: int, population: int) -> Release:
    """One central-DP round: `sampled` of `population` sites (fixed_size), or each at rate q (poisson)."""
    stated = guarantee(plan)
    if stated.sampling == POISSON:
        return Release(stated.noise_to_sensitivity, POISSON, plan.num_sites, sampling_rate=stated.sampling_rate)
    return Release(stated.noise_to_sensitivity, FIXED_SIZE, population, sampled)


def local_release(plan: PrivacyPlan) -> Release:
    """One site's local_dp release: its clipped update plus LocalDpMod's noise, no amplification."""
    return Release(guarantee(plan).noise_to_sensitivity, NO_AMPLIFICATION)


def projected_run_epsilon(plan: PrivacyPlan, num_rounds: int) -> float:
    """Epsilon a whole run of central DP or local DP would spend, every round sampling as planned
    and every site online (local_dp: a site that trains every round)."""
    if plan.mechanism in CENTRAL_DP:
        releases = [central_release(plan, plan.sites_per_round, plan.num_sites)] * num_rounds
        return epsilon_of(releases, plan.delta, plan.neighbours)
    if plan.mechanism == "local_dp":
        return epsilon_of([local_release(plan)] * num_rounds, plan.delta, "replace_one")
    return math.inf
