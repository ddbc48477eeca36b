"""Models evaluated at every site outside the training rounds: cross-site evaluation after the
last round (`evaluation.cross_site`) and evaluation-only runs (`job=evaluate`).

Each site evaluates each model on its own validation and test splits with the same `evaluate`
handler as in a round, and sends back metrics only. The server adds its own evaluation of each
model when it holds a site's data (`federation.server_eval_site`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from flip.federation.strategy import WITHHELD, error_summary
from flip.results import GLOBAL_MODEL

if TYPE_CHECKING:
    from flip.federation.keeper import RoundKeeper

log = logging.getLogger(__name__)
CROSS_SITE = "cross-site"
EVALUATED = "checkpoint"  # the model of an evaluation-only run


@dataclass
class Evaluations:
    """What every site said of every model: metrics by model and site, and the usable replies."""

    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    replies: dict[str, list[tuple[int, Message]]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One row per model, site, split and metric (cross_site.csv)."""
        found = []
        for model in sorted(self.metrics, key=lambda name: (name != GLOBAL_MODEL, name)):
            for site, metrics in sorted(self.metrics[model].items()):
                for key, value in sorted(metrics.items()):
                    split, _, metric = key.partition("/")
                    if metric and metric != "n" and split in ("val", "test"):
                        found.append({"model": model, "site": site, "split": split, "metric": metric, "value": float(value)})
        return found


def evaluate_everywhere(
    grid: Any,
    node_to_site: dict[int, int],
    keeper: RoundKeeper,
    models: dict[str, ArrayRecord],
    shipped: dict[str, Any],
    server_round: int,
    timeout: float,
    phase: str = CROSS_SITE,
    server_name: str | None = None,
) -> Evaluations:
    """Every model in `models` evaluated at every site (and by the server on its own data, as
    `server_name`); a site that fails or withholds is reported to the keeper and left out."""
    outbox: list[tuple[str, int, Message]] = []
    for model, arrays in models.items():
        for node, site in sorted(node_to_site.items(), key=lambda pair: pair[1]):
            content = RecordDict({"arrays": arrays, "config": ConfigRecord({**shipped, "server-round": server_round})})
            outbox.append((model, site, Message(content, dst_node_id=node, message_type=MessageType.EVALUATE)))
    received = list(grid.send_and_receive([message for *_, message in outbox], timeout=timeout))
    sent = {message.metadata.message_id: (model, site) for model, site, message in outbox}
    found = Evaluations()
    answered = set()
    for reply in received:
        model, site = sent.get(reply.metadata.reply_to_message_id, (None, None))
        if model is None:
            continue
        answered.add((model, site))
        if reply.has_error():
            keeper.site_failed(server_round, f"{phase} ({model})", site, error_summary(reply.error.reason))
        elif WITHHELD in reply.content:
            keeper.site_withheld(server_round, f"{phase} ({model})", site, str(reply.content[WITHHELD]["reason"]))
        else:
            found.replies.setdefault(model, []).append((site, reply))
            metrics = reply.content["metrics"] if "metrics" in reply.content else {}
            # A site's reply is not trusted: only numbers are metrics.
            numbers = {str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            found.metrics.setdefault(model, {})[keeper.name(site)] = numbers
    for model, site, _ in outbox:
        if (model, site) not in answered:
            keeper.site_failed(server_round, f"{phase} ({model})", site, "no reply before federation.round_timeout")
    if keeper.server_evaluate is not None and server_name:
        for model, arrays in models.items():
            found.metrics.setdefault(model, {})[server_name] = keeper.server_evaluate(arrays.to_torch_state_dict())
    for model in found.replies:
        found.replies[model].sort(key=lambda pair: pair[0])
    return found


def run_cross_site(
    grid: Any,
    node_to_site: dict[int, int],
    keeper: RoundKeeper,
    final: ArrayRecord,
    shipped: dict[str, Any],
    timeout: float,
    server_name: str | None,
    save: Callable[[str, dict], None],
) -> list[dict[str, Any]]:
    """The final global model and each site's last local model, evaluated at every site."""
    import torch  # noqa: F401  (Flower converts to tensors only once torch is loaded)

    models = {GLOBAL_MODEL: final}
    for index in sorted(keeper.site_models):
        name = keeper.name(index)
        models[name] = keeper.site_models[index]
        save(name, keeper.site_models[index].to_torch_state_dict())
    log.info("cross-site evaluation: %d models at %d sites", len(models), len(node_to_site))
    found = evaluate_everywhere(grid, node_to_site, keeper, models, shipped, keeper.last_round, timeout, CROSS_SITE, server_name)
    return found.rows()
