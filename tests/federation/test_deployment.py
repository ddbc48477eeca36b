"""A real federation on this machine: `flip server` with TLS and site authentication, two
`flip site` nodes, and `flip run ... federation=deployment`, as separate processes on 127.0.0.1.

One server and its two sites serve every test of the module; each test starts and stops its own
runners (and the odd extra site), and checks none of them is left running or defunct; the
module checks the same of the federation when it stops it.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flip.audit.verify import verify

from tests.federation.deployment_helpers import (
    Flip,
    assert_all_gone,
    cmdline,
    deployment_overrides,
    environment,
    free_port,
    new_tag,
    run_dirs,
    simulation_overrides,
    site_file,
    state,
    stopped,
    tagged,
    wait_until,
)

pytestmark = pytest.mark.slow
RECIPE = "dicom_synthetic_fedavg"
ROUNDS = 3


@dataclass
class Federation:
    folder: Path
    port: int
    certs: Path
    tag: str
    server: Flip
    sites: dict[str, Flip] = field(default_factory=dict)
    site_files: dict[str, Path] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)

    def run(self, *extra: str, rounds: int = ROUNDS, name: str = "runner") -> Flip:
        """`flip run` in a folder of its own (its local run directory goes there)."""
        args = ["run", RECIPE, *deployment_overrides(self.port, self.certs / "ca.pem", rounds), *extra]
        (self.folder / name).mkdir()
        return Flip(args, self.folder / name, self.tag, name)

    def server_runs(self) -> Path:
        return self.folder / "server" / "runs"


def _cli(folder: Path, tag: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flip.cli", *args], cwd=folder, env=environment(tag), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("federation")
    tag = new_tag()
    certs = folder / "certs"
    made = _cli(folder, tag, "certs", str(certs), "--site", "site-1", "--site", "site-2", "--site", "rogue")
    assert made.returncode == 0, made.stderr
    port = free_port()
    server = Flip(["server", "--certificates", str(certs), "--home", str(folder / "server"), "--port", str(port)], folder, tag, "server")
    fed = Federation(folder, port, certs, tag, server)
    try:
        server.wait_for("flip server ready", 60)
        for name in ("site-1", "site-2"):
            enrolled = _cli(folder, tag, "server", "register-site", name, str(certs / "sites" / f"{name}.pub"), "--home", str(folder / "server"))
            assert enrolled.returncode == 0 and f"enrolled site {name}" in enrolled.stdout, enrolled.stderr
            fed.site_files[name] = site_file(folder, name, port, certs, free_port())
            fed.sites[name] = Flip(["site", "--config", str(fed.site_files[name])], folder, tag, name)
        for name, site in fed.sites.items():
            site.wait_for(f"site {name} joined", 90)
        yield fed
    finally:
        for process in [*fed.sites.values(), server]:
            fed.seen |= process.descendants() | {process.pid}
        fed.seen |= set(tagged(tag))
        for site in fed.sites.values():
            if site.process.poll() is None:
                assert site.stop(signal.SIGINT) == 0, site.output()[-2000:]
        assert server.stop(signal.SIGINT) == 0, server.output()[-2000:]
        assert "flip server: stopping" in server.output()
        assert_all_gone(fed.seen | set(tagged(tag)))
        assert tagged(tag) == {}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same recipe, seed and sites as a simulation (its summary)."""
    folder = tmp_path_factory.mktemp("simulated")
    result = subprocess.run([sys.executable, "-m", "flip.cli", "run", RECIPE, *simulation_overrides(ROUNDS)], cwd=folder, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(folder)
    return {**json.loads((run / "summary.json").read_text()), "run_dir": str(run)}


@pytest.fixture
def cleanup():
    """Processes a test starts: whatever is still running when it ends (a failed test) is killed,
    so it cannot outlive the test."""
    started: list[Flip] = []
    yield started.append
    for process in started:
        stopped(process)


def simulated_dir(simulated: dict) -> Path:
    return Path(simulated["run_dir"])


def _server_run_dir(local: Path) -> Path:
    return Path(json.loads((local / "manifest.json").read_text())["server_run_dir"])


def test_a_tls_federation_of_two_authenticated_sites_matches_the_simulation(federation, simulated, cleanup):
    runner = federation.run("logger=csv", name="runner-match")  # the default tracker, on the server
    cleanup(runner)
    assert runner.finish(300) == 0, runner.output()[-3000:]
    (local,) = run_dirs(federation.folder / "runner-match")
    summary = json.loads((local / "summary.json").read_text())
    assert summary["mode"] == "deployment" and summary["rounds"] == ROUNDS and summary["failures"] == []
    assert summary["model_sha256"] == simulated["model_sha256"]
    assert summary["metrics"] == pytest.approx(simulated["metrics"])
    assert [site["site"] for site in summary["sites"]] == ["site-1", "site-2"]
    # The server's run directory: the same layout as a simulation's, and `flip run` said where.
    server_dir = _server_run_dir(local)
    assert server_dir.parent.parent == federation.server_runs() and f"server run directory: {server_dir}" in runner.output()
    server_summary = json.loads((server_dir / "summary.json").read_text())
    assert server_summary["model_sha256"] == simulated["model_sha256"] and server_summary["mode"] == "deployment"
    for name in ("round_1.ckpt", f"round_{ROUNDS}.ckpt", "best.ckpt", "final.ckpt"):
        assert (server_dir / "checkpoints" / name).is_file(), name
    assert (server_dir / ".hydra" / "config.yaml").is_file() and (server_dir / f"{RECIPE}.log").is_file()
    rows = list(csv.DictReader((server_dir / "metrics.csv").open()))
    assert {row["site"] for row in rows} == {"site-1", "site-2", "federated", "server"}
    # The server tracks a deployment (the default tracker, csv), the rounds as steps; `flip run` does not.
    tracked = {int(row["step"]): row for row in csv.DictReader((server_dir / "logs" / "csv" / "metrics.csv").open())}
    for row in rows:
        if row["site"] == "federated" and row["split"] == "val":
            assert float(tracked[int(row["round"])][f"val/{row['metric']}"]) == pytest.approx(float(row["value"]))
    assert sorted(tracked) == list(range(1, ROUNDS + 1)) and not (local / "logs").exists()  # one row per round
    manifest = json.loads((server_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["site_versions"] == {"site-1": "0.1.0", "site-2": "0.1.0"}
    assert not any("--token" in part for part in manifest["command"])
    # Both run directories are sealed: the server's, with every round's model, and the researcher's.
    server_verdict, local_verdict = verify(server_dir), verify(local)
    assert server_verdict.ok and local_verdict.ok, server_verdict.failures + local_verdict.failures
    simulated_rounds = json.loads((simulated_dir(simulated) / "manifest.json").read_text())["models"]["rounds"]
    assert manifest["models"]["rounds"] == simulated_rounds and len(simulated_rounds) == ROUNDS + 1
    assert set(manifest["seeds"]["sites"]) == {"site-1", "site-2"}
    # `flip runs` lists it as completed.
    connection = ["--superlink", f"127.0.0.1:{federation.port}", "--ca", str(federation.certs / "ca.pem")]
    listed = _cli(federation.folder, federation.tag, "runs", *connection)
    assert listed.returncode == 0 and "finished: completed" in listed.stdout, listed.stderr
    run_id = str(json.loads((local / "manifest.json").read_text())["flower_run_id"])
    assert run_id in listed.stdout
    stop = _cli(federation.folder, federation.tag, "stop", run_id, *connection)
    assert stop.returncode == 1 and f"flip: run {run_id} already finished (completed)" in stop.stderr
    assert_all_gone(runner.seen | {runner.pid})


def test_a_deployment_evaluates_one_of_the_servers_runs_at_every_site(federation, cleanup):
    completed = sorted(path.parent for path in federation.server_runs().rglob("summary.json") if json.loads(path.read_text())["job"] == "train")
    if not completed:  # this test alone: a run of its own to evaluate
        first = federation.run(name="runner-to-evaluate", rounds=1)
        cleanup(first)
        assert first.finish(300) == 0, first.output()[-3000:]
        completed = sorted(path.parent for path in federation.server_runs().rglob("summary.json"))
    trained_dir = completed[-1]
    trained = json.loads((trained_dir / "summary.json").read_text())
    relative = trained_dir.relative_to(federation.server_runs())
    runner = federation.run("job=evaluate", f"evaluation.checkpoint={relative}", name="runner-evaluate")
    cleanup(runner)
    assert runner.finish(300) == 0, runner.output()[-3000:]
    (local,) = run_dirs(federation.folder / "runner-evaluate")
    summary = json.loads((local / "summary.json").read_text())
    assert summary["job"] == "evaluate" and summary["rounds"] == 0 and summary["model_sha256"] == trained["model_sha256"]
    for key, value in trained["metrics"].items():
        assert summary["metrics"][key] == pytest.approx(value, abs=1e-6), key
    assert set(summary["site_metrics"]) == {"site-1", "site-2"}


def test_an_unenrolled_site_is_refused_in_one_line(federation, cleanup):
    rogue = site_file(federation.folder, "rogue", federation.port, federation.certs, free_port())
    site = Flip(["site", "--config", str(rogue)], federation.folder, federation.tag, "rogue")
    cleanup(site)
    assert site.finish(120) == 1
    last = site.output().strip().splitlines()[-1]
    assert last.startswith("flip: the SuperLink at 127.0.0.1:") and "refused site rogue's key: it is not enrolled there" in last
    assert_all_gone(site.seen | {site.pid})


def test_a_run_that_ships_code_is_refused_by_the_server(federation):
    """Anyone who reaches the Control API can submit a run: the server only runs flip's own apps,
    never a bundle's files (which Flower would import first)."""
    import tomli_w
    from flwr.cli.build import build_fab_from_files

    from flip.federation.deployment.app_bundle import app_pyproject
    from flip.federation.deployment.control import Control

    sentinel = federation.folder / "shipped-code-ran"
    code = f"from pathlib import Path\nPath({str(sentinel)!r}).write_text('ran')\n".encode()
    config = app_pyproject()
    config["tool"]["flwr"]["app"]["components"]["serverapp"] = "flip_evil:app"
    fab, _ = build_fab_from_files({"pyproject.toml": tomli_w.dumps(config).encode(), "flip_evil.py": code})
    with Control(f"127.0.0.1:{federation.port}", federation.certs / "ca.pem") as control:
        run_id = control.start_run(fab, {})
        info = wait_until(lambda: (i := control.run(run_id)).status == "finished" and i, 120, "the run to end")
    assert info.sub_status == "failed" and "carries files (flip_evil.py)" in info.details, info
    assert not sentinel.exists()


def test_a_site_whose_approvals_do_not_list_the_run_refuses_it(federation, cleanup):
    file = federation.site_files["site-2"]
    original = file.read_text()
    settings = json.loads(original)
    file.write_text(json.dumps({**settings, "approve": ["0" * 64]}))
    try:
        runner = federation.run(rounds=1, name="runner-refused")
        cleanup(runner)
        assert runner.finish(300) == 1
    finally:
        file.write_text(original)
    output = runner.output()
    assert "failed on the server" in output and "site handshake failed" in output
    assert "site-2 refuses this run: approve: config sha256" in output and "is not one this site approved" in output
    assert "site-1 refuses" not in output
    assert_all_gone(runner.seen | {runner.pid})


def test_a_site_killed_in_round_2_is_recorded_and_rejoins(federation, cleanup):
    runner = federation.run(name="runner-fault")
    cleanup(runner)
    site = federation.sites["site-2"]
    worker_log = federation.folder / "site-2-home" / "logs" / "worker.log"
    mark = len(worker_log.read_text())
    wait_until(lambda: "train message of round 2" in worker_log.read_text()[mark:], 240, "site-2 to start round 2")
    (supernode,) = [pid for pid in site.descendants() if "daemon supernode" in cmdline(pid)]
    os.kill(supernode, signal.SIGKILL)
    site.wait_for("site site-2 rejoined", 120)
    assert runner.finish(300) == 0, runner.output()[-3000:]
    (local,) = run_dirs(federation.folder / "runner-fault")
    summary = json.loads((local / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS
    missing = {(f["round"], f["site"]) for f in summary["failures"]}
    assert (2, "site-2") in missing and all(site_name == "site-2" for _, site_name in missing)
    rows = list(csv.DictReader((_server_run_dir(local) / "metrics.csv").open()))
    assert {row["site"] for row in rows if row["round"] == str(ROUNDS) and row["split"] == "train"} == {"site-1", "site-2"}
    assert state(supernode) is None
    assert_all_gone(runner.seen | {runner.pid})


def test_the_runner_stopped_after_round_1_resumes_to_the_same_model(federation, simulated, cleanup):
    runner = federation.run(name="runner-stopped")
    cleanup(runner)
    receipt = wait_until(lambda: next((federation.folder / "runner-stopped").rglob("deployment.json"), None), 120, "the run to start")
    runner.wait_for(f"round 1/{ROUNDS} done", 240)  # the runner has seen it: the server has written round 1
    assert _server_round(receipt) >= 1
    assert runner.stop(signal.SIGINT) == 130, runner.output()[-3000:]
    assert "flip: interrupted" in runner.output()
    local = receipt.parent
    assert json.loads((local / "manifest.json").read_text())["status"] == "interrupted"
    resumed = Flip(["run", "--resume", str(local)], federation.folder, federation.tag, "runner-resumed")
    cleanup(resumed)
    assert resumed.finish(300) == 0, resumed.output()[-3000:]
    summary = json.loads((local / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS and summary["model_sha256"] == simulated["model_sha256"]
    assert "resuming after round" in resumed.output()
    manifest = json.loads((_server_run_dir(local) / "manifest.json").read_text())
    assert manifest["status"] == "completed" and len(manifest["resumes"]) == 1
    assert_all_gone(runner.seen | resumed.seen | {runner.pid, resumed.pid})


def _server_round(receipt: Path) -> int:
    """The last round the server completed for the run `receipt` (a local deployment.json) names."""
    server_dir = json.loads(receipt.read_text()).get("server_run_dir")
    resume = Path(server_dir or "/nonexistent") / "checkpoints" / "resume.json"
    return json.loads(resume.read_text())["round"] if resume.is_file() else 0


def test_a_simulation_stopped_after_round_1_resumes_to_the_same_model(simulated, tmp_path, cleanup):
    tag = new_tag()
    runner = Flip(["run", RECIPE, *simulation_overrides(ROUNDS)], tmp_path, tag, "simulation")
    cleanup(runner)
    resume = wait_until(lambda: next((tmp_path / "runs").rglob("resume.json"), None), 300, "round 1 of the simulation")
    assert runner.stop(signal.SIGINT) == 130, runner.output()[-3000:]
    assert "flip: interrupted" in runner.output()
    run_dir = resume.parent.parent
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "interrupted"
    stopped_at = json.loads(resume.read_text())["round"]
    resumed = Flip(["run", "--resume", str(run_dir)], tmp_path, tag, "simulation-resumed")
    cleanup(resumed)
    assert resumed.finish(300) == 0, resumed.output()[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS and summary["model_sha256"] == simulated["model_sha256"]
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert {row["round"] for row in rows if row["site"] == "federated"} == {str(r) for r in range(1, ROUNDS + 1)}
    assert f"resuming after round {stopped_at}" in (run_dir / f"{RECIPE}.log").read_text()
    assert_all_gone(runner.seen | resumed.seen | {runner.pid, resumed.pid} | set(tagged(tag)), timeout=30)
