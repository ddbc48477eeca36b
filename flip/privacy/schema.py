"""Schemas for the options in ``conf/privacy/`` and for a site's own privacy policy.

Every option names one `mechanism` and may add secure aggregation (`secagg`). The option is
turned into one plan (`flip.privacy.plan`) that both the server and every site build from,
so the two halves of a mechanism cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

from omegaconf import DictConfig, OmegaConf

from flip.config.strategies import sites_per_round

MECHANISMS = (
    "none",
    "dp_server_fixed",
    "dp_server_adaptive",
    "dp_client_fixed",
    "dp_client_adaptive",
    "local_dp",
    "dp_sgd",
    "percentile",
)


CENTRAL_DP = ("dp_server_fixed", "dp_server_adaptive", "dp_client_fixed", "dp_client_adaptive")
DP = (*CENTRAL_DP, "local_dp", "dp_sgd")
# Neighbouring federations central DP can protect: one site's data replaced by any other
# (fixed-size sampling), or one site added or removed (Poisson sampling, fixed denominator).
NEIGHBOURS = ("replace_one", "add_remove")
# Strategies whose aggregate is a weighted mean of the updates: the only ones a secure sum can feed.
MEAN_STRATEGIES = ("FedAvg", "FedProx", "FedAvgM", "FedAdam", "FedYogi", "FedAdagrad")
# Strategies whose result is the plain mean of the updates, which central DP's noise is calibrated for.
PLAIN_MEAN_STRATEGIES = ("FedAvg", "FedProx")


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


@dataclass
class PrivacyConfig:
    """Keys every privacy option has."""

    mechanism: str = "none"
    # Secure aggregation on top of the mechanism (null: off).
    secagg: Optional[SecAggConfig] = None
    # Accounting: delta of the reported (epsilon, delta); null picks min(1e-5, 1/N^1.1) (N: sites or samples).
    delta: Optional[float] = None
    # Stop the run before a round that would spend more than this epsilon (null: no budget).
    max_epsilon: Optional[float] = None


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


@dataclass
class PercentileConfig(PrivacyConfig):
    """percentile: share only the largest update entries, clipped (a heuristic, not DP)."""

    mechanism: str = "percentile"
    # Entries whose |update| is below this percentile of all |update| entries are not sent.
    percentile: float = 10.0
    # Sent entries are clipped to [-gamma, gamma].
    gamma: float = 0.01


@dataclass
class SitePolicy:
    """What one site accepts; kept in the site's own config, never in a recipe."""

    # Refuse runs without differential privacy / without secure aggregation.
    require_dp: bool = False
    require_secure_aggregation: bool = False
    # Mechanisms this site accepts (null: any that the other rules allow).
    allowed_mechanisms: Optional[List[str]] = None
    # Largest epsilon the whole run may spend on this site's data (null: no limit).
    max_epsilon: Optional[float] = None
    # Smallest noise multiplier accepted for noise-adding mechanisms: noise std / clipping norm as
    # configured (local_dp: LocalDpMod's std / clipping_norm), whatever the neighbouring relation;
    # max_epsilon is the rule that follows the relation.
    min_noise_multiplier: Optional[float] = None
    # k: below this many samples in a split the site sends no update and no metrics of it.
    min_cohort: int = 1


