"""The schemas of the `privacy` options and of a site's own privacy policy, and the rules of a
`privacy` node, for the config layer.

Each option's schema and rules are declared by its mechanism's class (`flip.privacy.mechanisms`);
this module gathers them. The option is turned into one plan (`flip.privacy.plan`) that both the
server and every site build from, so the two halves of a mechanism cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from flip.privacy.mechanisms import MECHANISMS


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


SCHEMAS: Dict[str, type] = {f"privacy/{cls.option}": cls.schema for cls in MECHANISMS.values()}


def privacy_problems(cfg: DictConfig) -> list[str]:
    """Every cross-key problem of the `privacy` node, given the federation and strategy."""
    privacy = OmegaConf.to_container(cfg.privacy, resolve=True)
    name = privacy.get("mechanism")
    mechanism = MECHANISMS.get(name) if isinstance(name, str) else None
    if mechanism is None:
        return [f"privacy.mechanism: '{name}' is not a privacy mechanism (available: {', '.join(MECHANISMS)})"]
    return mechanism.problems(privacy, cfg)
