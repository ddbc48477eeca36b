"""Trackers read back with their own readers: the session's local run from its MLflow store
(MLflow's client), the session's simulation from its TensorBoard event files; an unreachable
tracker, and one that fails mid-run, turn themselves off and the run goes on."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import socket
from pathlib import Path

import pytest

from flip.audit.run_directory import RunDirectory, find_run_dirs
from flip.audit.trackers import CsvBackend, RunIdentity
from flip.audit.tracking import Tracker, metric_name, own_sites
from flip.audit.verify import verify
from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import config_problems
from tests.conftest import FAST_OVERRIDES, flip_cli

FLOAT32 = 1e-6  # TensorBoard keeps scalars as float32


def metric_rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "metrics.csv").open(encoding="utf-8")))


def tracked_name(row: dict[str, str], own: set[str] = frozenset()) -> str:
    return metric_name(f"{row['site']}:{row['split']}/{row['metric']}", own)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- names


def test_metric_names_are_the_same_in_every_mode():
    assert metric_name("val/auroc") == "val/auroc"  # a local run's round event
    assert metric_name("site-1:val/auroc", own={"site-1"}) == "val/auroc"  # a local run's metrics.csv row
    assert metric_name("site-3:test/auroc", own={"site-1"}) == "site-3/test/auroc"  # its model on another site
    assert metric_name("federated:val/auroc") == "val/auroc"
    assert metric_name("server:test/loss") == "server/test/loss"
    assert metric_name("site-2:train/loss") == "site-2/train/loss"
    rows = [{"site": "pooled", "split": "train"}, {"site": "site-1", "split": "test"}]
    assert own_sites(rows) == {"pooled"} and own_sites([{"site": "site-1", "split": "val"}]) == {"site-1"}


# -- MLflow: the session's local run, tracked into a store in its run directory


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*noload.*:DeprecationWarning")  # SQLAlchemy's, about MLflow's store
def test_mlflow_holds_the_local_runs_metrics_records_and_model(local_run, tmp_path):
    from mlflow.tracking import MlflowClient

    store = local_run / "logs" / "mlflow"
    uri = f"sqlite:///{(store / 'mlflow.db').resolve()}"
    client = MlflowClient(uri, registry_uri=uri)
    summary = json.loads((local_run / "summary.json").read_text())
    experiment = client.get_experiment_by_name("dicom_synthetic_local")  # the recipe's name
    (run,) = client.search_runs([experiment.experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_name == "/".join(local_run.parts[-2:])
    assert run.data.tags["flip.config_sha256"] == summary["config_sha256"] and run.data.tags["flip.mode"] == "local"
    assert run.data.params["seed"] == "42" and run.data.params["logger/kind"] == "mlflow"

    # Every row of metrics.csv, under its tracker name, with the round as the step.
    rows = metric_rows(local_run)
    assert {tracked_name(row, {"site-1"}) for row in rows} >= {"train/loss", "val/auroc", "test/accuracy"}
    for row in rows:
        history = {(m.step, m.value) for m in client.get_metric_history(run_id, tracked_name(row, {"site-1"}))}
        assert (int(row["round"]), float(row["value"])) in history, row
    assert set(run.data.metrics) == {tracked_name(row, {"site-1"}) for row in rows}

    # The records, the sealed manifest among them, as artifacts.
    listed = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "config")}
    listed |= {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"manifest.json", "summary.json", "metrics.csv", "config/config.yaml", "plots/monitor.png"} <= listed
    manifest = Path(client.download_artifacts(run_id, "manifest.json", str(tmp_path)))
    assert sha256(manifest) == sha256(local_run / "manifest.json")
    assert json.loads(manifest.read_text())["status"] == "completed"

    # The final model is registered, as the very checkpoint the run wrote.
    (version,) = client.search_model_versions("name='flip-local'")
    assert version.run_id == run_id and version.status == "READY"
    model = Path(client.download_artifacts(run_id, "model/final.ckpt", str(tmp_path)))
    assert sha256(model) == sha256(local_run / "checkpoints" / "final.ckpt")


@pytest.mark.slow
def test_a_tracker_store_in_a_run_directory_is_neither_sealed_nor_a_run(local_run):
    manifest = json.loads((local_run / "manifest.json").read_text())
    assert not any(name.startswith("logs/") for name in manifest["files"])
    assert verify(local_run).ok
    # The store copies summary.json and manifest.json: its folders are not run directories.
    assert find_run_dirs([local_run.parent]) == [local_run.resolve()]


# -- TensorBoard: the session's simulation


@pytest.mark.slow
def test_tensorboard_holds_the_simulations_global_and_per_site_metrics(simulation_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = simulation_run / "logs" / "tensorboard"
    # One tracker, the driver's: the sites wrote no event files of their own.
    assert len(list(simulation_run.rglob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(logs), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    rows = [row for row in metric_rows(simulation_run) if row["split"] != "time"]  # round times are not tracked
    for row in rows:
        scalars = {e.step: e.value for e in events.Scalars(tracked_name(row))}
        assert scalars[int(row["round"])] == pytest.approx(float(row["value"]), rel=FLOAT32), row
    assert set(tags["scalars"]) == {tracked_name(row) for row in rows}
    # The global model's metric each round, and each site's.
    assert [e.step for e in events.Scalars("val/loss")] == [1, 2]
    assert [e.step for e in events.Scalars("site-1/train/loss")] == [1, 2]
    assert [e.step for e in events.Scalars("server/val/loss")] == [0, 1, 2]
    assert {"plots/monitor", "plots/loss"} <= set(tags["images"])
    assert "config/config.yaml/text_summary" in tags["tensors"]


# -- a tracker that cannot be reached, or fails


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_an_unreachable_tracker_is_named_and_the_run_goes_on(local_run, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = flip_cli(tmp_path, "run", *FAST_OVERRIDES, "logger=mlflow", f"logger.tracking_uri={uri}")
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and f"tracker mlflow ({uri}) cannot be reached" in warnings[0]
    assert "the run goes on without it" in warnings[0]
    (summary,) = (tmp_path / "runs").rglob("summary.json")
    run = summary.parent
    assert json.loads(summary.read_text())["status"] == "completed" and verify(run).ok
    assert not (run / "logs").exists()
    # The same model as the session's local run, which was tracked: trackers do not touch training.
    assert json.loads(summary.read_text())["model_sha256"] == json.loads((local_run / "summary.json").read_text())["model_sha256"]


def test_a_tracker_that_fails_mid_run_warns_once_and_turns_itself_off(tmp_path, caplog):
    directory = RunDirectory(tmp_path / "run")
    logs = directory.path / "logs"
    tracker = Tracker(CsvBackend({"kind": "csv"}, RunIdentity(logs, "flip", "run")), directory, {"seed": 1}, local=False)
    directory.subscribe(tracker)
    directory.emit("round_ended", round=1, model_sha256="0", metrics={"federated:val/loss": 0.5, "site-1:train/loss": 0.7})
    assert (logs / "csv" / "metrics.csv").read_text().splitlines()[0] == "site-1/train/loss,step,val/loss"
    (logs / "csv").rename(logs / "moved")
    (logs / "csv").write_text("a file where Lightning's CSV writer keeps its folder")
    with caplog.at_level(logging.WARNING, logger="flip.audit.tracking"):
        for round_ in (2, 3):
            directory.emit("round_ended", round=round_, model_sha256="0", metrics={"federated:val/loss": 0.4})
        tracker.finish("completed")
        tracker.close("completed")
    (warning,) = caplog.records
    assert warning.getMessage().startswith(f"tracker csv ({logs / 'csv'}) failed while logging round 2: ")
    assert warning.getMessage().endswith("it is off for the rest of this run, which goes on")
    assert tracker.off and len(directory.path.joinpath("events.jsonl").read_text().splitlines()) == 3


def test_bad_tracker_settings_are_named():
    recipe = resolve_recipe(None)
    assert config_problems(recipe, ["logger=csv", "logger.tracking_uri=http://127.0.0.1:5000"]) == [
        "logger.tracking_uri: unknown key (override 'logger.tracking_uri=http://127.0.0.1:5000')"
    ]
    assert config_problems(recipe, ["logger=mlflow", "logger.tracking_uri=https://me:secret@mlflow.example.org", "logger.register_model=' '"]) == [
        "logger.tracking_uri: holds credentials, which would be written to the manifest: "
        "give them in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD instead",
        "logger.register_model: is empty (null picks the default)",
    ]


def test_a_site_runs_a_tracked_config_without_tracking(tmp_path, monkeypatch, caplog):
    from flip.experiment.validate import validate
    from flip.federation.site import train_round
    from flip.training import build_model
    from tests.conftest import at_site

    uri = f"http://127.0.0.1:{free_port()}"
    overrides = [*FAST_OVERRIDES, "federation.num_sites=2", "logger=mlflow", f"logger.tracking_uri={uri}", "logger.register_model=m"]
    cfg = validate(resolve_recipe("dicom_synthetic_fedavg"), overrides)
    monkeypatch.chdir(tmp_path)
    site_cfg, site = at_site(cfg, 0)  # accepted: the tracker is the server's business
    assert site_cfg.logger.tracking_uri == uri
    with caplog.at_level(logging.INFO):
        train_round(site_cfg, site, build_model(cfg).state_dict(), server_round=1)
    assert not any("tracker" in record.getMessage() for record in caplog.records)
    assert list(tmp_path.iterdir()) == []  # no store, no event files, no logs/


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*noload.*:DeprecationWarning")
def test_each_job_of_a_sweep_is_a_run_of_its_own_in_a_shared_store(local_sweep):
    from mlflow.tracking import MlflowClient

    store = local_sweep.parent.parent.parent  # the sweep's working directory: runs/<date>/<sweep>
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dicom_synthetic_local")
    assert experiment.artifact_location == (store / "artifacts").resolve().as_uri()  # beside the database
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.run_name"])
    jobs = sorted(path.parent for path in local_sweep.rglob("summary.json"))
    assert [run.info.run_name for run in runs] == ["/".join(job.parts[-2:]) for job in jobs]
    for run, job in zip(runs, jobs):
        summary = json.loads((job / "summary.json").read_text())
        assert run.data.tags["flip.seed"] == str(summary["seed"]) and run.data.metrics["test/loss"] == summary["metrics"]["test/loss"]
