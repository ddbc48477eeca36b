"""One privacy option, turned into both halves of its mechanism.

The server and every site build the same `PrivacyPlan` from the same config, so the server's
strategy wrapper and the sites' client mods and training hooks cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from flwr.clientapp.mod import LocalDpMod, adaptiveclipping_mod, fixedclipping_mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from omegaconf import DictConfig, OmegaConf

from flip.config.strategies import sites_per_round
from flip.privacy.central import CalibratedNoise, PoissonSampled
from flip.privacy.percentile import PercentileFilterMod

CENTRAL_DP = {
    "dp_server_fixed": DifferentialPrivacyServerSideFixedClipping,
    "dp_client_fixed": DifferentialPrivacyClientSideFixedClipping,
    "dp_server_adaptive": DifferentialPrivacyServerSideAdaptiveClipping,
    "dp_client_adaptive": DifferentialPrivacyClientSideAdaptiveClipping,
}
DP_MECHANISMS = (*CENTRAL_DP, "local_dp", "dp_sgd")
# Metric key sites fill with 1.0 under central DP: every site then weighs the same in the mean,
# which is what the noise (noise_multiplier * clipping_norm / replies) is calibrated for.
UNIFORM_WEIGHT = "dp-weight"


@dataclass(frozen=True)
class PrivacyPlan:
    """What a privacy option means for the server and for each site."""

    settings: dict[str, Any]
    num_sites: int
    sites_per_round: int
    seed: int

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "PrivacyPlan":
        settings = OmegaConf.to_container(cfg.privacy, resolve=True)
        strategy = OmegaConf.to_container(cfg.strategy, resolve=True)
        num_sites = int(cfg.federation.num_sites)
        return cls(settings, num_sites, sites_per_round(strategy, num_sites), int(cfg.seed))

    @property
    def mechanism(self) -> str:
        return self.settings["mechanism"]

    @property
    def secagg(self) -> dict[str, Any] | None:
        return self.settings.get("secagg")

    @property
    def is_dp(self) -> bool:
        return self.mechanism in DP_MECHANISMS

    @property
    def uniform_weights(self) -> bool:
        return self.mechanism in CENTRAL_DP

    @property
    def noise_multiplier(self) -> float | None:
        return self.settings.get("noise_multiplier")

    @property
    def neighbours(self) -> str | None:
        """The neighbouring relation: central DP's setting; local_dp: replace_one; dp_sgd: add_remove."""
        if self.mechanism in CENTRAL_DP:
            return self.settings.get("neighbours", "replace_one")
        return {"local_dp": "replace_one", "dp_sgd": "add_remove"}.get(self.mechanism)

    @property
    def sampling_rate(self) -> float | None:
        """Central DP with add_remove: the probability with which each site trains a round."""
        return self.settings.get("sampling_rate") if self.neighbours == "add_remove" and self.mechanism in CENTRAL_DP else None

    @property
    def expected_sites(self) -> float:
        """Sites a round trains: a fixed number, or on average q*N under Poisson sampling."""
        rate = self.sampling_rate
        return rate * self.num_sites if rate is not None else self.sites_per_round

    @property
    def delta(self) -> float:
        """The delta epsilon is reported at (dp_sgd sites pick their own from their sample count)."""
        if self.settings.get("delta") is not None:
            return float(self.settings["delta"])
        return min(1e-5, 1.0 / self.num_sites**1.1)

    def describe(self) -> str:
        parts = [self.mechanism if self.mechanism != "none" else "no DP"]
        if self.secagg is not None:
            parts.append("SecAgg+")
        return " + ".join(parts)

    # -- server half

    def wrap_strategy(self, strategy: Strategy) -> Strategy:
        """The strategy with the server half of the mechanism around it (see `flip.privacy.central`)."""
        wrapper = CENTRAL_DP.get(self.mechanism)
        if wrapper is None:
            return strategy
        if self.sampling_rate is not None:
            observer = getattr(getattr(strategy, "flip", None), "observer", None)
            strategy = PoissonSampled(strategy, self.sampling_rate, self.num_sites, self.seed, observer)
        calibrated = type(f"Flip{wrapper.__name__}", (CalibratedNoise, wrapper), {})
        s = self.settings
        if "fixed" in self.mechanism:
            wrapped = calibrated(strategy, s["noise_multiplier"], s["clipping_norm"], self.expected_sites)
        else:
            wrapped = calibrated(
                strategy,
                s["noise_multiplier"],
                self.expected_sites,
                initial_clipping_norm=s["initial_clipping_norm"],
                target_clipped_quantile=s["target_clipped_quantile"],
                clip_norm_lr=s["clip_norm_lr"],
                clipped_count_stddev=s["clipped_count_stddev"],
            )
        wrapped.flip_seed = self.seed
        wrapped.flip_denominator = self.sampling_rate * self.num_sites if self.sampling_rate is not None else None
        return wrapped

    def wrap_grid(self, grid: Any, timeout: float | None) -> Any:
        """The grid the strategy talks through: SecAgg+ masks every training exchange."""
        if self.secagg is None:
            return grid
        from flip.privacy.secagg import SecAggPlusGrid

        return SecAggPlusGrid(grid, self.secagg, seed=str(self.seed), timeout=timeout)

    # -- site half

    def train_mods(self) -> list[Callable]:
        """Flower client mods around a site's training, outermost first."""
        s = self.settings
        if self.mechanism in ("dp_client_fixed",):
            return [fixedclipping_mod]
        if self.mechanism in ("dp_client_adaptive",):
            return [adaptiveclipping_mod]
        if self.mechanism == "local_dp":
            return [LocalDpMod(s["clipping_norm"], s["sensitivity"], s["epsilon"], s["delta"])]
        if self.mechanism == "percentile":
            return [PercentileFilterMod(s["percentile"], s["gamma"])]
        return []

    def reply_weights(self) -> dict[str, float]:
        """Extra weight keys a site adds to its training metrics."""
        if not self.uniform_weights:
            return {}
        return {UNIFORM_WEIGHT: 1.0, **({"secagg-weight": 1.0} if self.secagg is not None else {})}
