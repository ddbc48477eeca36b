"""A site's own settings, and the config a site runs: the received one with the site's settings over it.

In a deployment each hospital keeps its settings in its own file, which its SuperNode names in
its node config (`site-config`). In simulation flip writes such a file for every virtual site
before the run (`flip.federation.simulated_sites`), and a node finds its own by its partition
id. Either way `site_run_config` is the one function that puts a site's settings over what it
received: its data paths, its allow-list, its CPU share; nothing in the received config can
point the site elsewhere.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf

from flip.data.schema import SITE_PATH_KEYS
from flip.privacy.schema import SitePolicy
from flip.experiment.site_schema import APPROVE_ANY, site_settings_problems
from flip.errors import ConfigError, FlipError

# Where a simulated node finds its settings file: `<folder>/<partition-id>.json`.
SIMULATION_SITES_ENV = "FLIP_SIMULATION_SITES"
SITE_CONFIG_KEY = "site-config"


@dataclass(frozen=True)
class SiteSettings:
    """One site's validated settings."""

    name: str
    data: dict[str, Any]
    policy: SitePolicy
    allowed_targets: tuple[str, ...]
    # None: any run; else the approved config sha256s.
    approved: tuple[str, ...] | None
    cpus: float | None
    partition: dict[str, Any] | None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None, where: str) -> SiteSettings:
        """Checked settings; ConfigError lists every problem, each with its full key."""
        raw = dict(raw or {})
        problems = site_settings_problems(raw, where)
        if not raw.get("name"):
            problems.append(f"{where}.name: missing value (the site's one name)")
        if problems:
            raise ConfigError(problems, source=where)
        approve = raw.get("approve", APPROVE_ANY)
        return cls(
            name=str(raw["name"]),
            data=dict(raw.get("data") or {}),
            policy=SitePolicy(**(raw.get("policy") or {})),
            allowed_targets=tuple(raw.get("allowed_targets") or ()),
            approved=None if approve == APPROVE_ANY else tuple(approve),
            cpus=raw.get("cpus"),
            partition=raw.get("partition"),
        )

    @property
    def fingerprint(self) -> str:
        """A key that changes whenever the settings do (accepted runs are cached by it)."""
        return json.dumps([self.name, self.data, str(self.policy), self.allowed_targets, self.approved, self.cpus, self.partition], sort_keys=True, default=str)


def load_site_file(path: str | Path, where: str | None = None) -> SiteSettings:
    """A site's settings file (YAML or JSON); the site's own, so its interpolations resolve."""
    file = Path(path).expanduser()
    label = where or str(file)
    if not file.is_file():
        raise ConfigError([f"{label}: no such site settings file"])
    loaded = OmegaConf.to_container(OmegaConf.load(file), resolve=True)
    if not isinstance(loaded, dict):
        raise ConfigError([f"{label}: must hold a mapping of site settings"])
    return SiteSettings.from_mapping(loaded, label)


_LOADED: dict[tuple[str, float], SiteSettings] = {}


def node_site_settings(node_config: Mapping[str, Any]) -> SiteSettings:
    """This node's own settings: its site file in a deployment, flip's file for it in simulation."""
    if node_config.get(SITE_CONFIG_KEY):
        path = Path(str(node_config[SITE_CONFIG_KEY])).expanduser()
    elif os.environ.get(SIMULATION_SITES_ENV) and "partition-id" in node_config:
        path = Path(os.environ[SIMULATION_SITES_ENV]) / f"{int(node_config['partition-id'])}.json"
    else:
        raise FlipError(
            f"this node has no site settings: start it with --node-config '{SITE_CONFIG_KEY}=SITE.yaml' "
            "(a deployment) or through flip's simulation"
        )
    key = (str(path), path.stat().st_mtime if path.is_file() else 0.0)
    if key not in _LOADED:
        _LOADED[key] = load_site_file(path)
    return _LOADED[key]


def site_run_config(received: Mapping[str, Any], site: SiteSettings) -> dict[str, Any]:
    """The config `site` runs: what it received (plain data), with the site's own settings over it.

    The site's data keys win (where its data is, and anything else it sets about it); with a
    data root of its own, a received `synthetic` data set is not generated. The allow-list is
    the site's alone.
    """
    cfg = copy.deepcopy(dict(received))
    data = cfg["data"] if isinstance(cfg.get("data"), dict) else cfg.setdefault("data", {})
    data.update({key: None for key in SITE_PATH_KEYS if key in data})
    data.update(copy.deepcopy(site.data))
    if site.data.get("root") is not None and "synthetic" in data:
        data["synthetic"] = None
    cfg["allowed_targets"] = list(site.allowed_targets)
    return cfg