SCHEMAS: Dict[str, type] = {
    "privacy/none": PrivacyConfig,
    "privacy/central_dp": CentralDpConfig,
    "privacy/adaptive_dp": AdaptiveDpConfig,
    "privacy/local_dp": LocalDpConfig,
    "privacy/dp_sgd": DpSgdConfig,
    "privacy/percentile": PercentileConfig,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def privacy_problems(cfg: DictConfig) -> list[str]:
    """Every cross-key problem of the `privacy` node, given the federation and strategy."""
    privacy = OmegaConf.to_container(cfg.privacy, resolve=True)
    mechanism = privacy.get("mechanism")
    if mechanism not in MECHANISMS:
        return [f"privacy.mechanism: '{mechanism}' is not a privacy mechanism (available: {', '.join(MECHANISMS)})"]
    federation = cfg.federation
    strategy = OmegaConf.to_container(cfg.strategy, resolve=True)
    per_round = sites_per_round(strategy, federation.num_sites)
    problems = list(_value_problems(privacy))
    if federation.mode == "local":
        if mechanism not in ("none", "dp_sgd"):
            problems.append(
                f"privacy.mechanism: {mechanism} protects what sites send to a server; a local run sends nothing "
                "(use federation=simulation, or privacy=dp_sgd for a private local model)"
            )
        if privacy.get("secagg") is not None:
            problems.append("privacy.secagg: secure aggregation needs a federation (federation=simulation)")
    else:
        problems += _delta_problems(privacy, federation.num_sites)
        problems += _central_problems(privacy, strategy)
        if privacy.get("neighbours") == "add_remove" and federation.min_successful_sites > 1:
            problems.append(
                f"federation.min_successful_sites: {federation.min_successful_sites} stops a run whose Poisson sample "
                "(privacy.neighbours=add_remove) holds fewer sites, as it may; set it to 1"
            )
        if privacy.get("neighbours") == "add_remove" and _is_number(privacy.get("sampling_rate")):
            per_round = privacy["sampling_rate"] * federation.num_sites  # the expected sample, Flower's default's base
        problems += _adaptive_problems(privacy, per_round)
        if privacy.get("secagg") is not None:
            problems += _secagg_problems(privacy, strategy, per_round)
    if mechanism == "dp_sgd":
        problems += _dp_sgd_problems(cfg, strategy)
    if privacy.get("max_epsilon") is not None and mechanism not in DP:
        problems.append(f"privacy.max_epsilon: {mechanism} is not differential privacy, so there is no epsilon to budget")
    return problems


_POSITIVE = (
    "noise_multiplier", "clipping_norm", "initial_clipping_norm", "clip_norm_lr", "sensitivity",
    "epsilon", "max_epsilon", "target_epsilon", "gamma",
)


def _value_problems(privacy: dict[str, Any]) -> Iterator[str]:
    for key in _POSITIVE:
        value = privacy.get(key)
        if _is_number(value) and value <= 0:
            yield f"privacy.{key}: must be positive, got {value}"
    delta = privacy.get("delta")
    if _is_number(delta) and not 0 < delta < 1:
        yield f"privacy.delta: must be in (0, 1), got {delta}"
    quantile = privacy.get("target_clipped_quantile")
    if _is_number(quantile) and not 0 <= quantile <= 1:
        yield f"privacy.target_clipped_quantile: must be in [0, 1], got {quantile}"
    if _is_number(privacy.get("clipped_count_stddev")) and privacy["clipped_count_stddev"] < 0:
        yield f"privacy.clipped_count_stddev: must be non-negative, got {privacy['clipped_count_stddev']}"
    percentile = privacy.get("percentile")
    if _is_number(percentile) and not 0 <= percentile < 100:
        yield f"privacy.percentile: must be in [0, 100), got {percentile}"
    if privacy["mechanism"] == "dp_sgd":
        noise, target = privacy.get("noise_multiplier"), privacy.get("target_epsilon")
        if noise is None and target is None:
            yield "privacy.noise_multiplier: null needs privacy.target_epsilon to derive the noise from"
        elif noise is not None and target is not None:
            yield "privacy.target_epsilon: set privacy.noise_multiplier=null to derive the noise from the target"
    if privacy["mechanism"] == "local_dp":
        clip, sensitivity = privacy.get("clipping_norm"), privacy.get("sensitivity")
        if _is_number(clip) and _is_number(sensitivity) and sensitivity < 2 * clip:
            yield (
                f"privacy.sensitivity: {sensitivity} is below 2 x privacy.clipping_norm ({2 * clip:g}), how far a site's "
                "clipped update can move when its data is replaced; the noise would not give the stated epsilon"
            )
    yield from _neighbour_problems(privacy)


def _neighbour_problems(privacy: dict[str, Any]) -> Iterator[str]:
    """The neighbouring relation of central DP, and the sampling it needs."""
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
    if _is_number(rate) and not 0 < rate <= 1:
        yield f"privacy.sampling_rate: must be in (0, 1], got {rate}"


def _dp_sgd_problems(cfg: DictConfig, strategy: dict[str, Any]) -> list[str]:
    """DP-SGD's optimizer replaces each gradient with its clipped, noised sum: nothing may edit it."""
    problems = []
    if cfg.federation.mode != "local" and _is_number(strategy.get("proximal_mu")) and strategy["proximal_mu"] > 0:
        problems.append(
            "strategy.proximal_mu: FedProx's proximal term would be dropped by DP-SGD's optimizer "
            "(privacy=dp_sgd); set it to 0 or use strategy=fedavg"
        )
    if cfg.trainer.get("gradient_clip_val") is not None:
        problems.append(
            "trainer.gradient_clip_val: DP-SGD clips each sample's gradient itself (privacy.clipping_norm); set it to null"
        )
    adjustment = cfg.model.get("logit_adjustment")
    if _is_number(adjustment) and adjustment != 0:
        problems.append(
            "model.logit_adjustment: it trains on the site's exact label counts, which DP-SGD does not protect; set it to 0"
        )
    return problems


def _delta_problems(privacy: dict[str, Any], num_sites: int) -> list[str]:
    """Central DP protects whole sites: delta must be below 1/N for N sites."""
    delta = privacy.get("delta")
    if privacy["mechanism"] in CENTRAL_DP and _is_number(delta) and 0 < delta and delta >= 1 / num_sites:
        return [f"privacy.delta: {delta} must be below 1/N = {1 / num_sites:.4g} for N = federation.num_sites ({num_sites})"]
    return []


def _central_problems(privacy: dict[str, Any], strategy: dict[str, Any]) -> list[str]:
    """Central DP noises the strategy's result: it must be the mean, sampled as the relation needs."""
    mechanism, problems = privacy["mechanism"], []
    if mechanism not in CENTRAL_DP:
        return []
    kind = str(strategy.get("_target_", "")).rpartition(".")[2]
    if kind not in PLAIN_MEAN_STRATEGIES:
        problems.append(
            f"strategy: {mechanism} adds noise calibrated to the mean of the clipped updates, but {kind}'s result is "
            f"not that mean (use {' or '.join(PLAIN_MEAN_STRATEGIES)})"
        )
    if privacy.get("neighbours") == "add_remove":
        fraction = strategy.get("fraction_train")
        if _is_number(fraction) and fraction != 1:
            problems.append(
                f"strategy.fraction_train: {fraction} must be 1.0 with privacy.neighbours=add_remove: the server "
                "then samples each site with probability privacy.sampling_rate itself"
            )
        if privacy.get("secagg") is not None:
            problems.append(
                "privacy.neighbours: add_remove samples a random number of sites, which can be fewer than SecAgg+ "
                "needs, and a round that cannot run shows whether a site took part; use replace_one with privacy.secagg"
            )
    return problems


def _adaptive_problems(privacy: dict[str, Any], per_round: int) -> list[str]:
    """Flower splits the noise between the update and the clipped count; the split must exist."""
    if "adaptive" not in privacy["mechanism"]:
        return []
    noise, stddev = privacy.get("noise_multiplier"), privacy.get("clipped_count_stddev")
    if not _is_number(noise) or noise <= 0:
        return []
    effective = stddev if _is_number(stddev) else per_round / 20
    if noise >= 2 * effective:
        source = "privacy.clipped_count_stddev" if _is_number(stddev) else f"null (sites per round / 20 = {effective:g})"
        return [
            f"privacy.clipped_count_stddev: {source} is too small for privacy.noise_multiplier={noise}; "
            f"adaptive clipping needs noise_multiplier < 2 x clipped_count_stddev"
        ]
    return []


def _secagg_problems(privacy: dict[str, Any], strategy: dict[str, Any], per_round: int) -> list[str]:
    secagg, problems = privacy["secagg"], []
    if privacy["mechanism"].startswith("dp_server"):
        problems.append(
            f"privacy.mechanism: {privacy['mechanism']} clips each site's update on the server, which secure "
            "aggregation hides; use dp_client_fixed or dp_client_adaptive with privacy.secagg"
        )
    kind = str(strategy.get("_target_", "")).rpartition(".")[2]
    if kind not in MEAN_STRATEGIES:
        problems.append(
            f"strategy: {kind} needs each site's update, but secure aggregation only reveals their sum "
            f"(use one of {', '.join(MEAN_STRATEGIES)})"
        )
    threshold, shares = secagg.get("reconstruction_threshold"), secagg.get("num_shares")
    if per_round < 2:
        problems.append(f"privacy.secagg: secure aggregation needs at least 2 sites per round, a round trains {per_round}")
    if _is_number(threshold):
        if threshold < 2:
            problems.append(f"privacy.secagg.reconstruction_threshold: must be at least 2, got {threshold}")
        elif threshold > per_round:
            problems.append(
                f"privacy.secagg.reconstruction_threshold: {threshold} is more than the {per_round} sites sampled per round"
            )
    if _is_number(shares):
        if shares < 3:
            problems.append(f"privacy.secagg.num_shares: must be at least 3 (or null for every sampled site), got {shares}")
        elif shares > per_round:
            problems.append(f"privacy.secagg.num_shares: {shares} is more than the {per_round} sites sampled per round")
        elif _is_number(threshold) and threshold >= shares:
            problems.append(f"privacy.secagg.reconstruction_threshold: {threshold} must be less than privacy.secagg.num_shares ({shares})")
    for key in ("clipping_range", "max_weight"):
        if _is_number(secagg.get(key)) and secagg[key] <= 0:
            problems.append(f"privacy.secagg.{key}: must be positive, got {secagg[key]}")
    quantization, modulus = secagg.get("quantization_range"), secagg.get("modulus_range")
    if _is_number(quantization) and quantization <= 0:
        problems.append(f"privacy.secagg.quantization_range: must be positive, got {quantization}")
    if _is_number(modulus) and _is_number(quantization):
        if modulus <= quantization or modulus & (modulus - 1):
            problems.append(f"privacy.secagg.modulus_range: must be a power of 2 above quantization_range, got {modulus}")
    return problems
