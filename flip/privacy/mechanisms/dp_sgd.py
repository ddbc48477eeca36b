"""dp_sgd: sample-level DP-SGD inside each site's training (Opacus, `flip.privacy.dp_sgd`).

The guarantee: one sample added or removed at a site; each step's sum of per-sample gradients,
each clipped to C, gets noise sigma*C, over Poisson-sampled batches. Each site accounts its own
samples and reports its epsilon; the run's is the largest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

from omegaconf import DictConfig

from flip.config.schema import BASELINE_MODES
from flip.privacy.guarantee import POISSON, Guarantee
from flip.privacy.mechanisms.base import Mechanism, PrivacyConfig, SiteTraining
from flip.privacy.mechanisms.rules import is_number


@dataclass
class DpSgdConfig(PrivacyConfig):
    """dp_sgd: sample-level DP-SGD inside each site's training (Opacus)."""

    mechanism: str = "dp_sgd"
    # Noise of each step relative to `clipping_norm`; null derives it from target_epsilon.
    noise_multiplier: Optional[float] = 1.0
    target_epsilon: Optional[float] = None
    # Per-sample gradient norm bound.
    clipping_norm: float = 1.0
    # Poisson sampling of batches, which the accountant's bound assumes.
    poisson_sampling: bool = True


class SampleLevelDp(Mechanism):
    name = option = "dp_sgd"
    schema = DpSgdConfig
    is_dp = True
    runs_locally = True
    site_models_protected = True
    positive = ("noise_multiplier", "clipping_norm", "max_epsilon", "target_epsilon")
    neighbours = "add_remove"

    @classmethod
    def value_problems(cls, privacy: dict[str, Any]) -> Iterator[str]:
        yield from super().value_problems(privacy)
        noise, target = privacy.get("noise_multiplier"), privacy.get("target_epsilon")
        if noise is None and target is None:
            yield "privacy.noise_multiplier: null needs privacy.target_epsilon to derive the noise from"
        elif noise is not None and target is not None:
            yield "privacy.target_epsilon: set privacy.noise_multiplier=null to derive the noise from the target"

    @classmethod
    def training_problems(cls, cfg: DictConfig, strategy: dict[str, Any]) -> list[str]:
        """DP-SGD's optimizer replaces each gradient with its clipped, noised sum: nothing may edit it."""
        problems = []
        if cfg.federation.mode not in BASELINE_MODES and is_number(strategy.get("proximal_mu")) and strategy["proximal_mu"] > 0:
            problems.append(
                "strategy.proximal_mu: FedProx's proximal term would be dropped by DP-SGD's optimizer "
                "(privacy=dp_sgd); set it to 0 or use strategy=fedavg"
            )
        if cfg.trainer.get("gradient_clip_val") is not None:
            problems.append(
                "trainer.gradient_clip_val: DP-SGD clips each sample's gradient itself (privacy.clipping_norm); set it to null"
            )
        adjustment = cfg.model.get("logit_adjustment")
        if is_number(adjustment) and adjustment != 0:
            problems.append(
                "model.logit_adjustment: it trains on the site's exact label counts, which DP-SGD does not protect; set it to 0"
            )
        return problems

    def site_training(self, rounds_before: int = 0, rounds_total: int = 1, epsilon_cap: float | None = None) -> SiteTraining:
        """Opacus's DP-SGD for this round; a site keeps no state, so it recomputes the rounds before."""
        from flip.privacy.dp_sgd import DpSgd

        callback = DpSgd({**self.settings, "max_epsilon": epsilon_cap}, rounds_before=rounds_before, rounds_total=rounds_total)
        return SiteTraining((callback,), callback.spent)

    @property
    def noise_multiplier(self) -> float | None:
        return self.settings.get("noise_multiplier")  # null with target_epsilon: each site derives its own

    def guarantee(self) -> Guarantee:
        return Guarantee(
            "add_remove", "sample", POISSON, "C: one sample's gradient, clipped to C = clipping_norm (Opacus)",
            self.noise_multiplier,
        )

    def reported_delta(self, site_deltas: dict[int, float]) -> float | None:
        """`privacy.delta`, or null: the largest of the sites' own 1/n^1.1."""
        if self.settings.get("delta") is None:
            return max(site_deltas.values(), default=None)
        return self.plan.delta
