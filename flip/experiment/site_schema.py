"""The schema of a site's own settings: a site file, or an entry of `federation.sites` in simulation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from flip.config.allowlist import entry_problems
from flip.config.checks import check_node
from flip.privacy.schema import MECHANISMS, SitePolicy

APPROVE_ANY = "any"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class SiteSettingsConfig:
    """What belongs to one site alone; a received config can neither set nor widen any of it."""

    # The site's one name: in its handshake, logs, failures, metrics and summary.json.
    # In simulation it is the entry's key in `federation.sites`.
    name: Optional[str] = None
    # Data keys this site sets over the run's (root, site, cache_dir, labels, min_samples, ...).
    data: Dict[str, Any] = field(default_factory=dict)
    # What this site accepts of a run's privacy (see the README's Privacy section).
    policy: SitePolicy = field(default_factory=SitePolicy)
    # Components this site builds beyond flip's defaults: exact dotted names, or `package.*`.
    allowed_targets: List[str] = field(default_factory=list)
    # `any`, or the config sha256s this site approved (`flip show RECIPE --hash` prints one).
    approve: Any = APPROVE_ANY
    # Torch threads for this site's training (null: torch's default).
    cpus: Optional[float] = None
    # Simulation only, set by flip: this site's part of a pooled data set.
    partition: Optional[Dict[str, Any]] = None
    # Deployment only (`flip site`): where the site's node connects, with which CA certificate
    # and key, and where it keeps its state (flip.config.schema_deployment.SiteNodeConfig).
    node: Optional[Dict[str, Any]] = None


def site_settings_problems(raw: Any, where: str) -> list[str]:
    """Every problem of one site's settings, each with its full key."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        return [f"{where}: must be a mapping of site settings, got {raw!r}"]
    problems = check_node(raw, SiteSettingsConfig, where)
    problems += entry_problems(raw.get("allowed_targets"), f"{where}.allowed_targets")
    approve = raw.get("approve", APPROVE_ANY)
    if approve != APPROVE_ANY and not (isinstance(approve, list) and all(isinstance(a, str) and _SHA256.fullmatch(a) for a in approve)):
        problems.append(f"{where}.approve: must be '{APPROVE_ANY}' or a list of config sha256s (64 hex digits), got {approve!r}")
    policy = raw.get("policy")
    if isinstance(policy, dict):
        for mechanism in policy.get("allowed_mechanisms") or []:
            if mechanism not in MECHANISMS:
                problems.append(f"{where}.policy.allowed_mechanisms: '{mechanism}' is not a privacy mechanism")
    from flip.config.schema_deployment import node_problems

    problems += node_problems(raw.get("node"), f"{where}.node")
    cpus = raw.get("cpus")
    if isinstance(cpus, (int, float)) and cpus <= 0:
        problems.append(f"{where}.cpus: must be positive, got {cpus}")
    return problems
