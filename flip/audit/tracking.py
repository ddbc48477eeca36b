"""A run's tracker: its rounds, records and final model mirrored to a Lightning logger.

The tracker listens to the run directory's events, so every mode is tracked alike and under the
same names. The step is the round (a local run's epoch is its round). The global model's metrics
are `<split>/<metric>` (a federated run's aggregate over sites, a local or pooled run's own), the
server's evaluation `server/<split>/<metric>`, a site's `<site>/<split>/<metric>` (in a local
or pooled baseline: the model on each site it was evaluated on). A round is
logged when it ends; when the run ends, whatever else metrics.csv holds (a local run's final
test; round times aside), then the records as files and, if asked, the final model in the registry.

It opens (imports Lightning, connects) when the first round is in, not at start, so a
federation's start-up does not wait for it. It never stops a run: a tracker that cannot be
reached, or fails later, turns itself off with one warning naming it and where it writes, and
the run directory is what it would have been.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

from flip.audit.run_directory import (
    CHECKPOINTS,
    FINAL,
    HYDRA,
    MANIFEST,
    METRICS,
    ROUND_ENDED,
    SHIPPED_CONFIG,
    SUMMARY,
    TRACKERS,
    RunDirectory,
    read_metric_rows,
)
from flip.audit.trackers import CONFIG_FOLDER, PLOTS_FOLDER, Backend, RunIdentity, backend_for, missing_package
from flip.results import CROSS_SITE_CSV, CROSS_SITE_PNG, FEDERATED

log = logging.getLogger(__name__)
# metrics.csv's split of round times: not the model's, and left out of round events too.
TIMINGS = "time"
# How a run's end reads in a Lightning logger's `finalize`.
FINAL_STATUS = {"completed": "success", "failed": "failed", "interrupted": "KILLED"}


def metric_name(key: str, own: Collection[str] = ()) -> str:
    """A tracker's name for a metric key, `<site>:<split>/<metric>` (a local run's round events
    carry no site): a site's own name unless it is `federated` or one of `own`, the sites whose
    rows are the run's own model's in a local or pooled run."""
    site, _, name = key.rpartition(":")
    return name if not site or site == FEDERATED or site in own else f"{site}/{name}"


def own_sites(rows: list[dict[str, str]]) -> set[str]:
    """The site(s) of a local or pooled run's own model in metrics.csv: the one that trained (the
    others are sites it was evaluated on); in an evaluation-only run, its one site."""
    trained = {row["site"] for row in rows if row["split"] == "train"}
    every = {row["site"] for row in rows}
    return trained or (every if len(every) == 1 else set())


class Tracker:
    """Feeds one backend from a run directory (subscribe it to the directory's events)."""

    def __init__(self, backend: Backend, directory: RunDirectory, params: Mapping[str, Any], local: bool):
        self.backend, self.directory, self.params, self.local = backend, directory, params, local
        self.opened = self.off = False
        self._pending: list[tuple[int, dict[str, float]]] = []
        self._logged: set[tuple[str, int]] = set()

    @property
    def label(self) -> str:
        return f"tracker {self.backend.kind} ({self.backend.where})"

    def __call__(self, event: dict[str, Any]) -> None:
        if self.off or event.get("event") != ROUND_ENDED:
            return
        round_ = int(event["round"])
        self._pending.append((round_, {metric_name(k): v for k, v in (event.get("metrics") or {}).items()}))
        if round_ >= 1:
            self._guarded(f"failed while logging round {round_}", self._flush)

    def finish(self, status: str) -> None:
        """Log what is left and add the records and the model (before the run's log is sealed)."""
        self._guarded("failed at the end of the run", lambda: self._finish(status))

    def close(self, status: str) -> None:
        """Add the manifest and end the tracker's run, once the manifest is sealed. The run's log
        file is sealed too, so nothing is logged now: a failure is told on stderr."""
        if self.off or not self.opened:
            return
        before = logging.root.manager.disable
        logging.disable(logging.CRITICAL)
        try:
            self.backend.add_files([(self.directory.path / MANIFEST, "")])
            self.backend.logger.finalize(FINAL_STATUS.get(status, status))
        except Exception as error:  # noqa: BLE001
            self.off = True
            print(f"flip: {self.label} failed adding the manifest: {_first_line(error)}", file=sys.stderr)
        finally:
            logging.disable(before)

    # --

    def _guarded(self, failed: str, action: Callable[[], None]) -> None:
        if self.off:
            return
        try:
            action()
        except Exception as error:  # noqa: BLE001  (whatever a tracker raises, the run goes on)
            self.off = True
            log.warning("%s %s: %s; it is off for the rest of this run, which goes on", self.label, failed, _first_line(error))

    def _open(self) -> bool:
        """Open the backend once; False (after one warning) when it cannot be."""
        if not self.opened:
            missing = missing_package(self.backend.kind)
            if missing:
                self.off = True
                log.warning("%s: %s; the run goes on without it", self.label, missing)
                return False
            try:
                self.backend.open()
            except Exception as error:  # noqa: BLE001
                self.off = True
                log.warning("%s cannot be reached: %s; the run goes on without it", self.label, _first_line(error))
                return False
            self.opened = True
            self.backend.logger.log_hyperparams(dict(self.params))
            log.info("tracking this run with %s", self.label)
        return True

    def _flush(self) -> None:
        if self._open():
            for step, metrics in self._pending:
                self._log(step, metrics)
            self._pending.clear()
            self.backend.logger.save()  # what a CSV or TensorBoard reader sees while the run goes on

    def _log(self, step: int, metrics: Mapping[str, Any]) -> None:
        new = {name: float(value) for name, value in metrics.items() if value is not None and (name, step) not in self._logged}
        if new:
            self.backend.logger.log_metrics(new, step=step)
            self._logged.update((name, step) for name in new)

    def _finish(self, status: str) -> None:
        self._flush()
        if self.off:
            return
        run_dir = self.directory.path
        if (run_dir / METRICS).is_file():
            rows = [row for row in read_metric_rows(run_dir) if row["split"] != TIMINGS]
            own = own_sites(rows) if self.local else set()
            by_round: dict[int, dict[str, float]] = defaultdict(dict)
            for row in rows:
                key = f"{row['site']}:{row['split']}/{row['metric']}"
                by_round[int(row["round"])][metric_name(key, own)] = float(row["value"])
            for step in sorted(by_round):
                self._log(step, by_round[step])
        self.backend.add_files([(path, folder) for path, folder in record_files(run_dir) if path.name != MANIFEST])
        name = self.backend.settings.get("register_model")
        final = run_dir / CHECKPOINTS / FINAL
        if name and status == "completed":
            if not final.is_file():
                log.warning("%s: no %s on this machine: the model is not registered", self.label, final)
            else:
                version = self.backend.register_model(final, str(name))
                log.info("registered the final model as %r version %s", name, version)


def _first_line(error: BaseException) -> str:
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def record_files(run_dir: Path) -> list[tuple[Path, str]]:
    """The run's records a tracker adds, as (path, folder): the config files, the manifest, the
    summary, metrics.csv, the cross-site table and the plots (whichever exist)."""
    config = sorted((run_dir / HYDRA).glob("*.yaml")) + [run_dir / SHIPPED_CONFIG]
    files = [(path, CONFIG_FOLDER) for path in config]
    files += [(run_dir / name, "") for name in (MANIFEST, SUMMARY, METRICS, CROSS_SITE_CSV, CROSS_SITE_PNG)]
    files += [(path, PLOTS_FOLDER) for path in sorted((run_dir / PLOTS_FOLDER).glob("*.png"))]
    return [(path, folder) for path, folder in files if path.is_file()]


def start_tracking(
    settings: Mapping[str, Any] | None,
    directory: RunDirectory,
    *,
    local: bool,
    recipe: str | None,
    tags: Mapping[str, Any],
    params: Mapping[str, Any],
) -> Tracker | None:
    """The run's tracker, subscribed to `directory`'s events; None when `settings` (the resolved
    `logger` node) asks for none."""
    if not settings or str(settings.get("kind", "none")) == "none":
        return None
    run_dir = directory.path
    run = RunIdentity(
        logs=run_dir / TRACKERS,
        experiment=str(settings.get("experiment_name") or recipe or "flip"),
        run_name=str(settings.get("run_name") or "/".join(run_dir.resolve().parts[-2:])),
        tags={key: str(value) for key, value in tags.items() if value is not None},
    )
    tracker = Tracker(backend_for(settings, run), directory, params, local)
    directory.subscribe(tracker)
    return tracker
