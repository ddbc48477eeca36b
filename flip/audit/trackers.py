"""The trackers a run can be mirrored to, each through its Lightning logger: CSV, TensorBoard, MLflow.

A backend knows where it writes (`where`, shown in warnings) before it imports anything; `open`
imports Lightning (and MLflow) and connects; `add_files` adds the run's records (the config, the
manifest, the summary, the plots) its own way; `register_model` puts the final model in a model
registry (MLflow only). Any failure raises: `flip.audit.tracking` turns it into one warning.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from flip.errors import FlipError

# Artifacts' folders: a file goes to `<folder>/<name>` ("" for the top).
CONFIG_FOLDER, PLOTS_FOLDER, MODEL_FOLDER = "config", "plots", "model"
SQLITE = "sqlite:///"


@dataclass(frozen=True)
class RunIdentity:
    """What a tracker calls the run: its folder for local files, its experiment, name and tags."""

    logs: Path
    experiment: str
    run_name: str
    tags: dict[str, str] = field(default_factory=dict)


class Backend:
    """One tracker: a Lightning logger (`self.logger` once open) and what it does with files."""

    kind = ""
    # The module its Lightning logger needs, and the extra that installs it.
    needs: tuple[str, str] | None = None

    def __init__(self, settings: Mapping[str, Any], run: RunIdentity):
        self.settings, self.run = settings, run
        self.logger: Any = None

    @property
    def where(self) -> str:
        return str(self.run.logs / self.kind)

    def open(self) -> None:
        raise NotImplementedError

    def add_files(self, files: list[tuple[Path, str]]) -> None:
        """The run's records as (path, folder) pairs; a backend keeps what it can show."""

    def register_model(self, checkpoint: Path, name: str) -> str:
        raise FlipError(f"logger.register_model: the {self.kind} tracker has no model registry (logger=mlflow has one)")


class CsvBackend(Backend):
    """Lightning's CSVLogger: `logs/csv/metrics.csv` (one row per round) and `hparams.yaml`.
    The records it would add are in the run directory beside it."""

    kind = "csv"

    def open(self) -> None:
        from lightning.pytorch.loggers import CSVLogger

        self.logger = CSVLogger(self.run.logs, name=self.kind, version="")


class TensorBoardBackend(Backend):
    """Lightning's TensorBoardLogger: event files in `logs/tensorboard/`; the config as text and
    the plots as images."""

    kind = "tensorboard"
    needs = ("tensorboard", "flip-fl[tensorboard]")

    def open(self) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        self.logger = TensorBoardLogger(self.run.logs, name=self.kind, version="", default_hp_metric=False)

    def add_files(self, files: list[tuple[Path, str]]) -> None:
        import numpy as np
        from PIL import Image  # matplotlib's own dependency

        writer = self.logger.experiment
        for path, folder in files:
            tag = f"{folder or 'run'}/{path.name}"
            if path.suffix == ".yaml":
                text = path.read_text(encoding="utf-8")
                writer.add_text(tag, "".join(f"    {line}\n" for line in text.splitlines()))  # Markdown: a code block
            elif path.suffix == ".png":
                with Image.open(path) as image:
                    writer.add_image(f"{folder}/{path.stem}", np.asarray(image.convert("RGB")), dataformats="HWC")
        writer.flush()


class MlflowBackend(Backend):
    """Lightning's MLFlowLogger on a tracking server or store; the records as artifacts, the final
    model in the model registry. With no `tracking_uri`, a SQLite store in `logs/mlflow/`."""

    kind = "mlflow"
    needs = ("mlflow", "flip-fl[mlflow]")

    @property
    def local_store(self) -> Path:
        return self.run.logs / self.kind

    @property
    def where(self) -> str:
        uri = self.settings.get("tracking_uri")
        return str(uri) if uri else f"{SQLITE}{(self.local_store / 'mlflow.db').resolve()}"

    def open(self) -> None:
        # An unreachable server is given up at once rather than retried for minutes; a retry
        # count set in MLflow's own environment variable wins.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(float(self.settings.get("request_timeout") or 10))))
        artifacts = None
        if self.where.startswith(SQLITE):  # a new experiment's artifacts go beside the database, not in the cwd
            database = Path(self.where.removeprefix(SQLITE))
            database.parent.mkdir(parents=True, exist_ok=True)
            artifacts = (database.parent / "artifacts").resolve().as_uri()
        for name in ("alembic", "mlflow.store.db.utils"):  # a new store's set-up, line by line
            logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # SQLAlchemy's, about MLflow's store
            from lightning.pytorch.loggers import MLFlowLogger
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.where)
            if client.get_experiment_by_name(self.run.experiment) is None:
                try:
                    client.create_experiment(self.run.experiment, artifact_location=artifacts)
                except MlflowException:  # made meanwhile (another job of a sweep)
                    if client.get_experiment_by_name(self.run.experiment) is None:
                        raise
            self.logger = MLFlowLogger(
                experiment_name=self.run.experiment, run_name=self.run.run_name, tracking_uri=self.where, tags=self.run.tags
            )
            self.logger.experiment  # noqa: B018  (starts the run: a tracker that cannot be reached fails here)

    def add_files(self, files: list[tuple[Path, str]]) -> None:
        client, run_id = self.logger.experiment, self.logger.run_id
        for path, folder in files:
            client.log_artifact(run_id, str(path), folder or None)

    def register_model(self, checkpoint: Path, name: str) -> str:
        from mlflow.exceptions import MlflowException

        client, run_id = self.logger.experiment, self.logger.run_id
        client.log_artifact(run_id, str(checkpoint), MODEL_FOLDER)
        try:
            client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_FOLDER}"
        return str(client.create_model_version(name, source, run_id=run_id, tags=self.run.tags).version)


BACKENDS: dict[str, type[Backend]] = {backend.kind: backend for backend in (CsvBackend, TensorBoardBackend, MlflowBackend)}


def missing_package(kind: str) -> str | None:
    """Why the tracker `kind` cannot run here (its package is not installed), or None; imports nothing."""
    from importlib.util import find_spec

    backend = BACKENDS.get(kind)
    if backend is None or backend.needs is None or find_spec(backend.needs[0]) is not None:
        return None
    return f"logger={kind} needs the {backend.needs[0]} package, which is not installed: pip install '{backend.needs[1]}'"


def backend_for(settings: Mapping[str, Any], run: RunIdentity) -> Backend:
    kind = str(settings.get("kind"))
    if kind not in BACKENDS:
        raise FlipError(f"logger.kind: {kind!r} is not a tracker (available: none, {', '.join(BACKENDS)})")
    return BACKENDS[kind](settings, run)
