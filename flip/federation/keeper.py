"""The server's record of a federated run: metrics per round and site, failures, checkpoints."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from flwr.app import ArrayRecord, ConfigRecord, Message
from rich.progress import Progress

from flip.audit.run_directory import ROUND_ENDED, SITE_FAILED, RunDirectory
from flip.privacy.accounting import PrivacyLedger
from flip.pooled_metrics import BINS, auroc as pooled_auroc
from flip.results import FEDERATED, SERVER, MetricsTable, is_interval, model_sha256
from flip.run_types import SiteReport

if TYPE_CHECKING:  # loads on first use: the simulation driver starts Flower before it
    import torch

log = logging.getLogger(__name__)
# A site's evaluate reply may carry its score counts per bin and class (flip.pooled_metrics).
SCORE_COUNTS = "score-counts"
COUNT_KINDS = ("positives", "negatives")
PRIVACY = "privacy"


def pooled_counts(messages: Iterable[Message]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per split, the sum over sites of their score counts. A site's reply is not trusted: counts
    that are not BINS non-negative integers per class are left out (and logged), never raised on."""
    pooled: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for message in messages:
        if SCORE_COUNTS not in message.content:
            continue
        counts = message.content[SCORE_COUNTS]
        for split in ("val", "test"):
            pair = [_counts(counts, f"{split}/{kind}") for kind in COUNT_KINDS]
            if pair[0] is None or pair[1] is None:
                if any(f"{split}/{kind}" in counts for kind in COUNT_KINDS):
                    log.warning("a site's %s score counts are not %d non-negative integers per class: left out", split, BINS)
                continue
            previous = pooled.get(split, (0, 0))
            pooled[split] = (previous[0] + pair[0], previous[1] + pair[1])
    return pooled


def _counts(record: Any, key: str) -> np.ndarray | None:
    value = record[key] if key in record else None
    if not isinstance(value, list) or len(value) != BINS or not all(type(n) is int and 0 <= n < 2**40 for n in value):
        return None
    return np.asarray(value, dtype=np.int64)


def site_report_of(message: Message) -> SiteReport:
    record = message.content["site"]
    return SiteReport(
        site=str(record["name"]),
        fingerprint=str(record["fingerprint"]),
        found=int(record["found"]),
        skipped=int(record["skipped"]),
        split_sizes=tuple(int(n) for n in record["split_sizes"]),
        label_counts=dict(zip(map(str, record["label_keys"]), map(int, record["label_counts"]))),
    )


def site_record(report: SiteReport, min_cohort: int = 1) -> ConfigRecord:
    """A site's counts and fingerprint in the form a reply carries them (no patient data).

    Label counts below the site's k (`min_cohort`) are left out, as small cells are in any
    published table.
    """
    labels = {label: n for label, n in report.label_counts.items() if n >= min_cohort}
    return ConfigRecord(
        {
            "name": report.site,
            "fingerprint": report.fingerprint,
            "found": report.found,
            "skipped": report.skipped,
            "split_sizes": list(report.split_sizes),
            "label_keys": list(labels),
            "label_counts": list(labels.values()),
        }
    )


