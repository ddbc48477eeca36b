"""Schemas for the aggregation strategies in ``conf/strategy/``, and their cross-key checks.

Each schema mirrors the constructor of one ``flwr.serverapp.strategy`` class and keeps Flower's
names, so a composed ``strategy`` node is instantiated straight into that class. Defaults are
Flower's, except that every site trains and evaluates each round and that FedProx, FedAvgM and
MultiKrum get values that make them differ from the strategy they generalise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from omegaconf import MISSING, DictConfig, OmegaConf

FLOWER = "flwr.serverapp.strategy."


@dataclass
class StrategyConfig:
    """Site sampling, shared by every strategy."""

    _target_: str = MISSING
    # Share of the connected sites that train (evaluate) each round; evaluate 0 turns evaluation off.
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    # Fewest sites that train (evaluate) each round, whatever the fraction.
    min_train_nodes: int = 2
    min_evaluate_nodes: int = 2
    # Sites that must be connected before a round starts.
    min_available_nodes: int = 2


@dataclass
class FedAvgConfig(StrategyConfig):
    _target_: str = FLOWER + "FedAvg"


@dataclass
class FedAvgMConfig(StrategyConfig):
    _target_: str = FLOWER + "FedAvgM"
    server_learning_rate: float = 1.0
    # 0 with a learning rate of 1 is plain FedAvg.
    server_momentum: float = 0.9


@dataclass
class FedProxConfig(StrategyConfig):
    _target_: str = FLOWER + "FedProx"
    # Weight of the proximal term sent to sites as `proximal-mu`; 0 is plain FedAvg.
    proximal_mu: float = 0.1


@dataclass
class FedAdagradConfig(StrategyConfig):
    _target_: str = FLOWER + "FedAdagrad"
    # Server learning rate, client learning rate (recorded only), adaptivity.
    eta: float = 0.1
    eta_l: float = 0.1
    tau: float = 1e-3


@dataclass
class FedAdamConfig(StrategyConfig):
    _target_: str = FLOWER + "FedAdam"
    eta: float = 0.1
    eta_l: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3


@dataclass
class FedYogiConfig(StrategyConfig):
    _target_: str = FLOWER + "FedYogi"
    eta: float = 0.01
    eta_l: float = 0.0316
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3


@dataclass
class FedMedianConfig(StrategyConfig):
    _target_: str = FLOWER + "FedMedian"


@dataclass
class FedTrimmedAvgConfig(StrategyConfig):
    _target_: str = FLOWER + "FedTrimmedAvg"
    # Share of replies cut from each tail, per coordinate.
    beta: float = 0.2


@dataclass
class KrumConfig(StrategyConfig):
    _target_: str = FLOWER + "Krum"
    num_malicious_nodes: int = 0


@dataclass
class MultiKrumConfig(StrategyConfig):
    _target_: str = FLOWER + "MultiKrum"
    num_malicious_nodes: int = 0
    # Replies averaged after the Krum selection; 1 is plain Krum.
    num_nodes_to_select: int = 2


@dataclass
class BulyanConfig(StrategyConfig):
    _target_: str = FLOWER + "Bulyan"
    num_malicious_nodes: int = 0


@dataclass
class QFedAvgConfig(StrategyConfig):
    _target_: str = FLOWER + "QFedAvg"
    # The sites' learning rate; the server estimates the Lipschitz constant as its inverse.
    client_learning_rate: float = 0.1
    # Fairness: 0 is FedAvg, larger values favour sites with a higher `train_loss`.
    q: float = 0.1


STRATEGY_SCHEMAS: dict[str, type] = {
    "strategy/fedavg": FedAvgConfig,
    "strategy/fedavgm": FedAvgMConfig,
    "strategy/fedprox": FedProxConfig,
    "strategy/fedadam": FedAdamConfig,
    "strategy/fedyogi": FedYogiConfig,
    "strategy/fedadagrad": FedAdagradConfig,
    "strategy/fedmedian": FedMedianConfig,
    "strategy/fedtrimmedavg": FedTrimmedAvgConfig,
    "strategy/krum": KrumConfig,
    "strategy/multikrum": MultiKrumConfig,
    "strategy/bulyan": BulyanConfig,
    "strategy/qfedavg": QFedAvgConfig,
}

Rule = tuple[Callable[[float], bool], str]
_POSITIVE: Rule = (lambda v: v > 0, "must be > 0")
_NON_NEGATIVE: Rule = (lambda v: v >= 0, "must be >= 0")
_BELOW_ONE: Rule = (lambda v: 0 <= v < 1, "must be in [0, 1)")
_ADAPTIVE = {"eta": _POSITIVE, "tau": _POSITIVE, "beta_1": _BELOW_ONE, "beta_2": _BELOW_ONE}

# Value rules per Flower class name.
_RULES: dict[str, dict[str, Rule]] = {
    "FedAvgM": {"server_learning_rate": _POSITIVE, "server_momentum": _BELOW_ONE},
    "FedProx": {"proximal_mu": _NON_NEGATIVE},
    "FedAdagrad": {"eta": _POSITIVE, "tau": _POSITIVE},
    "FedAdam": _ADAPTIVE,
    "FedYogi": _ADAPTIVE,
    "FedTrimmedAvg": {"beta": (lambda v: 0 <= v < 0.5, "must be in [0, 0.5)")},
    "Krum": {"num_malicious_nodes": _NON_NEGATIVE},
    "MultiKrum": {"num_malicious_nodes": _NON_NEGATIVE, "num_nodes_to_select": (lambda v: v >= 1, "must be >= 1")},
    "Bulyan": {"num_malicious_nodes": _NON_NEGATIVE},
    "QFedAvg": {"client_learning_rate": _POSITIVE, "q": _NON_NEGATIVE},
}

# Fewest replies per round for f malicious sites: Krum's bound (Blanchard et al.), and Bulyan's,
# below which Flower's Bulyan skips the round.
_MIN_REPLIES: dict[str, tuple[str, Callable[[int], int]]] = {
    "Krum": ("2f+3", lambda f: 2 * f + 3),
    "MultiKrum": ("2f+3", lambda f: 2 * f + 3),
    "Bulyan": ("4f+3", lambda f: 4 * f + 3),
}


def strategy_problems(strategy_cfg: Mapping[str, Any], num_sites: int) -> list[str]:
    """Every cross-key problem of a `strategy` node (with `_target_`) for `num_sites` sites."""
    cfg = OmegaConf.to_container(strategy_cfg, resolve=True) if isinstance(strategy_cfg, DictConfig) else dict(strategy_cfg)
    kind = str(cfg.get("_target_", "")).rpartition(".")[2]
    problems = list(_sampling_problems(cfg, num_sites))
    for key, (ok, rule) in _RULES.get(kind, {}).items():
        if _is_number(cfg.get(key)) and not ok(cfg[key]):
            problems.append(f"strategy.{key}: {cfg[key]} {rule}")
    problems += _robustness_problems(kind, cfg, sites_per_round(cfg, num_sites))
    return problems


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sampling_problems(cfg: dict[str, Any], num_sites: int) -> Iterator[str]:
    """Sampling that waits forever, samples nobody, or uses a fraction outside [0, 1]."""
    waits = ["min_available_nodes"] + [f"min_{s}_nodes" for s in ("train", "evaluate") if cfg.get(f"fraction_{s}") != 0]
    for key in waits:
        if _is_number(cfg.get(key)) and cfg[key] > num_sites:
            yield f"strategy.{key}: {cfg[key]} is more than federation.num_sites ({num_sites}); the run would wait forever for sites"
    for stage in ("train", "evaluate"):
        fraction, minimum = cfg.get(f"fraction_{stage}"), cfg.get(f"min_{stage}_nodes")
        if not _is_number(fraction):
            continue
        if not 0 <= fraction <= 1:
            yield f"strategy.fraction_{stage}: {fraction} must be in [0, 1]"
        elif fraction == 0 and stage == "train":
            yield "strategy.fraction_train: 0 trains no site; Flower skips training when it is 0"
        elif fraction > 0 and _is_number(minimum) and max(int(num_sites * fraction), minimum) <= 0:
            yield (
                f"strategy.fraction_{stage}: samples no site of {num_sites} "
                f"(int({num_sites} x {fraction}) = {int(num_sites * fraction)} and min_{stage}_nodes = {minimum})"
            )


def sites_per_round(cfg: dict[str, Any], num_sites: int) -> int:
    """Sites Flower samples for training each round, as `FedAvg.configure_train` computes it."""
    fraction, minimum = cfg.get("fraction_train"), cfg.get("min_train_nodes")
    if not (_is_number(fraction) and _is_number(minimum) and 0 <= fraction <= 1):
        return num_sites
    return min(num_sites, max(int(num_sites * fraction), minimum))


def _robustness_problems(kind: str, cfg: dict[str, Any], per_round: int) -> Iterator[str]:
    """Byzantine-robust strategies that get too few replies for what they must tolerate."""
    malicious, select = cfg.get("num_malicious_nodes"), cfg.get("num_nodes_to_select")
    if kind in _MIN_REPLIES and _is_number(malicious) and malicious >= 0:
        formula, needed = _MIN_REPLIES[kind]
        if per_round < needed(malicious):
            yield (
                f"strategy.num_malicious_nodes: {kind} with {malicious} needs at least {needed(malicious)} "
                f"sites per round ({formula}), but a round trains {per_round}"
            )
    if kind == "MultiKrum" and _is_number(select) and select > per_round:
        yield f"strategy.num_nodes_to_select: {select} is more than the {per_round} sites trained per round"
