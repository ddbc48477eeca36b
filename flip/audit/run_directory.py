"""The run directory: its layout, its one writer and its readers, the same in every mode.

Every file a run leaves is written through `RunDirectory`: checkpoints (one format, read by
`Model.load_from_checkpoint`), the event stream (`events.jsonl`, and the in-process listeners
that trackers, plots and reports subscribe to), metrics, summary and manifest. `flip report`
and `flip audit` read through the same module.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from flip.audit.manifest import file_sha256, now_iso
from flip.errors import FlipError
from flip.results import METRICS_COLUMNS, MetricsTable, model_sha256, write_json

if TYPE_CHECKING:
    import torch

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
METRICS = "metrics.csv"
EVENTS = "events.jsonl"
CHECKPOINTS = "checkpoints"
HYDRA = ".hydra"
FINAL = "final.ckpt"
BEST = "best.ckpt"
SITE_MODELS = "sites"  # under checkpoints/: each site's last local model (evaluation.cross_site)
# A deployment server's config as received: its sha256 is the run's config hash (what sites approve).
SHIPPED_CONFIG = "shipped_config.json"
# A copy of the recipe as it was, for when the original moves or changes (`flip audit reproduce`).
RECIPE_COPY = "recipe.yaml"
# Trackers' own output (Lightning loggers, a local MLflow store): a mirror of the records, which a
# tracker may still change after the manifest is sealed, so the manifest does not list it.
TRACKERS = "logs"

# What an event says happened; its other fields depend on the kind.
RUN_STARTED, ROUND_ENDED, SITE_FAILED, RUN_ENDED = "run_started", "round_ended", "site_failed", "run_ended"
EventListener = Callable[[dict[str, Any]], None]


def round_checkpoint(round_: int) -> str:
    return f"round_{round_}.ckpt"


class RunDirectory:
    """The only writer of one run directory's files."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._listeners: list[EventListener] = []

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    # -- events

    def subscribe(self, listener: EventListener) -> None:
        """Call `listener(event)` for every event from now on (in the writing process)."""
        self._listeners.append(listener)

    def emit(self, kind: str, **fields: Any) -> None:
        """Append one event to events.jsonl and hand it to the listeners."""
        event = {"event": kind, "at": now_iso(), **fields}
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / EVENTS).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(event, sort_keys=True, default=str) + "\n")
        for listener in self._listeners:
            listener(event)

    # -- checkpoints

    def save_round(self, round_: int, state: Mapping[str, torch.Tensor], hparams: Mapping[str, Any]) -> str:
        """`round_<round>.ckpt` of the global model after `round_`; returns the model's sha256."""
        self._save_checkpoint(self.checkpoints / round_checkpoint(round_), state, hparams, round_)
        return model_sha256(state)

    def mark_best(self, round_: int) -> None:
        """`best.ckpt` becomes a copy of round `round_`'s checkpoint."""
        shutil.copyfile(self.checkpoints / round_checkpoint(round_), self.checkpoints / BEST)

    def save_final(self, round_: int, state: Mapping[str, torch.Tensor], hparams: Mapping[str, Any]) -> str:
        self._save_checkpoint(self.checkpoints / FINAL, state, hparams, round_)
        return model_sha256(state)

    def save_site_model(self, site: str, state: Mapping[str, torch.Tensor], hparams: Mapping[str, Any], round_: int) -> str:
        """`sites/<site>.ckpt`: a site's last local model, as cross-site evaluation evaluated it."""
        if not is_plain_name(site):
            raise FlipError(f"cannot save the model of site {site!r}: not a plain site name")
        self._save_checkpoint(self.checkpoints / SITE_MODELS / f"{site}.ckpt", state, hparams, round_)
        return model_sha256(state)

    def _save_checkpoint(self, path: Path, state: Mapping[str, torch.Tensor], hparams: Mapping[str, Any], round_: int) -> None:
        """Weights and the model's hyperparameters: what `Model.load_from_checkpoint` needs."""
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "state_dict": dict(state),
            "hyper_parameters": dict(hparams),
            "pytorch-lightning_version": version("lightning"),
            "epoch": round_,
            "global_step": round_,
        }
        temporary = path.with_suffix(".tmp")
        torch.save(payload, temporary)
        os.replace(temporary, path)

    # -- records

    def write_json(self, name: str, payload: Mapping[str, Any]) -> None:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(path.suffix + ".tmp")
        write_json(temporary, payload)
        os.replace(temporary, path)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Any other file of the run (atomically: a reader sees the old or the new one)."""
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)

    def write_metrics(self, table: MetricsTable) -> None:
        table.write_csv(self.path / METRICS)

    def file_hashes(self) -> dict[str, str]:
        """sha256 of every file in the directory but the manifest and the trackers' own, by relative POSIX path."""
        return {relative: file_sha256(self.path / relative) for relative in sealed_files(self.path)}


