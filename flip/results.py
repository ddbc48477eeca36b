"""What a run writes: metrics table, hashes of config and weights, JSON files."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:  # torch loads on first use: the simulation driver starts Flower before it
    import torch

METRICS_COLUMNS = ("round", "site", "split", "metric", "value")
# The `site` of a federated run's rows about the global model: the sites' aggregate, the server's own evaluation.
FEDERATED = "federated"
SERVER = "server"
# A metric's interval bounds (evaluation.bootstrap) are `<metric>_ci_low` and `<metric>_ci_high`.
CI_LOW, CI_HIGH = "ci_low", "ci_high"


def is_interval(metric: str) -> bool:
    """Whether a metric name is an interval bound, which is not averaged over sites."""
    return metric.endswith((f"_{CI_LOW}", f"_{CI_HIGH}"))


def config_sha256(cfg: DictConfig) -> str:
    """sha256 of the resolved config as sorted YAML (the `hydra` node excluded)."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("hydra", None)
    text = OmegaConf.to_yaml(OmegaConf.create(container), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def model_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in sorted key order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class MetricsTable:
    """Long-format metrics: one row per (round, site, split, metric)."""

    rows: list[tuple[int, str, str, str, float]] = field(default_factory=list)

    def add(self, round_: int, site: str, split: str, metric: str, value: float) -> None:
        self.rows.append((round_, site, split, metric, float(value)))

    def latest(self, split: str, site: str | None = None) -> dict[str, float]:
        """The last value of every metric of `split` (optionally of one site)."""
        latest: dict[str, float] = {}
        for _, row_site, row_split, metric, value in self.rows:
            if row_split == split and (site is None or row_site == site):
                latest[f"{split}/{metric}"] = value
        return latest

    def at_round(self, round_: int, split: str, site: str | None = None) -> dict[str, float]:
        return {
            f"{s}/{m}": v for r, row_site, s, m, v in self.rows
            if r == round_ and s == split and (site is None or row_site == site)
        }

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(METRICS_COLUMNS)
            writer.writerows(self.rows)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(_json_safe(dict(payload)), indent=2, sort_keys=False) + "\n", encoding="utf-8")


# Cross-site evaluation (evaluation.cross_site): the matrix and its heat map in the run directory.
CROSS_SITE_CSV, CROSS_SITE_PNG = "cross_site.csv", "cross_site.png"
CROSS_SITE_COLUMNS = ("model", "site", "split", "metric", "value")
GLOBAL_MODEL = "global"


def cross_site_headline(rows: list[dict[str, Any]], site_names: list[str]) -> dict[str, Any]:
    """What summary.json says of the matrix: its metric (test AUROC where there is one), each
    model's value per site, the global model's mean over sites and each site model's mean over
    the other sites."""
    metrics = {row["metric"] for row in rows if row["split"] == "test"}
    metric = next((m for m in ("auroc", "accuracy", "loss") if m in metrics), min(metrics) if metrics else None)
    if metric is None:
        return {}
    table: dict[str, dict[str, float]] = {}
    for row in rows:
        if row["split"] == "test" and row["metric"] == metric:
            table.setdefault(row["model"], {})[row["site"]] = row["value"]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    on_sites = set(site_names)
    global_values = [v for site, v in table.get(GLOBAL_MODEL, {}).items() if site in on_sites]
    others = [v for model, by_site in table.items() if model != GLOBAL_MODEL for site, v in by_site.items() if site in on_sites and site != model]
    own = [by_site[model] for model, by_site in table.items() if model in by_site]
    return {
        "metric": f"test/{metric}",
        "models": table,
        "global_mean_over_sites": mean(global_values),
        "site_models_mean_on_own_site": mean(own),
        "site_models_mean_on_other_sites": mean(others),
    }
