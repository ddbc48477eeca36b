"""SecAgg+, an add-on to any mechanism (`privacy.secagg`): its schema, its rules and both halves.

The halves are built from Flower's SecAgg+ through flip's adapter (`flip.privacy.secagg`): the
server's grid masks every training exchange, and each site answers the protocol's steps in its
ClientApp. SecAgg+ hides each site's update from the server; it is not differential privacy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from flip.privacy.mechanisms.rules import is_number

# Strategies whose aggregate is a weighted mean of the updates: the only ones a secure sum can feed.
MEAN_STRATEGIES = ("FedAvg", "FedProx", "FedAvgM", "FedAdam", "FedYogi", "FedAdagrad")
# Train reply metrics: the weight of this site's update in the secure sum (default: num-examples).
WEIGHT_KEY = "secagg-weight"


@dataclass
class SecAggConfig:
    """SecAgg+ (Flower's workflow and client mod): the server only ever sees the sum of updates."""

    # Shares each site's secrets are split into; null: one per sampled site.
    num_shares: Optional[int] = None
    # Shares needed to rebuild a dropped site's mask; at least 2 and at most the sampled sites.
    reconstruction_threshold: int = 2
    # Weights are clipped to [-clipping_range, clipping_range] and quantised to quantization_range levels.
    clipping_range: float = 8.0
    quantization_range: int = 4194304
    modulus_range: int = 4294967296
    # Largest per-site weight (training examples) the quantised sum can carry.
    max_weight: float = 1000.0


class SecAggPlus:
    """SecAgg+ on top of a run's mechanism, from its `privacy.secagg` settings (schema: SecAggConfig)."""

    def __init__(self, settings: dict[str, Any], seed: int):
        self.settings = settings
        self.seed = seed

    @staticmethod
    def local_problems() -> list[str]:
        return ["privacy.secagg: secure aggregation needs a federation (federation=simulation)"]

    @staticmethod
    def problems(secagg: dict[str, Any], strategy: dict[str, Any], per_round: float) -> list[str]:
        """What the strategy, the sites per round and the protocol's own settings must satisfy."""
        problems = []
        kind = str(strategy.get("_target_", "")).rpartition(".")[2]
        if kind not in MEAN_STRATEGIES:
            problems.append(
                f"strategy: {kind} needs each site's update, but secure aggregation only reveals their sum "
                f"(use one of {', '.join(MEAN_STRATEGIES)})"
            )
        threshold, shares = secagg.get("reconstruction_threshold"), secagg.get("num_shares")
        if per_round < 2:
            problems.append(f"privacy.secagg: secure aggregation needs at least 2 sites per round, a round trains {per_round}")
        if is_number(threshold):
            if threshold < 2:
                problems.append(f"privacy.secagg.reconstruction_threshold: must be at least 2, got {threshold}")
            elif threshold > per_round:
                problems.append(
                    f"privacy.secagg.reconstruction_threshold: {threshold} is more than the {per_round} sites sampled per round"
                )
        if is_number(shares):
            if shares < 3:
                problems.append(f"privacy.secagg.num_shares: must be at least 3 (or null for every sampled site), got {shares}")
            elif shares > per_round:
                problems.append(f"privacy.secagg.num_shares: {shares} is more than the {per_round} sites sampled per round")
            elif is_number(threshold) and threshold >= shares:
                problems.append(f"privacy.secagg.reconstruction_threshold: {threshold} must be less than privacy.secagg.num_shares ({shares})")
        for key in ("clipping_range", "max_weight"):
            if is_number(secagg.get(key)) and secagg[key] <= 0:
                problems.append(f"privacy.secagg.{key}: must be positive, got {secagg[key]}")
        quantization, modulus = secagg.get("quantization_range"), secagg.get("modulus_range")
        if is_number(quantization) and quantization <= 0:
            problems.append(f"privacy.secagg.quantization_range: must be positive, got {quantization}")
        if is_number(modulus) and is_number(quantization):
            if modulus <= quantization or modulus & (modulus - 1):
                problems.append(f"privacy.secagg.modulus_range: must be a power of 2 above quantization_range, got {modulus}")
        return problems

    # -- server half

    def wrap_grid(self, grid: Any, timeout: float | None) -> Any:
        """The grid the strategy talks through, running every batch of train messages as one SecAgg+ round."""
        from flip.privacy.secagg import SecAggPlusGrid

        return SecAggPlusGrid(grid, self.settings, seed=str(self.seed), timeout=timeout)

    # -- site half (the protocol's steps are answered by the ClientApp through `flip.privacy.secagg`)

    @staticmethod
    def reply_weights(uniform: bool) -> dict[str, float]:
        """The weight a site gives its update in the secure sum: 1 when the mechanism weighs sites equally."""
        return {WEIGHT_KEY: 1.0} if uniform else {}
