"""The sites of a simulation as its config describes them: their settings by name, and their names
where the config alone tells them (site folders, flip's synthetic data set, a split of pooled data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from flip.data import synthetic_site_names
from flip.data.partition import natural_key
from flip.errors import ConfigError


def _load_yaml(path: str, key: str) -> dict[str, Any]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError([f"{key}: no such file: {file}"])
    loaded = OmegaConf.to_container(OmegaConf.load(file), resolve=True)
    if not isinstance(loaded, dict):
        raise ConfigError([f"{key}: {file} must hold a mapping of site name to settings"])
    return loaded


def sites_mapping(federation: DictConfig) -> dict[str, Any]:
    """`federation.sites_file` (if any) overlaid with `federation.sites`, by site name."""
    merged: dict[str, Any] = {}
    if federation.get("sites_file"):
        merged = _load_yaml(federation.sites_file, "federation.sites_file")
    inline = OmegaConf.to_container(federation.get("sites", {}), resolve=True)
    return OmegaConf.to_container(OmegaConf.merge(merged, inline), resolve=True)


def folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise ConfigError([f"data.root: no such folder: {root}"])
    return [entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")]


def first_folders(cfg: DictConfig, names: list[str]) -> list[str]:
    """The first `num_sites` site folders in natural order, the server's own aside."""
    federation = cfg.federation
    chosen = sorted((f for f in names if f != federation.get("server_eval_site")), key=natural_key)
    wanted = int(federation.num_sites)
    if len(chosen) < wanted:
        raise ConfigError([f"partition: by_site from folders needs {wanted} site folders, found {len(chosen)}: {chosen}"])
    return chosen[:wanted]


def static_site_names(cfg: DictConfig) -> list[str] | None:
    """Site names known without reading data (None when only the data can tell)."""
    partition = cfg.partition
    if partition.kind != "by_site":
        return [f"site-{index}" for index in range(1, int(cfg.federation.num_sites) + 1)]
    if partition.source != "folder":
        return None
    data = cfg.data
    if data.get("root") is not None:
        root = Path(data.root).expanduser()
        return first_folders(cfg, folders(root)) if root.is_dir() else None
    if data.get("synthetic") is not None:
        return first_folders(cfg, synthetic_site_names(int(data.synthetic.num_sites)))
    return None
