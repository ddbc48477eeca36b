"""The server's privacy ledger: the releases so far, the epsilon they spend, and whether the next
round fits the budget.

The ledger asks the run's mechanism what each round releases (`Mechanism.round_releases`): one
dp_accounting event per release, charged to the whole federation (central DP) or to each site
that trained (local DP), composed per party by an RDP accountant for the mechanism's neighbouring
relation; the run's epsilon is the largest. Sites that account their own samples (dp_sgd, with
Opacus) report their epsilon instead, and the run's is the largest of those.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from dp_accounting import privacy_accountant, rdp

from flip.errors import FlipError
from flip.privacy.guarantee import Release, statement
from flip.privacy.mechanisms.base import FEDERATION, SITES
from flip.privacy.plan import PrivacyPlan

RELATIONS = {
    "replace_one": privacy_accountant.NeighboringRelation.REPLACE_ONE,
    "add_remove": privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE,
}


class PrivacyBudgetSpent(FlipError):
    """The next round would spend more than `privacy.max_epsilon`; the run stops before it."""


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
    # The releases charged to each party: FEDERATION, or a site's index.
    releases: dict[Any, list[Release]] = field(default_factory=dict)
    # What sites that account themselves (dp_sgd) reported.
    site_epsilons: dict[int, float] = field(default_factory=dict)
    site_next: dict[int, float] = field(default_factory=dict)
    site_deltas: dict[int, float] = field(default_factory=dict)
    # This round's sample: the sites sampled and the sites online they were sampled from.
    _sample: tuple[list[int], int] | None = None

    @property
    def delta(self) -> float | None:
        return self.plan.mechanism.reported_delta(self.site_deltas)

    @property
    def max_epsilon(self) -> float | None:
        return self.plan.max_epsilon

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
        sampled, population = self._sample or (sites, self.plan.num_sites)
        for party, release in self.plan.mechanism.round_releases(sampled, population, sites).items():
            self.releases.setdefault(party, []).append(release)
        for site, metrics in site_metrics.items():
            if "privacy/epsilon" in metrics:
                self.site_epsilons[site] = metrics["privacy/epsilon"]
                self.site_next[site] = metrics.get("privacy/epsilon_next", math.inf)
                self.site_deltas[site] = metrics.get("privacy/delta", math.nan)
        spent = [*map(self._epsilon, self.releases.values()), *self.site_epsilons.values()]
        self.epsilon = max(spent, default=None)
        self._sample = None
        return self.epsilon

    def summary(self, site_names: list[str] | None = None) -> dict:
        """The `privacy` block of summary.json; releases charged to sites are listed by site name."""
        mechanism = self.plan.mechanism
        return {
            "mechanism": mechanism.name,
            "secure_aggregation": self.plan.secagg is not None,
            "is_dp": mechanism.is_dp,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "max_epsilon": self.max_epsilon,
            **statement(mechanism.guarantee()),
            "releases": self._release_tables(site_names),
        }

    def _release_tables(self, site_names: list[str] | None) -> list[dict] | dict[str, list[dict]] | None:
        charged_to = self.plan.mechanism.charged_to
        if charged_to == FEDERATION:
            return release_table(self.releases.get(FEDERATION, []))
        if charged_to == SITES:
            name = (lambda site: site_names[site]) if site_names else (lambda site: f"site-{site + 1}")
            return {name(site): release_table(r) for site, r in sorted(self.releases.items())}
        return None

    def _projected(self, sites: list[int]) -> float | None:
        """The run's epsilon if the sampled `sites` all reply; sites that account themselves
        checked their own budget, and are taken at what they reported for their next round."""
        sampled, population = self._sample
        releases = self.plan.mechanism.round_releases(sampled, population, sampled)
        projected = [self._epsilon([*self.releases.get(party, []), release]) for party, release in releases.items()]
        projected += [self.site_next[site] for site in sites if site in self.site_next]
        return max(projected, default=None)

    def _epsilon(self, releases: list[Release]) -> float:
        return epsilon_of(releases, self.plan.delta, self.plan.mechanism.neighbours)


def projected_run_epsilon(plan: PrivacyPlan, num_rounds: int) -> float | None:
    """Epsilon a whole run would spend, every round sampling as planned and every site online and
    replying; None when the server accounts no release (no DP, or sites that account themselves)."""
    sampled = list(range(plan.sites_per_round))
    releases = set(plan.mechanism.round_releases(sampled, plan.num_sites, sampled).values())
    neighbours = plan.mechanism.neighbours
    return max((epsilon_of([release] * num_rounds, plan.delta, neighbours) for release in releases), default=None)
