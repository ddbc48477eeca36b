"""`flip data inspect`: what each site's data looks like to flip, before anything trains."""

from __future__ import annotations

import inspect as pyinspect
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from flip.training import build_datamodule


@dataclass
class SiteInventory:
    site: str
    found: int
    usable: int
    labels: dict[str, int]
    skipped: list[dict[str, str]]
    unlabelled: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # e.g. transfer syntaxes, modalities

    def as_json(self) -> dict[str, Any]:
        return {
            "site": self.site, "found": self.found, "usable": self.usable, "labels": self.labels,
            "unlabelled": self.unlabelled, "skipped": self.skipped, **self.counts,
        }


def site_overrides(cfg: DictConfig) -> list[dict[str, Any]]:
    """The data settings of every site, exactly as `flip run` gives them to each simulated site."""
    if cfg.federation.mode == "local":
        return [{}]
    from flip.federation.simulated_sites import site_data_overrides

    sites = [overrides for _, overrides in site_data_overrides(cfg)]
    server_site = cfg.federation.get("server_eval_site")
    return [*sites, {"site": server_site}] if server_site else sites


def inspect_sites(cfg: DictConfig, require_labels: bool = True) -> list[SiteInventory]:
    inventories = []
    for overrides in site_overrides(cfg):
        # Inspecting reports a small site instead of refusing it.
        datamodule = build_datamodule(cfg, **overrides, min_samples=0, **_label_flag(cfg, require_labels))
        datamodule.setup("fit")
        inventories.append(inventory_of(datamodule))
    return inventories


def _label_flag(cfg: DictConfig, require_labels: bool) -> dict[str, bool]:
    """Sources that can read unlabelled data get `require_labels`; others must have labels."""
    from flip.config.allowlist import AllowList, Kind, checked_class

    source = checked_class("data._target_", Kind.DATA, cfg.data._target_, AllowList.of(cfg.allowed_targets))
    parameters = pyinspect.signature(source).parameters
    return {"require_labels": require_labels} if "require_labels" in parameters else {}


def inventory_of(datamodule: Any) -> SiteInventory:
    """Counts from a set-up data module; `usable` means labelled and readable."""
    unlabelled = int(getattr(datamodule, "unlabelled", 0))
    usable = sum(datamodule.label_counts.values())
    return SiteInventory(
        site=str(datamodule.site_name),
        found=usable + unlabelled + len(datamodule.skipped),
        usable=usable,
        labels={str(label): int(count) for label, count in datamodule.label_counts.items()},
        skipped=[{"path": path, "reason": reason} for path, reason in datamodule.skipped],
        unlabelled=unlabelled,
        counts={name: dict(counter) for name, counter in datamodule.inventory().items()},
    )
