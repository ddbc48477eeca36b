"""Central DP: every update clipped (by the server or by each site), Gaussian noise on their mean.

`CentralDp` is what the central options share; this module's classes clip every update to a fixed
`clipping_norm` (dp_server_fixed, dp_client_fixed), `flip.privacy.mechanisms.adaptive_dp`'s to an
adaptive norm. The server half is Flower's DP wrapper with flip's calibration
(`flip.privacy.central`); the site half of the client-side options is Flower's clipping mod.

The guarantee (C the clipping norm, sigma privacy.noise_multiplier, N sites, k replies):
- replace_one: a fixed number of sites sampled without replacement; the released mean of the k
  replies moves by at most 2C/k when one site's data is replaced; flip adds noise sigma*C/k to
  it, so the noise over sensitivity is sigma/2.
- add_remove: each site sampled with probability q (Poisson); the sum of the clipped updates is
  divided by the expected count q*N (fixed), so adding or removing a site moves it by at most
  C/(q*N); noise sigma*C/(q*N): the noise over sensitivity is sigma.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Optional

from omegaconf import DictConfig

from flip.privacy.guarantee import FIXED_SIZE, POISSON, Guarantee, Release
from flip.privacy.mechanisms.base import FEDERATION, Mechanism, PrivacyConfig
from flip.privacy.mechanisms.rules import is_number

# Metric key sites fill with 1.0: every site then weighs the same in the mean, which is what the
# noise (noise_multiplier * clipping_norm / replies) is calibrated for.
UNIFORM_WEIGHT = "dp-weight"
# Neighbouring federations central DP can protect: one site's data replaced by any other
# (fixed-size sampling), or one site added or removed (Poisson sampling, fixed denominator).
NEIGHBOURS = ("replace_one", "add_remove")
# Strategies whose result is the plain mean of the updates, which the noise is calibrated for.
PLAIN_MEAN_STRATEGIES = ("FedAvg", "FedProx")


@dataclass
class CentralDpConfig(PrivacyConfig):
    """dp_server_fixed / dp_client_fixed: updates clipped to `clipping_norm`, Gaussian noise on the sum."""

    mechanism: str = "dp_client_fixed"
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0
    # replace_one: one site's data replaced (a fixed number of sites per round, the mean of the
    # replies); add_remove: one site added or removed (each site sampled with probability
    # sampling_rate, the sum divided by the expected count). See the README's privacy table.
    neighbours: str = "replace_one"
    sampling_rate: Optional[float] = None


class CentralDp(Mechanism):
    """What the four central-DP options share: rules, calibrated noise, guarantee and releases."""

    is_dp = True
    uniform_weights = True
    charged_to = FEDERATION
    # Whether each site clips its own update (a client mod), or the server clips it.
    clips_at_site: ClassVar[bool]
    # What C, the bound of one update, is.
    clip_is: ClassVar[str]

    # -- rules

    @classmethod
    def value_problems(cls, privacy: dict[str, Any]) -> Iterator[str]:
        yield from super().value_problems(privacy)
        yield from cls.clipping_problems(privacy)
        yield from _neighbour_problems(privacy)

    @classmethod
    def clipping_problems(cls, privacy: dict[str, Any]) -> Iterator[str]:
        """Problems of the clipping's own keys."""
        return iter(())

    @classmethod
    def sampled_per_round(cls, privacy: dict[str, Any], per_round: int, num_sites: int) -> float:
        if privacy.get("neighbours") == "add_remove" and is_number(privacy.get("sampling_rate")):
            return privacy["sampling_rate"] * num_sites  # the expected sample, Flower's default's base
        return per_round

    @classmethod
    def federated_problems(cls, privacy: dict[str, Any], federation: DictConfig, strategy: dict[str, Any], per_round: float) -> list[str]:
        """Whole sites are protected, and the noise is calibrated to the strategy's mean, sampled as
        the relation needs."""
        problems = []
        delta, num_sites = privacy.get("delta"), federation.num_sites
        if is_number(delta) and 0 < delta and delta >= 1 / num_sites:
            problems.append(f"privacy.delta: {delta} must be below 1/N = {1 / num_sites:.4g} for N = federation.num_sites ({num_sites})")
        kind = str(strategy.get("_target_", "")).rpartition(".")[2]
        if kind not in PLAIN_MEAN_STRATEGIES:
            problems.append(
                f"strategy: {cls.name} adds noise calibrated to the mean of the clipped updates, but {kind}'s result is "
                f"not that mean (use {' or '.join(PLAIN_MEAN_STRATEGIES)})"
            )
        if privacy.get("neighbours") == "add_remove":
            fraction = strategy.get("fraction_train")
            if is_number(fraction) and fraction != 1:
                problems.append(
                    f"strategy.fraction_train: {fraction} must be 1.0 with privacy.neighbours=add_remove: the server "
                    "then samples each site with probability privacy.sampling_rate itself"
                )
            if privacy.get("secagg") is not None:
                problems.append(
                    "privacy.neighbours: add_remove samples a random number of sites, which can be fewer than SecAgg+ "
                    "needs, and a round that cannot run shows whether a site took part; use replace_one with privacy.secagg"
                )
            if federation.min_successful_sites > 1:
                problems.append(
                    f"federation.min_successful_sites: {federation.min_successful_sites} stops a run whose Poisson sample "
                    "(privacy.neighbours=add_remove) holds fewer sites, as it may; set it to 1"
                )
        return problems

    @classmethod
    def secagg_problems(cls, privacy: dict[str, Any]) -> list[str]:
        if cls.clips_at_site:
            return []
        return [
            f"privacy.mechanism: {cls.name} clips each site's update on the server, which secure "
            "aggregation hides; use dp_client_fixed or dp_client_adaptive with privacy.secagg"
        ]

    # -- the run's sampling

    @property
    def neighbours(self) -> str:
        return self.settings.get("neighbours", "replace_one")

    @property
    def sampling_rate(self) -> float | None:
        """With add_remove: the probability with which each site trains a round."""
        return self.settings.get("sampling_rate") if self.neighbours == "add_remove" else None

    @property
    def expected_sites(self) -> float:
        """Sites a round trains: a fixed number, or on average q*N under Poisson sampling."""
        rate = self.sampling_rate
        return rate * self.plan.num_sites if rate is not None else self.plan.sites_per_round

    # -- server half

    def wrap_strategy(self, strategy: Any) -> Any:
        """Flower's DP wrapper, calibrated to the mean flip releases (see `flip.privacy.central`)."""
        from flip.privacy.central import CalibratedNoise, PoissonSampled

        plan = self.plan
        if self.sampling_rate is not None:
            observer = getattr(getattr(strategy, "flip", None), "observer", None)
            strategy = PoissonSampled(strategy, self.sampling_rate, plan.num_sites, plan.seed, observer)
        wrapper = self.flower_wrapper()
        calibrated = type(f"Flip{wrapper.__name__}", (CalibratedNoise, wrapper), {})
        wrapped = self.build_wrapper(calibrated, strategy)
        wrapped.flip_seed = plan.seed
        wrapped.flip_denominator = self.sampling_rate * plan.num_sites if self.sampling_rate is not None else None
        return wrapped

    def flower_wrapper(self) -> type:
        """Flower's wrapper class for this option."""
        raise NotImplementedError

    def build_wrapper(self, wrapper: type, strategy: Any) -> Any:
        """`wrapper` around `strategy`, with this option's settings."""
        raise NotImplementedError

    def reply_weights(self) -> dict[str, float]:
        return {UNIFORM_WEIGHT: 1.0}

    # -- guarantee and accounting

    @property
    def noise_multiplier(self) -> float:
        return self.settings.get("noise_multiplier")

    def guarantee(self) -> Guarantee:
        if self.neighbours == "add_remove":
            sensitivity = f"C/(qN): the sum of the clipped updates over the expected count q*N ({self.clip_is})"
            return Guarantee("add_remove", "site", POISSON, sensitivity, self.noise_to_sensitivity(), self.sampling_rate)
        sensitivity = f"2C/k: the mean of the k replies, each clipped to {self.clip_is}"
        return Guarantee("replace_one", "site", FIXED_SIZE, sensitivity, self.noise_to_sensitivity())

    def noise_to_sensitivity(self) -> float:
        """The noise of one round over the relation's sensitivity."""
        return self.update_share * self.noise_multiplier

    @property
    def update_share(self) -> float:
        """The update's noise std over its sensitivity, per unit of sigma: sigma*C/k over 2C/k, or
        sigma*C/(qN) over C/(qN)."""
        return 0.5 if self.neighbours == "replace_one" else 1.0

    def round_releases(self, sampled: list[int], population: int, replied: list[int]) -> dict[Any, Release]:
        """One release per round for the whole federation: `sampled` of `population` sites
        (fixed_size), or each at rate q (poisson). Under replace_one a round without replies
        releases nothing; a Poisson round always releases the noised model."""
        if not replied and self.neighbours != "add_remove":
            return {}
        z = self.noise_to_sensitivity()
        if self.neighbours == "add_remove":
            return {FEDERATION: Release(z, POISSON, self.plan.num_sites, sampling_rate=self.sampling_rate)}
        return {FEDERATION: Release(z, FIXED_SIZE, population, len(sampled))}


