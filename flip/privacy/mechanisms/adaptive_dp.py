"""Central DP with adaptive clipping: the clipping norm follows `target_clipped_quantile` of the
update norms (Andrew et al. 2021), and part of the noise goes to the count of clipped updates.

Two options, one class each: dp_server_adaptive and dp_client_adaptive. Everything else is central
DP's (`flip.privacy.mechanisms.central_dp`). The count is released with the update, from the same
sample: one site moves it by 1 (replace_one) or 1/2 (add_remove, whose bits are centred); the
update's own noise multiplier is Flower's (sigma^-2 - (2 clipped_count_stddev)^-2)^-1/2, and the
two are one Gaussian release with multiplier (z_update^-2 + z_count^-2)^-1/2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from omegaconf import DictConfig

from flip.privacy.guarantee import combined
from flip.privacy.mechanisms.base import PrivacyConfig
from flip.privacy.mechanisms.central_dp import CentralDp
from flip.privacy.mechanisms.rules import is_number


@dataclass
class AdaptiveDpConfig(PrivacyConfig):
    """dp_server_adaptive / dp_client_adaptive: the clipping norm follows a quantile of update norms."""

    mechanism: str = "dp_client_adaptive"
    noise_multiplier: float = 0.5
    initial_clipping_norm: float = 0.1
    target_clipped_quantile: float = 0.5
    clip_norm_lr: float = 0.2
    # Noise on the count of clipped updates; null is Flower's default (sampled sites / 20).
    clipped_count_stddev: Optional[float] = None
    neighbours: str = "replace_one"
    sampling_rate: Optional[float] = None


class AdaptiveClippingDp(CentralDp):
    """A clipping norm that follows `target_clipped_quantile` of the update norms (Andrew et al.
    2021); part of the noise goes to the count of clipped updates."""

    option = "adaptive_dp"
    schema = AdaptiveDpConfig
    positive = ("noise_multiplier", "initial_clipping_norm", "clip_norm_lr", "max_epsilon")
    clip_is = "C = this round's clipping norm"

    @classmethod
    def clipping_problems(cls, privacy: dict[str, Any]) -> Iterator[str]:
        quantile = privacy.get("target_clipped_quantile")
        if is_number(quantile) and not 0 <= quantile <= 1:
            yield f"privacy.target_clipped_quantile: must be in [0, 1], got {quantile}"
        if is_number(privacy.get("clipped_count_stddev")) and privacy["clipped_count_stddev"] < 0:
            yield f"privacy.clipped_count_stddev: must be non-negative, got {privacy['clipped_count_stddev']}"

    @classmethod
    def federated_problems(cls, privacy: dict[str, Any], federation: DictConfig, strategy: dict[str, Any], per_round: float) -> list[str]:
        """Flower splits the noise between the update and the clipped count; the split must exist."""
        problems = super().federated_problems(privacy, federation, strategy, per_round)
        noise, stddev = privacy.get("noise_multiplier"), privacy.get("clipped_count_stddev")
        if not is_number(noise) or noise <= 0:
            return problems
        effective = stddev if is_number(stddev) else per_round / 20
        if noise >= 2 * effective:
            source = "privacy.clipped_count_stddev" if is_number(stddev) else f"null (sites per round / 20 = {effective:g})"
            problems.append(
                f"privacy.clipped_count_stddev: {source} is too small for privacy.noise_multiplier={noise}; "
                f"adaptive clipping needs noise_multiplier < 2 x clipped_count_stddev"
            )
        return problems

    def build_wrapper(self, wrapper: type, strategy: Any) -> Any:
        s = self.settings
        return wrapper(
            strategy,
            s["noise_multiplier"],
            self.expected_sites,
            initial_clipping_norm=s["initial_clipping_norm"],
            target_clipped_quantile=s["target_clipped_quantile"],
            clip_norm_lr=s["clip_norm_lr"],
            clipped_count_stddev=s["clipped_count_stddev"],
        )

    def noise_to_sensitivity(self) -> float:
        """The update and the clipped count, as one Gaussian release of the same sample."""
        from flwr.supercore.differential_privacy import compute_adaptive_noise_params

        count_stddev, update_noise = compute_adaptive_noise_params(
            self.noise_multiplier, self.expected_sites, self.settings.get("clipped_count_stddev")
        )
        # One site moves the clipped count by 1, or by 1/2 once add_remove centres the bits.
        count_sensitivity = 1.0 if self.neighbours == "replace_one" else 0.5
        return combined(self.update_share * update_noise, count_stddev / count_sensitivity)


class DpServerAdaptive(AdaptiveClippingDp):
    """dp_server_adaptive: the server clips each update, to an adaptive norm."""

    name = "dp_server_adaptive"
    clips_at_site = False

    def flower_wrapper(self) -> type:
        from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping

        return DifferentialPrivacyServerSideAdaptiveClipping


class DpClientAdaptive(AdaptiveClippingDp):
    """dp_client_adaptive: each site clips its own update to the norm the server sends."""

    name = "dp_client_adaptive"
    clips_at_site = True

    def flower_wrapper(self) -> type:
        from flwr.serverapp.strategy import DifferentialPrivacyClientSideAdaptiveClipping

        return DifferentialPrivacyClientSideAdaptiveClipping

    def site_mods(self) -> list[Callable]:
        from flwr.clientapp.mod import adaptiveclipping_mod

        return [adaptiveclipping_mod]
