"""Shared fixtures: small synthetic data in a per-session cache, and recipe helpers."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flip.paths import CONF_DIR, RECIPES_DIR

# A shell that starts pytest in the background (`cmd &` without job control) leaves SIGINT
# ignored, and every process a test starts would inherit that and sleep through the Ctrl-C the
# interrupt tests send: those processes get the default disposition back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Tiny settings that keep an end-to-end run to seconds.
FAST_OVERRIDES = [
    "trainer=debug",
    "data.synthetic.num_sites=3",
    "data.synthetic.images_per_site=40",
    "data.synthetic.image_size=32",
    "data.image_size=32",
    "data.batch_size=8",
    # No tracker: the csv default loads Lightning in a federation's driver (tests/audit/test_tracking.py
    # and the deployment test track on purpose; the smoke test runs every recipe with the default).
    "logger=none",
]


@pytest.fixture(scope="session", autouse=True)
def flip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep generated data out of the user's cache; shared by every test of the session."""
    cache = tmp_path_factory.mktemp("flip-cache")
    os.environ["FLIP_CACHE_DIR"] = str(cache)
    return cache


def recipe_files() -> list[Path]:
    return sorted(RECIPES_DIR.glob("*.yaml"))


def option_files() -> list[tuple[str, str]]:
    """(group, option) for every option file in conf/, Hydra's own `hydra` group aside."""
    return sorted(
        (path.parent.name, path.stem)
        for path in CONF_DIR.glob("*/*.yaml")
        if path.parent.name != "hydra"
    )


def write_recipe(directory: Path, body: str, name: str = "recipe") -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def in_memory_grid(monkeypatch: pytest.MonkeyPatch, num_nodes: int):
    """Flower's in-memory grid with `num_nodes` online nodes, built the way `run_simulation` builds it.

    Instruction Messages take their sender from the process-wide TaskIdentity, which Flower sets
    when a ServerApp starts; it is set here for the test only.
    """
    from flwr.common.constant import HEARTBEAT_INTERVAL_INF, NOOP_ACCOUNT_NAME, NOOP_FLWR_AID, SUPERLINK_NODE_ID
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID, TaskType
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    run_id = state.create_run(None, None, None, {}, NOOP_FEDERATION_ID, None, None, TaskType.SERVER_APP)
    for _ in range(num_nodes):
        node_id = state.create_node(
            NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, secrets.token_bytes(32), heartbeat_interval=HEARTBEAT_INTERVAL_INF
        )
        state.acknowledge_node_heartbeat(node_id=node_id, heartbeat_interval=HEARTBEAT_INTERVAL_INF)
    (run,) = state.get_run_info(run_ids=[run_id])
    grid = InMemoryGrid(factory)
    grid.set_run(run)
    monkeypatch.setattr(TaskIdentity, "_run_id", run.run_id)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", run.primary_task_id)
    return grid


def simulated_sites(cfg) -> list[dict]:
    """The settings flip's simulation writes for each site of `cfg`."""
    from flip.federation.simulated_sites import simulated_site_names, simulated_site_settings

    return simulated_site_settings(cfg, simulated_site_names(cfg))


def at_site(cfg, index: int = 0):
    """(config, settings) that site `index` of a simulation of `cfg` runs with, through the site's
    real acceptance of the shipped config."""
    from flip.federation.shipping import pack_config
    from flip.federation.site_config import SiteSettings
    from flip.federation.trust import accept_run

    raw = simulated_sites(cfg)[index]
    run = accept_run(*pack_config(cfg), SiteSettings.from_mapping(raw, raw["name"]))
    return run.cfg, run.site


def site_node_context(cfg, index: int, folder: Path):
    """A Flower Context for the node of site `index`, its settings file written as a simulation does."""
    from flwr.app import Context, RecordDict

    from flip.federation.simulated_sites import write_site_files

    write_site_files(folder, simulated_sites(cfg))
    node_config = {"site-config": str(folder / f"{index}.json")}
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def flip_cli(cwd: Path, *args: str, timeout: float = 600) -> "subprocess.CompletedProcess[str]":
    """`python -m flip.cli ARGS` in `cwd`, its output captured."""
    return subprocess.run([sys.executable, "-m", "flip.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def flip_run_dir(cwd: Path, *args: str) -> Path:
    """`flip run ARGS` in `cwd`; the run directory it made (under cwd/runs), once it succeeded."""
    from flip.audit.run_directory import in_trackers

    def manifests() -> set[Path]:  # a tracker's local store in logs/ keeps copies of the records
        return {path for path in (cwd / "runs").rglob("manifest.json") if not in_trackers(path)}

    before = manifests()
    result = flip_cli(cwd, "run", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    (manifest,) = manifests() - before
    return manifest.parent


# The shared simulation's recipe: the flagship one with cross-site evaluation after the last round.
CROSS_SITE_RECIPE = "dicom_synthetic_cross_site"
SIMULATION_EXTRA = ("federation.keep_optimizer_state=true", "model.logit_adjustment=1.0")
# A 2-site, 2-round simulation of the flagship recipe, at the size of FAST_OVERRIDES.
SIMULATION_OVERRIDES = ["dicom_synthetic_fedavg", *FAST_OVERRIDES, "federation.num_sites=2", "federation.num_rounds=2",
                        "federation.server_eval_site=site-3"]


# The session's runs are tracked, and tests/audit/test_tracking.py reads the trackers back: the
# local run into an MLflow store in its run directory (its model registered), the simulation
# with TensorBoard.
LOCAL_TRACKER = ["logger=mlflow", "logger.register_model=flip-local"]
SIMULATION_TRACKER = ["logger=tensorboard"]


@pytest.fixture(scope="session")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real local run of the default recipe (tests that change it work on a copy)."""
    return flip_run_dir(tmp_path_factory.mktemp("local-run"), *FAST_OVERRIDES, *LOCAL_TRACKER)


@pytest.fixture(scope="session")
def simulation_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real simulation of 2 sites for 2 rounds (tests that change it work on a copy), with
    the label-skew options on (kept optimizer state goes through Flower's per-node state) and
    cross-site evaluation after the last round."""
    cwd = tmp_path_factory.mktemp("simulation-run")
    return flip_run_dir(cwd, CROSS_SITE_RECIPE, *SIMULATION_OVERRIDES[1:], *SIMULATION_EXTRA, *SIMULATION_TRACKER)


@pytest.fixture(scope="session")
def local_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-job sweep (seed=0,1) of local runs: its sweep directory. Both jobs are tracked in
    one MLflow store beside it, `mlflow.db`."""
    cwd = tmp_path_factory.mktemp("sweep")
    tracker = ["logger=mlflow", f"logger.tracking_uri=sqlite:///{cwd / 'mlflow.db'}"]
    result = flip_cli(cwd, "run", *FAST_OVERRIDES, *tracker, "-m", "seed=0,1")
    assert result.returncode == 0, result.stderr[-3000:]
    (multirun,) = (cwd / "runs").rglob("multirun.yaml")
    return multirun.parent