# -- readers


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict of a flip checkpoint (or a Lightning one)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def sealed_files(run_dir: Path) -> list[str]:
    """The files a completed manifest lists (relative POSIX paths): all but itself and `logs/`."""
    relatives = sorted(path.relative_to(run_dir).as_posix() for path in run_dir.rglob("*") if path.is_file())
    return [relative for relative in relatives if relative != MANIFEST and not relative.startswith(f"{TRACKERS}/")]


def is_plain_name(name: str) -> bool:
    """A name that is one file name and nothing more: letters, digits, '-', '_', '.', not hidden."""
    return bool(name) and not name.startswith(".") and all(c.isalnum() or c in "-_." for c in name)


def is_run_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file() or (path / SUMMARY).is_file()


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`, or FlipError naming the file and what is wrong."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FlipError(f"{path}: missing (the run's {what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FlipError(f"cannot read {what} {path}: {error}") from error
    if not isinstance(value, dict):
        raise FlipError(f"cannot read {what} {path}: expected a JSON object")
    return value


def read_summary(run_dir: Path) -> dict[str, Any]:
    return read_json(run_dir / SUMMARY, "run summary")


def read_manifest(run_dir: Path) -> dict[str, Any]:
    return read_json(run_dir / MANIFEST, "manifest")


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / EVENTS
    if not path.is_file():
        return []
    events = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise FlipError(f"{path}:{number}: not a JSON event ({error})") from error
    return events


def read_metric_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv's rows as dicts (round, site, split, metric, value), or FlipError naming the file."""
    path = run_dir / METRICS
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != METRICS_COLUMNS:
                raise FlipError(f"cannot read metrics {path}: its columns are {reader.fieldnames}, expected {list(METRICS_COLUMNS)}")
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise FlipError(f"cannot read metrics {path}: {error}") from error


def read_overrides(run_dir: Path) -> list[str]:
    """The run's Hydra overrides as given (empty when the run has none recorded)."""
    import yaml

    path = run_dir / HYDRA / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        items = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise FlipError(f"cannot read overrides {path}: {error}") from error
    if not isinstance(items, list):
        raise FlipError(f"cannot read overrides {path}: expected a YAML list")
    return [str(item) for item in items]


def in_trackers(path: Path) -> bool:
    """Whether `path` lies in a run directory's `logs/` (a local MLflow store copies the records there)."""
    return any(parent.name == TRACKERS and is_run_dir(parent.parent) for parent in path.parents)


def find_run_dirs(paths: list[Path], marker: str = SUMMARY) -> list[Path]:
    """Every run directory (a folder with `marker`) at or below `paths` (a run, a sweep, a folder
    of them), in natural order."""
    import re

    def natural(path: Path) -> list[Any]:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]

    found: set[Path] = set()
    for path in map(Path, paths):
        if not path.is_dir():
            raise FlipError(f"not a directory: {path}")
        matches = {file.parent.resolve() for file in path.rglob(marker) if not in_trackers(file)}
        if not matches:
            raise FlipError(f"no run directory (a folder with {marker}) found under {path}")
        found |= matches
    return sorted(found, key=natural)
