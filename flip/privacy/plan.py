"""One privacy option, turned into both halves of its mechanism.

The server and every site build the same `PrivacyPlan` from the same config: it picks the
mechanism's class by `privacy.mechanism` (`flip.privacy.mechanisms`) and adds SecAgg+ when
`privacy.secagg` asks for it, so the server's strategy wrapper and the sites' client mods and
training hooks cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from flip.config.schema import BASELINE_MODES
from flip.config.strategies import sites_per_round
from flip.privacy.mechanisms import MECHANISMS
from flip.privacy.mechanisms.base import Mechanism, SiteTraining
from flip.privacy.mechanisms.central_dp import UNIFORM_WEIGHT
from flip.privacy.mechanisms.secagg import SecAggPlus

__all__ = ["PrivacyPlan", "UNIFORM_WEIGHT"]


@dataclass(frozen=True)
class PrivacyPlan:
    """What a privacy option means for the server and for each site."""

    settings: dict[str, Any]
    num_sites: int
    sites_per_round: int
    seed: int

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "PrivacyPlan":
        """The plan of a run; a baseline (local or pooled) trains as one site."""
        settings = OmegaConf.to_container(cfg.privacy, resolve=True)
        if cfg.federation.mode in BASELINE_MODES:
            return cls(settings, 1, 1, int(cfg.seed))
        strategy = OmegaConf.to_container(cfg.strategy, resolve=True)
        num_sites = int(cfg.federation.num_sites)
        return cls(settings, num_sites, sites_per_round(strategy, num_sites), int(cfg.seed))

    @cached_property
    def mechanism(self) -> Mechanism:
        return MECHANISMS[self.settings["mechanism"]](self)

    @cached_property
    def secure_aggregation(self) -> SecAggPlus | None:
        return SecAggPlus(self.secagg, self.seed) if self.secagg is not None else None

    @property
    def secagg(self) -> dict[str, Any] | None:
        return self.settings.get("secagg")

    @property
    def is_dp(self) -> bool:
        return self.mechanism.is_dp

    @property
    def uniform_weights(self) -> bool:
        return self.mechanism.uniform_weights

    @property
    def max_epsilon(self) -> float | None:
        return self.settings.get("max_epsilon")

    @property
    def delta(self) -> float:
        """The delta epsilon is reported at (dp_sgd sites pick their own from their sample count)."""
        if self.settings.get("delta") is not None:
            return float(self.settings["delta"])
        return min(1e-5, 1.0 / self.num_sites**1.1)

    def describe(self) -> str:
        parts = [self.mechanism.name if self.mechanism.name != "none" else "no DP"]
        if self.secagg is not None:
            parts.append("SecAgg+")
        return " + ".join(parts)

    # -- server half

    def wrap_strategy(self, strategy: Any) -> Any:
        """The strategy with the server half of the mechanism around it."""
        return self.mechanism.wrap_strategy(strategy)

    def wrap_grid(self, grid: Any, timeout: float | None) -> Any:
        """The grid the strategy talks through: SecAgg+ masks every training exchange."""
        if self.secure_aggregation is None:
            return grid
        return self.secure_aggregation.wrap_grid(grid, timeout)

    # -- site half

    def train_mods(self) -> list[Callable]:
        """Flower client mods around a site's training, outermost first."""
        return self.mechanism.site_mods()

    def site_training(self, rounds_before: int = 0, rounds_total: int = 1, epsilon_cap: float | None = None) -> SiteTraining:
        """What the mechanism adds to a site's training (DP-SGD's callback): the one place a local
        run and a federated site get it from."""
        return self.mechanism.site_training(rounds_before, rounds_total, epsilon_cap)

    def reply_weights(self) -> dict[str, float]:
        """Extra weight keys a site adds to its training metrics."""
        weights = self.mechanism.reply_weights()
        if self.secure_aggregation is not None:
            weights.update(self.secure_aggregation.reply_weights(self.uniform_weights))
        return weights
