"""A federated recipe as its own baseline on this machine (`federation=local` or `pooled`): whose
data trains the one model, whose test splits evaluate it, for how long, and what it leaves unused.

A local run with `federation.num_sites: 1` (a local recipe) is a site on its own and reads its data
as configured. With more sites (a federated recipe), `local` trains one of the federation's sites
(`data.site`; null: the first, never the whole data root with the server's held-out site) and
`pooled` trains on every site's training split; both are then evaluated on each federated site's
test split and on `federation.server_eval_site`, as the federation's model is.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig

from flip.config.schema import FederatedExperimentConfig
from flip.federation.simulated_sites import site_data_overrides

# Keys of a federation that mean nothing for one model trained on one machine.
UNUSED_KEYS = ("keep_optimizer_state", "cpus_per_site", "total_cpus", "min_successful_sites", "round_timeout")

Site = tuple[str, dict[str, Any]]  # a site's name and its data keys over `cfg.data`


@dataclass(frozen=True)
class BaselineSites:
    trained: list[Site]  # whose training splits train the model (local: one site; "" a site on its own)
    evaluated: list[Site]  # whose test splits evaluate it, the server's held-out site last
    held_out: str | None  # federation.server_eval_site


def baseline_sites(cfg: DictConfig) -> BaselineSites:
    federation = cfg.federation
    if federation.mode == "local" and federation.num_sites == 1:
        return BaselineSites(trained=[("", {})], evaluated=[], held_out=None)  # named by its data
    sites = site_data_overrides(cfg)
    held_out = federation.get("server_eval_site")
    evaluated = [*sites, *([(held_out, {"site": held_out})] if held_out else [])]
    if federation.mode == "pooled":
        return BaselineSites(trained=sites, evaluated=evaluated, held_out=held_out)
    chosen = cfg.data.get("site")
    if chosen is None:
        trained = sites[0]
    else:
        trained = next((site for site in evaluated if site[0] == chosen), (chosen, {}))
    if trained[0] not in [name for name, _ in evaluated]:
        evaluated.append(trained)
    return BaselineSites(trained=[trained], evaluated=evaluated, held_out=held_out)


def trainer_length(cfg: DictConfig) -> dict[str, int]:
    """The Trainer's length: num_rounds x local_epochs epochs (or x local_steps steps), as long as
    each site trains in the federation (local.yaml and pooled.yaml make num_rounds follow
    trainer.max_epochs, so a local recipe trains its max_epochs)."""
    federation = cfg.federation
    if federation.local_steps is None:
        return {"max_epochs": int(federation.num_rounds * federation.local_epochs)}
    return {"max_epochs": -1, "max_steps": int(federation.num_rounds * federation.local_steps)}


def unused_keys(cfg: DictConfig) -> list[str]:
    """The federation's keys set away from their defaults that a baseline does not use, and the strategy."""
    defaults = {field.name: field.default for field in fields(FederatedExperimentConfig)}
    unused = [f"federation.{key}" for key in UNUSED_KEYS if cfg.federation.get(key) != defaults[key]]
    if cfg.federation.num_sites > 1 or cfg.federation.mode == "pooled":
        unused.insert(0, f"strategy ({cfg.strategy._target_.rsplit('.', 1)[-1]}: one optimizer trains one model)")
        if cfg.get("evaluation") is not None and cfg.evaluation.cross_site:
            unused.append("evaluation.cross_site (one model: its per-site metrics are in site_metrics)")
    return unused


def describe(cfg: DictConfig, sites: BaselineSites) -> str:
    """One log line: what the baseline trains on, for how long, where it is evaluated, what it ignores."""
    federation = cfg.federation
    trained = ", ".join(name for name, _ in sites.trained)
    length = trainer_length(cfg)
    per_round = f"{federation.local_steps} steps" if federation.local_steps is not None else f"{federation.local_epochs} epoch(s)"
    amount = f"{length['max_steps']} steps" if "max_steps" in length else f"{length['max_epochs']} epochs"
    line = f"{federation.mode} baseline: trains on {trained} for {amount} (federation.num_rounds {federation.num_rounds} x {per_round})"
    if sites.evaluated:
        evaluated = ", ".join(name + (" (the server's held-out site)" if name == sites.held_out else "") for name, _ in sites.evaluated)
        line += f"; evaluated on {evaluated}"
    unused = unused_keys(cfg)
    return line + (f"; not used by a baseline: {', '.join(unused)}" if unused else "")
