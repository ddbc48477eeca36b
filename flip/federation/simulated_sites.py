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

from flip.data import synthetic_root
from flip.data.schema import SITE_PATH_KEYS
from flip.errors import ConfigError
from flip.experiment.site_schema import site_settings_problems
from flip.experiment.sites import first_folders, folders, sites_mapping, static_site_names


def simulated_site_names(cfg: DictConfig) -> list[str]:
    """Every simulated site's name, reading the data where it names the sites."""
    partition = cfg.partition
    if partition.kind != "by_site":
        return static_site_names(cfg)
    data = cfg.data
    if partition.source == "folder":
        root = Path(data.root).expanduser() if data.get("root") is not None else synthetic_root(data.synthetic, data.get("cache_dir"))
        return first_folders(cfg, folders(root))
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


def site_data_overrides(cfg: DictConfig) -> list[tuple[str, dict[str, Any]]]:
    """(name, data keys) of every simulated site, as its node builds its data module from `cfg.data`
    (its site-local paths and its part of a pooled data set), in site order."""
    found = []
    for site in simulated_site_settings(cfg, simulated_site_names(cfg)):
        own_root = site["data"].get("root") is not None and "synthetic" in cfg.data
        found.append((site["name"], {**site["data"], **({"synthetic": None} if own_root else {}), "partition": site["partition"]}))
    return found


def write_site_files(folder: Path, settings: list[dict[str, Any]]) -> Path:
    """One settings file per simulated site, `<folder>/<partition id>.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, site in enumerate(settings):
        (folder / f"{index}.json").write_text(json.dumps(site, indent=1), encoding="utf-8")
    return folder
