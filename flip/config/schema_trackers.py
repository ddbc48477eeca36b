"""Schemas of the `logger` group: where a run's metrics, records and model are mirrored (a tracker).

A tracker belongs to whoever writes the run directory (`flip run`, a deployment's server); a site
never tracks, whatever its received config says. `flip.audit.tracking` feeds the tracker.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, Optional
from urllib.parse import urlsplit


class TrackerKind(Enum):
    none = "none"
    csv = "csv"
    tensorboard = "tensorboard"
    mlflow = "mlflow"


@dataclass
class NoTrackerConfig:
    """No tracker: the run directory's own records only."""

    kind: TrackerKind = TrackerKind.none


@dataclass
class CsvTrackerConfig:
    """Lightning's CSVLogger: one row per round in `<run_dir>/logs/csv/metrics.csv`."""

    kind: TrackerKind = TrackerKind.csv


@dataclass
class TensorBoardTrackerConfig:
    """Lightning's TensorBoardLogger: event files in `<run_dir>/logs/tensorboard/`."""

    kind: TrackerKind = TrackerKind.tensorboard


@dataclass
class MlflowTrackerConfig:
    """Lightning's MLFlowLogger: a tracking server, or a local store."""

    kind: TrackerKind = TrackerKind.mlflow
    # null: a local store in the run directory (`sqlite:///<run_dir>/logs/mlflow/mlflow.db`);
    # else an MLflow tracking URI (http(s)://host:port, sqlite:///path/mlflow.db, databricks).
    # Credentials go in MLflow's environment (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN), never here.
    tracking_uri: Optional[str] = None
    # null: the recipe's name, else "flip".
    experiment_name: Optional[str] = None
    # null: the run directory's last two parts (`<date>/<time>_<name>`, `<sweep>/<job>`).
    run_name: Optional[str] = None
    # Register the final model (checkpoints/final.ckpt) under this name in the model registry.
    register_model: Optional[str] = None
    # Seconds an MLflow request may take. A tracker that cannot be reached is given up at once
    # (no retries, unless MLFLOW_HTTP_REQUEST_MAX_RETRIES says otherwise) and the run goes on.
    request_timeout: float = 10.0


SCHEMAS: Dict[str, type] = {
    "logger/none": NoTrackerConfig,
    "logger/csv": CsvTrackerConfig,
    "logger/tensorboard": TensorBoardTrackerConfig,
    "logger/mlflow": MlflowTrackerConfig,
}


def tracker_problems(logger: Any) -> list[str]:
    """Rules of the `logger` group that span its keys."""
    if logger is None or logger.get("kind") is None:
        return []
    problems = []
    uri = logger.get("tracking_uri")
    if uri:
        parts = urlsplit(str(uri))
        if parts.username or parts.password:
            problems.append(
                "logger.tracking_uri: holds credentials, which would be written to the manifest: "
                "give them in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD instead"
            )
    for key in ("experiment_name", "run_name", "register_model"):
        if key in logger and logger[key] is not None and not str(logger[key]).strip():
            problems.append(f"logger.{key}: is empty (null picks the default)")
    if logger.get("request_timeout") is not None and logger.request_timeout <= 0:
        problems.append(f"logger.request_timeout: must be positive, got {logger.request_timeout}")
    return problems