def _neighbour_problems(privacy: dict[str, Any]) -> Iterator[str]:
    """The neighbouring relation, and the sampling it needs."""
    if "neighbours" not in privacy:
        return
    neighbours, rate = privacy.get("neighbours"), privacy.get("sampling_rate")
    if neighbours not in NEIGHBOURS:
        yield f"privacy.neighbours: '{neighbours}' is not one of {', '.join(NEIGHBOURS)}"
    elif neighbours == "add_remove" and rate is None:
        yield (
            "privacy.sampling_rate: privacy.neighbours=add_remove needs it: the probability with which the server "
            "samples each site in every round (Poisson sampling, which the add-or-remove accounting assumes)"
        )
    elif neighbours == "replace_one" and rate is not None:
        yield (
            "privacy.sampling_rate: only privacy.neighbours=add_remove samples sites at a rate; replace_one trains a "
            "fixed number of sites per round (strategy.fraction_train, strategy.min_train_nodes)"
        )
    if is_number(rate) and not 0 < rate <= 1:
        yield f"privacy.sampling_rate: must be in (0, 1], got {rate}"


class FixedClippingDp(CentralDp):
    """Every update clipped to `clipping_norm`."""

    option = "central_dp"
    schema = CentralDpConfig
    positive = ("noise_multiplier", "clipping_norm", "max_epsilon")
    clip_is = "C = clipping_norm"

    def build_wrapper(self, wrapper: type, strategy: Any) -> Any:
        s = self.settings
        return wrapper(strategy, s["noise_multiplier"], s["clipping_norm"], self.expected_sites)


class DpServerFixed(FixedClippingDp):
    """dp_server_fixed: the server clips each update."""

    name = "dp_server_fixed"
    clips_at_site = False

    def flower_wrapper(self) -> type:
        from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

        return DifferentialPrivacyServerSideFixedClipping


class DpClientFixed(FixedClippingDp):
    """dp_client_fixed: each site clips its own update, so the server never holds an unclipped one."""

    name = "dp_client_fixed"
    clips_at_site = True

    def flower_wrapper(self) -> type:
        from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

        return DifferentialPrivacyClientSideFixedClipping

    def site_mods(self) -> list[Callable]:
        from flwr.clientapp.mod import fixedclipping_mod

        return [fixedclipping_mod]