@dataclass
class RoundKeeper:
    """Implements flip's RoundObserver and the end-of-round bookkeeping."""

    run_directory: RunDirectory
    monitor: str
    monitor_mode: str
    num_rounds: int
    server_evaluate: Callable[[dict[str, torch.Tensor]], dict[str, float]] | None = None
    progress: Progress | None = None
    ledger: PrivacyLedger | None = None
    table: MetricsTable = field(default_factory=MetricsTable)
    failures: list[dict[str, Any]] = field(default_factory=list)
    withheld: list[dict[str, Any]] = field(default_factory=list)
    sites: dict[int, SiteReport] = field(default_factory=dict)
    # The pooled score counts of the last evaluated round, per split: (positives, negatives).
    score_counts: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    best_round: int = 0
    best_value: float | None = None
    # The latest global weights and their round: what a run stopped early keeps.
    last_state: dict[str, torch.Tensor] | None = None
    last_round: int = 0
    # The model's hyperparameters, which every checkpoint carries (from the handshake).
    hparams: dict[str, Any] = field(default_factory=dict)
    # Every site's own name, by its index (from the handshake).
    site_names: list[str] = field(default_factory=list)
    # evaluation.cross_site: each site's last local model as it sent it, by index, and the matrix.
    keep_site_models: bool = False
    site_models: dict[int, ArrayRecord] = field(default_factory=dict)
    cross_site: list[dict[str, Any]] = field(default_factory=list)
    # job=evaluate: the checkpoint evaluated (its path and sha256).
    evaluated: dict[str, Any] = field(default_factory=dict)
    _task: Any = None
    _round_started: float = field(default_factory=time.perf_counter)

    def name(self, site: int) -> str:
        return self.site_names[site]

    # -- RoundObserver

    def before_train(self, server_round: int, sites: list[int], population: int | None = None) -> None:
        if self.ledger is not None:
            self.ledger.before_round(server_round, sites, population)

    def site_withheld(self, server_round: int, phase: str, site: int, reason: str) -> None:
        log.info("round %d: %s withheld its %s reply: %s", server_round, self.name(site), phase, reason)
        self.withheld.append({"round": server_round, "site": self.name(site), "phase": phase, "reason": reason})

    def site_failed(self, server_round: int, phase: str, site: int, error: str) -> None:
        log.error("round %d: %s failed in %s: %s", server_round, self.name(site), phase, error)
        failure = {"round": server_round, "site": self.name(site), "phase": phase, "error": error}
        self.failures.append(failure)
        self.run_directory.emit(SITE_FAILED, **failure)

    def train_replies(self, server_round: int, replies: list[tuple[int, Message]]) -> None:
        site_metrics = {}
        for site, message in replies:
            self.sites[site] = site_report_of(message)
            site_metrics[site] = dict(message.content["metrics"].items())
            if self.keep_site_models and "arrays" in message.content:
                self.site_models[site] = message.content["arrays"]
            for key, value in site_metrics[site].items():
                split, _, metric = key.partition("/")
                if metric and split in ("train", PRIVACY):
                    self.table.add(server_round, self.name(site), split, metric, value)
        if self.ledger is not None and self.ledger.plan.is_dp:
            epsilon = self.ledger.after_round([site for site, _ in replies], site_metrics)
            if epsilon is not None:
                self.table.add(server_round, FEDERATED, PRIVACY, "epsilon", epsilon)
                self.table.add(server_round, FEDERATED, PRIVACY, "delta", self.ledger.delta or float("nan"))

    def evaluate_replies(self, server_round: int, replies: list[tuple[int, Message]]) -> None:
        totals: dict[str, list[float]] = {}
        for site, message in replies:
            self.sites[site] = site_report_of(message)
            metrics = dict(message.content["metrics"].items())
            for key, value in metrics.items():
                split, _, metric = key.partition("/")
                if metric and metric != "n" and split in ("val", "test"):
                    self.table.add(server_round, self.name(site), split, metric, value)
                    if is_interval(metric):  # a site's own interval: no mean of them is one
                        continue
                    weight = float(metrics[f"{split}/n"])
                    sums = totals.setdefault(key, [0.0, 0.0])
                    sums[0] += weight * float(value)
                    sums[1] += weight
        pooled = pooled_counts(message for _, message in replies)
        for key, (weighted, weight) in totals.items():
            split, _, metric = key.partition("/")
            if metric == "auroc" and split in pooled:  # of the pooled predictions, not a mean of sites'
                value = pooled_auroc(*pooled[split])
                if value is not None:
                    self.table.add(server_round, FEDERATED, split, metric, value)
                    continue
            if weight > 0:
                self.table.add(server_round, FEDERATED, split, metric, weighted / weight)
        if pooled:
            self.score_counts = {split: (list(map(int, p)), list(map(int, n))) for split, (p, n) in pooled.items()}

    # -- end of round (Flower's evaluate_fn slot: called after round 0 and after every round)

    def end_round(self, server_round: int, arrays: ArrayRecord) -> None:
        now = time.perf_counter()
        if server_round > 0:  # training, aggregation and site evaluation of the round
            self.table.add(server_round, SERVER, "time", "round_s", now - self._round_started)
        import torch  # noqa: F401  (Flower converts to tensors only once torch is loaded)

        state = arrays.to_torch_state_dict()
        self.last_state, self.last_round = state, server_round
        if self.server_evaluate is not None:
            for key, value in self.server_evaluate(state).items():
                split, _, metric = key.partition("/")
                self.table.add(server_round, SERVER, split, metric, value)
        if server_round == 0:
            self.run_directory.emit(ROUND_ENDED, round=0, model_sha256=model_sha256(state), metrics=self._round_metrics(0))
            self._round_started = time.perf_counter()
            return
        digest = self.run_directory.save_round(server_round, state, self.hparams)
        value = self.monitored(server_round)
        if value is not None and (self.best_value is None or self._better(value, self.best_value)):
            self.best_round, self.best_value = server_round, value
            self.run_directory.mark_best(server_round)
        self.run_directory.emit(ROUND_ENDED, round=server_round, model_sha256=digest, metrics=self._round_metrics(server_round))
        self._advance(server_round, value)
        self._round_started = time.perf_counter()

    def _round_metrics(self, server_round: int) -> dict[str, float]:
        """The round's global metrics (federated aggregates and the server's own) and each site's."""
        return {
            f"{site}:{split}/{metric}": value
            for round_, site, split, metric, value in self.table.rows
            if round_ == server_round and split != "time"
        }

    def resume_at(self, server_round: int, arrays: ArrayRecord) -> None:
        """A resumed run starts from round `server_round`'s weights (its records are restored already)."""
        import torch  # noqa: F401

        self.last_state, self.last_round = arrays.to_torch_state_dict(), server_round
        self._round_started = time.perf_counter()

    def monitored(self, server_round: int) -> float | None:
        """The monitored metric of a round: the federated aggregate, else the server's own."""
        for site in (FEDERATED, SERVER):
            values = self.table.at_round(server_round, self.monitor.partition("/")[0], site)
            if self.monitor in values:
                return values[self.monitor]
        return None

    def _better(self, value: float, best: float) -> bool:
        return value > best if self.monitor_mode == "max" else value < best

    def _advance(self, server_round: int, value: float | None) -> None:
        if self.progress is None:  # no display here (a deployment's server): one log line per round
            shown = "n/a" if value is None else f"{value:.4f}"
            log.info("round %d/%d done · %s %s", server_round, self.num_rounds, self.monitor, shown)
            return
        if self._task is None:
            self._task = self.progress.add_task("federated rounds", total=self.num_rounds)
        shown = "n/a" if value is None else f"{value:.4f}"
        self.progress.update(
            self._task, completed=server_round, description=f"round {server_round}/{self.num_rounds} · {self.monitor} {shown}"
        )
