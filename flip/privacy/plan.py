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
from flip.federation.strategy import seeded_numpy
from flip.privacy.percentile import PercentileFilterMod

CENTRAL_DP = {
    "dp_server_fixed": DifferentialPrivacyServerSideFixedClipping,
    "dp_client_fixed": DifferentialPrivacyClientSideFixedClipping,
    "dp_server_adaptive": DifferentialPrivacyServerSideAdaptiveClipping,
    "dp_client_adaptive": DifferentialPrivacyClientSideAdaptiveClipping,
}
DP_MECHANISMS = (*CENTRAL_DP, "local_dp", "dp_sgd")
# Metric key sites fill with 1.0 under central DP: every site then weighs the same in the mean,
# which is what the noise (noise_multiplier * clipping_norm / sites) is calibrated for.
UNIFORM_WEIGHT = "dp-weight"


class SeededNoise:
    """Put in front of a Flower DP wrapper: its noise is drawn from a generator seeded per round."""

    flip_seed: int

    def aggregate_train(self, server_round, replies):
        with seeded_numpy(f"{self.flip_seed}-noise-{server_round}"):
            return super().aggregate_train(server_round, replies)


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
        """The strategy with the server half of the mechanism around it."""
        wrapper = CENTRAL_DP.get(self.mechanism)
        if wrapper is None:
            return strategy
        seeded = type(f"Flip{wrapper.__name__}", (SeededNoise, wrapper), {})
        s = self.settings
        if "fixed" in self.mechanism:
            wrapped = seeded(strategy, s["noise_multiplier"], s["clipping_norm"], self.sites_per_round)
        else:
            wrapped = seeded(
                strategy,
                s["noise_multiplier"],
                self.sites_per_round,
                initial_clipping_norm=s["initial_clipping_norm"],
                target_clipped_quantile=s["target_clipped_quantile"],
                clip_norm_lr=s["clip_norm_lr"],
                clipped_count_stddev=s["clipped_count_stddev"],
            )
        wrapped.flip_seed = self.seed
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
