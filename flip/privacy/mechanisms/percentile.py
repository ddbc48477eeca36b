"""percentile: the privacy filter of FLIP and NVFlare (`flip.privacy.percentile`), a heuristic, not DP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from flip.privacy.mechanisms.base import Mechanism, PrivacyConfig
from flip.privacy.mechanisms.rules import is_number


@dataclass
class PercentileConfig(PrivacyConfig):
    """percentile: share only the largest update entries, clipped (a heuristic, not DP)."""

    mechanism: str = "percentile"
    # Entries whose |update| is below this percentile of all |update| entries are not sent.
    percentile: float = 10.0
    # Sent entries are clipped to [-gamma, gamma].
    gamma: float = 0.01


class Percentile(Mechanism):
    name = option = "percentile"
    schema = PercentileConfig
    positive = ("max_epsilon", "gamma")

    @classmethod
    def value_problems(cls, privacy: dict[str, Any]) -> Iterator[str]:
        yield from super().value_problems(privacy)
        percentile = privacy.get("percentile")
        if is_number(percentile) and not 0 <= percentile < 100:
            yield f"privacy.percentile: must be in [0, 100), got {percentile}"

    def site_mods(self) -> list[Callable]:
        from flip.privacy.percentile import PercentileFilterMod

        return [PercentileFilterMod(self.settings["percentile"], self.settings["gamma"])]
