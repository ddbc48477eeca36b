"""The schemas of the `privacy` options and of a site's own privacy policy, and the rules of a
`privacy` node, for the config layer.

Each option's schema and rules are declared by its mechanism's class (`flip.privacy.mechanisms`);
this module gathers them. The option is turned into one plan (`flip.privacy.plan`) that both the
server and every site build from, so the two halves of a mechanism cannot drift apart.
"""

from __future__ import annotations

import dataclasses
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
    # Whether this site's own model may go to the other sites (evaluation.cross_site).
    share_model: bool = True


SCHEMAS: Dict[str, type] = {f"privacy/{cls.option}": cls.schema for cls in MECHANISMS.values()}


def privacy_problems(cfg: DictConfig) -> list[str]:
    """Every cross-key problem of the `privacy` node, given the federation and strategy."""
    privacy = OmegaConf.to_container(cfg.privacy, resolve=True)
    name = privacy.get("mechanism")
    mechanism = MECHANISMS.get(name) if isinstance(name, str) else None
    if mechanism is None:
        return [f"privacy.mechanism: '{name}' is not a privacy mechanism (available: {', '.join(MECHANISMS)})"]
    missing = {field.name for field in dataclasses.fields(mechanism.schema)} - set(privacy)
    if missing:  # another option's settings: its mechanism was set by hand
        return [
            f"privacy.mechanism: {name} takes the settings of its own option (privacy={name}), which this option "
            f"lacks ({', '.join(sorted(missing))}); choose the option rather than setting the mechanism"
        ]
    return mechanism.problems(privacy, cfg)


def cross_site_privacy_problems(privacy: DictConfig) -> list[str]:
    """evaluation.cross_site sends each site's own model to the other sites: only where the
    mechanism protects that model on its own, and never past secure aggregation."""
    name = privacy.get("mechanism")
    mechanism = MECHANISMS.get(name) if isinstance(name, str) else None
    if privacy.get("secagg") is not None:
        return ["evaluation.cross_site: with secure aggregation the server never holds a site's own model to send to the others"]
    if mechanism is not None and not mechanism.site_models_protected:
        return [
            f"evaluation.cross_site: sends each site's own model to the other sites, which {name} does not protect "
            "(it protects what the server releases); use privacy=none, local_dp or dp_sgd, or leave cross_site off"
        ]
    return []
