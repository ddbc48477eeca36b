"""local_dp: every site clips its update and adds Gaussian noise before sending it (Flower's LocalDpMod).

The guarantee: one site's data replaced moves its release, the update clipped to C, by at most
2C; nothing is sampled, so every round a site trains is a release of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from flip.privacy.guarantee import NO_AMPLIFICATION, Guarantee, Release
from flip.privacy.mechanisms.base import SITES, Mechanism, PrivacyConfig
from flip.privacy.mechanisms.rules import is_number


@dataclass
class LocalDpConfig(PrivacyConfig):
    """local_dp: every site clips its update and adds Gaussian noise before sending it (Flower's LocalDpMod)."""

    mechanism: str = "local_dp"
    clipping_norm: float = 1.0
    # LocalDpMod's calibration: noise std = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon. The
    # sensitivity must cover a site's data being replaced (2 x clipping_norm); the classic formula
    # proves (epsilon, delta) only for epsilon < 1, so flip reports the RDP epsilon of that noise.
    sensitivity: float = 2.0
    epsilon: float = 10.0
    delta: Optional[float] = 1e-5


class LocalDp(Mechanism):
    name = option = "local_dp"
    schema = LocalDpConfig
    is_dp = True
    positive = ("clipping_norm", "sensitivity", "epsilon", "max_epsilon")
    neighbours = "replace_one"
    charged_to = SITES
    site_models_protected = True

    @classmethod
    def value_problems(cls, privacy: dict[str, Any]) -> Iterator[str]:
        yield from super().value_problems(privacy)
        clip, sensitivity = privacy.get("clipping_norm"), privacy.get("sensitivity")
        if is_number(clip) and is_number(sensitivity) and sensitivity < 2 * clip:
            yield (
                f"privacy.sensitivity: {sensitivity} is below 2 x privacy.clipping_norm ({2 * clip:g}), how far a site's "
                "clipped update can move when its data is replaced; the noise would not give the stated epsilon"
            )

    def site_mods(self) -> list[Callable]:
        from flwr.clientapp.mod import LocalDpMod

        s = self.settings
        return [LocalDpMod(s["clipping_norm"], s["sensitivity"], s["epsilon"], s["delta"])]

    @property
    def noise_std(self) -> float:
        """LocalDpMod's noise std: the classic Gaussian calibration of its (sensitivity, epsilon, delta)."""
        s = self.settings
        return s["sensitivity"] * math.sqrt(2 * math.log(1.25 / s["delta"])) / s["epsilon"]

    @property
    def noise_multiplier(self) -> float:
        return self.noise_std / self.settings["clipping_norm"]

    def guarantee(self) -> Guarantee:
        clip = self.settings["clipping_norm"]
        return Guarantee(
            "replace_one", "site", NO_AMPLIFICATION, "2C: one site's update, clipped to C = clipping_norm",
            self.noise_std / (2 * clip),
        )

    def round_releases(self, sampled: list[int], population: int, replied: list[int]) -> dict[Any, Release]:
        """One release for each site that trained, with no amplification."""
        release = Release(self.guarantee().noise_to_sensitivity, NO_AMPLIFICATION)
        return {site: release for site in replied}
