"""The virtual sites of a simulation: their names, and the settings file flip writes for each.

A simulated site's name is the name its data gives it: its folder (`by_site` from folders), the
value of its manifest column or DICOM attribute (`by_site` from those), else `site-1` ..
`site-N` for a split of pooled data. Names are in natural order (site-2 before site-10), and
`federation.sites.<name>` is that site's entry, whatever its position.

This machine is every simulated site's machine, so the recipe's data paths (root, site, cache
folder) and `federation.cpus_per_site` are each site's defaults; its entry in
`federation.sites` / `federation.sites_file` goes over them. Each site's settings are written
to `<folder>/<partition id>.json`, where its node reads them (`node_site_settings`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from flip.config.schema_common import SITE_PATH_KEYS
from flip.config.schema_site import site_settings_problems
from flip.data import synthetic_root, synthetic_site_names
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


def _folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise ConfigError([f"data.root: no such folder: {root}"])
    return [entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")]


def _first_folders(cfg: DictConfig, folders: list[str]) -> list[str]:
    """The first `num_sites` site folders in natural order, the server's own aside."""
    federation = cfg.federation
    folders = sorted((f for f in folders if f != federation.get("server_eval_site")), key=natural_key)
    wanted = int(federation.num_sites)
    if len(folders) < wanted:
        raise ConfigError([f"partition: by_site from folders needs {wanted} site folders, found {len(folders)}: {folders}"])
    return folders[:wanted]


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
        return _first_folders(cfg, _folders(root)) if root.is_dir() else None
    if data.get("synthetic") is not None:
        return _first_folders(cfg, synthetic_site_names(int(data.synthetic.num_sites)))
    return None


def simulated_site_names(cfg: DictConfig) -> list[str]:
    """Every simulated site's name, reading the data where it names the sites."""
    partition = cfg.partition
    if partition.kind != "by_site":
        return static_site_names(cfg)
    data = cfg.data
    if partition.source == "folder":
        root = Path(data.root).expanduser() if data.get("root") is not None else synthetic_root(data.synthetic, data.get("cache_dir"))
        return _first_folders(cfg, _folders(root))
    from flip.training import build_datamodule

    pooled = build_datamodule(cfg, partition=_partition(cfg, 0, None), min_samples=0)
    names = pooled.site_groups()
    if len(names) != cfg.federation.num_sites:
        raise ConfigError(
            [f"partition: by_site from the {partition.source} '{partition.name}' names {len(names)} sites "
             f"({', '.join(names)}), federation.num_sites is {cfg.federation.num_sites}"]
        )
    return names


def _partition(cfg: DictConfig, index: int, name: str | None) -> dict[str, Any] | None:
    """Which part of the data site `index` holds: None for a site folder of its own."""
    partition = OmegaConf.to_container(cfg.partition, resolve=True)
    if partition["kind"] == "by_site":
        return None if partition["source"] == "folder" else {**partition, "group": name}
    return {**partition, "index": index, "num_partitions": int(cfg.federation.num_sites)}


def simulated_site_settings(cfg: DictConfig, names: list[str]) -> list[dict[str, Any]]:
    """Each simulated site's settings, in the order of `names` (ConfigError lists every problem)."""
    entries = sites_mapping(cfg.federation)
    problems = [
        f"federation.sites.{name}: no such site in this run (its sites: {', '.join(names)})"
        for name in entries
        if name not in names
    ]
    defaults = {key: cfg.data.get(key) for key in SITE_PATH_KEYS if key in cfg.data}
    folders = cfg.partition.kind == "by_site" and cfg.partition.source == "folder"
    settings = []
    for index, name in enumerate(names):
        entry = dict(entries.get(name) or {})
        where = f"federation.sites.{name}"
        problems += site_settings_problems(entry, where)
        if entry.get("name") not in (None, name):
            problems.append(f"{where}.name: must be the entry's own name '{name}', got {entry['name']!r}")
        data = {**defaults, **({"site": name} if folders else {}), **(entry.get("data") or {})}
        settings.append(
            {
                **entry,
                "name": name,
                "data": data,
                "cpus": entry.get("cpus", cfg.federation.cpus_per_site),
                "partition": _partition(cfg, index, name),
            }
        )
    if problems:
        raise ConfigError(problems)
    return settings


def write_site_files(folder: Path, settings: list[dict[str, Any]]) -> Path:
    """One settings file per simulated site, `<folder>/<partition id>.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, site in enumerate(settings):
        (folder / f"{index}.json").write_text(json.dumps(site, indent=1), encoding="utf-8")
    return folder
