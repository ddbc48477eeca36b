"""The base of every privacy mechanism, and the keys every `privacy` option has.

A mechanism is one class: the schema of its option (the one declaration of its keys), its rules,
its server half (a wrapper around the strategy), its site half (client mods around a site's
training, or callbacks inside it), the guarantee it states and what each round releases for the
server's ledger. A class is built for one run's `PrivacyPlan`. Its halves import Flower, Opacus
and torch only when they are built, so validating a config loads none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from flip.config.schema import BASELINE_MODES
from flip.config.strategies import sites_per_round
from flip.privacy.guarantee import Guarantee, Release
from flip.privacy.mechanisms.rules import is_number, positive_problems
from flip.privacy.mechanisms.secagg import SecAggConfig, SecAggPlus

if TYPE_CHECKING:
    from flip.privacy.plan import PrivacyPlan

# Whom the ledger charges a round's release to: the whole federation (one release per round), or
# each site that trained (one release per site and round).
FEDERATION, SITES = "federation", "sites"


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


@dataclass(frozen=True)
class SiteTraining:
    """What a mechanism adds to one round of a site's training: Lightning callbacks, and what
    they spent once it is done (epsilon, delta, ...; empty when the site accounts nothing)."""

    callbacks: tuple[Any, ...] = ()
    spent: Callable[[], dict[str, float]] = dict


class Mechanism:
    """A mechanism that changes nothing: the base every mechanism extends."""

    name: ClassVar[str]  # its `privacy.mechanism` value
    option: ClassVar[str]  # its schema's name in the ConfigStore: privacy/<option>
    schema: ClassVar[type] = PrivacyConfig
    is_dp: ClassVar[bool] = False
    # Whether it means anything in a local run, where nothing is sent to a server.
    runs_locally: ClassVar[bool] = False
    # Keys that must be above 0 when set, in the order their problems are listed.
    positive: ClassVar[tuple[str, ...]] = ("max_epsilon",)
    # What two neighbouring datasets differ in for its epsilon (replace_one | add_remove; None: not DP).
    neighbours: ClassVar[str | None] = None
    # Whether the strategy must weigh every site's update the same (the metric key of `reply_weights`).
    uniform_weights: ClassVar[bool] = False
    # FEDERATION or SITES: whom the ledger charges its releases to; None: the server accounts none.
    charged_to: ClassVar[str | None] = None
    # Whether a site's own model, as the site sends it, is all this mechanism promises about it, so
    # that other sites may see it (evaluation.cross_site): no mechanism at all, or one at the site.
    site_models_protected: ClassVar[bool] = False

    def __init__(self, plan: PrivacyPlan):
        self.plan = plan
        self.settings = plan.settings

    # -- rules

    @classmethod
    def problems(cls, privacy: dict[str, Any], cfg: DictConfig) -> list[str]:
        """Every problem of this mechanism's settings `privacy` in the run `cfg`."""
        federation = cfg.federation
        strategy = OmegaConf.to_container(cfg.strategy, resolve=True)
        secagg = privacy.get("secagg")
        problems = list(cls.value_problems(privacy))
        if federation.mode in BASELINE_MODES:
            if not cls.runs_locally:
                problems.append(
                    f"privacy.mechanism: {cls.name} protects what sites send to a server; a {federation.mode} run sends "
                    "nothing (use federation=simulation, privacy=dp_sgd for a private local model, or privacy=none "
                    "for a baseline without it)"
                )
            if secagg is not None:
                problems += SecAggPlus.local_problems()
        else:
            per_round = cls.sampled_per_round(privacy, sites_per_round(strategy, federation.num_sites), federation.num_sites)
            problems += cls.federated_problems(privacy, federation, strategy, per_round)
            if secagg is not None:
                problems += cls.secagg_problems(privacy) + SecAggPlus.problems(secagg, strategy, per_round)
        problems += cls.training_problems(cfg, strategy)
        if privacy.get("max_epsilon") is not None and not cls.is_dp:
            problems.append(f"privacy.max_epsilon: {cls.name} is not differential privacy, so there is no epsilon to budget")
        return problems

    @classmethod
    def value_problems(cls, privacy: dict[str, Any]) -> Iterator[str]:
        """Problems of single values."""
        yield from positive_problems(privacy, cls.positive)
        delta = privacy.get("delta")
        if is_number(delta) and not 0 < delta < 1:
            yield f"privacy.delta: must be in (0, 1), got {delta}"

    @classmethod
    def sampled_per_round(cls, privacy: dict[str, Any], per_round: int, num_sites: int) -> float:
        """The sites a round trains, given the strategy's `per_round`."""
        return per_round

    @classmethod
    def federated_problems(cls, privacy: dict[str, Any], federation: DictConfig, strategy: dict[str, Any], per_round: float) -> list[str]:
        """What the federation and its strategy must satisfy."""
        return []

    @classmethod
    def secagg_problems(cls, privacy: dict[str, Any]) -> list[str]:
        """Why this mechanism cannot have SecAgg+ added, if it cannot."""
        return []

    @classmethod
    def training_problems(cls, cfg: DictConfig, strategy: dict[str, Any]) -> list[str]:
        """What each site's training must satisfy."""
        return []

    # -- server half

    def wrap_strategy(self, strategy: Any) -> Any:
        """The strategy with the server half around it."""
        return strategy

    # -- site half

    def site_mods(self) -> list[Callable]:
        """Flower client mods around a site's training, outermost first."""
        return []

    def site_training(self, rounds_before: int = 0, rounds_total: int = 1, epsilon_cap: float | None = None) -> SiteTraining:
        """What this mechanism adds to a site's training in a round after `rounds_before` of
        `rounds_total`; the site holds it to `epsilon_cap` (None: no budget)."""
        return SiteTraining()

    def reply_weights(self) -> dict[str, float]:
        """Extra weight keys a site adds to its training metrics."""
        return {}

    # -- guarantee and accounting

    @property
    def noise_multiplier(self) -> float | None:
        """Noise std over the clipping norm as configured, whatever the relation (None: no noise)."""
        return None

    def guarantee(self) -> Guarantee | None:
        """What its epsilon means; None when it is not differential privacy."""
        return None

    def round_releases(self, sampled: list[int], population: int, replied: list[int]) -> dict[Any, Release]:
        """What a round releases, by whom it is charged to (FEDERATION, or a site's index): `sampled`
        sites of `population` online, of which `replied` replied."""
        return {}

    def reported_delta(self, site_deltas: dict[int, float]) -> float | None:
        """The delta its epsilon is reported at, given the deltas sites reported."""
        return self.plan.delta if self.is_dp else None
