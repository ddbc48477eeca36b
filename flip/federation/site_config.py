"""A site's own settings: where its data is, and its privacy policy.

In a deployment each hospital keeps these in its own file (the SuperNode's `site-config` node
config names it). In simulation every virtual site reads its entry from `federation.sites`
or `federation.sites_file`, which stand in for those files so policies are testable on one machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from flip.errors import ConfigError

POLICY = "policy"


def site_key(index: int) -> str:
    """The name a site has in `federation.sites` and in logs before its data names it."""
    return f"site-{index + 1}"


def _load_yaml(path: str, key: str) -> dict[str, Any]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError([f"{key}: no such file: {file}"])
    loaded = OmegaConf.to_container(OmegaConf.load(file), resolve=True)
    if not isinstance(loaded, dict):
        raise ConfigError([f"{key}: {file} must hold a mapping"])
    return loaded


def sites_mapping(federation: DictConfig) -> dict[str, Any]:
    """`federation.sites_file` (if any) overlaid with `federation.sites`."""
    merged: dict[str, Any] = {}
    if federation.get("sites_file"):
        merged = _load_yaml(federation.sites_file, "federation.sites_file")
    inline = OmegaConf.to_container(federation.get("sites", {}), resolve=True)
    return OmegaConf.to_container(OmegaConf.merge(merged, inline), resolve=True)


def site_settings(cfg: DictConfig, index: int, node_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Settings of site `index`: its own file when its node names one, else its simulated entry."""
    if node_config and node_config.get("site-config"):
        return _load_yaml(str(node_config["site-config"]), "node config site-config")
    return sites_mapping(cfg.federation).get(site_key(index), {}) or {}


def data_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The data keys of a site's settings (everything but its policy)."""
    return {key: value for key, value in settings.items() if key != POLICY}
