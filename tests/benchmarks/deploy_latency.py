"""A real federation's round latency: flip's deployment vs a hand-written Flower app on the same
SuperLink/SuperNode setup, plus flip's simulation and the compute alone. 2 sites x 3 rounds.

All on this machine, over TLS with authenticated sites (one `flip certs` folder):
- flip: `flip server`, two `flip site` nodes and `flip run ... federation=deployment`;
- Flower: `flower-superlink` and two `flower-supernode`s with Flower's defaults (a SuperExec
  that starts a `flwr-clientapp` process per message, `send_and_receive`), the same TLS and
  site keys, runtime dependency installation off, running plain_deploy_app.py (FedAvg, the same
  CNN trained with Lightning on the same synthetic DICOM sites, one local epoch, evaluation
  every round);
- flip's simulation of the same recipe;
- the compute alone: each site's training and evaluation of every round, called in this
  process (`flip.federation.site`), the slower site counted (the sites run side by side).
A round's wall time runs from the end of the round before (the initial model's for round 1).
Prints every round's time per side, then `deploy_compute_s_per_round=`, `flip_vs_compute=`
and last `deploy_vs_flower_ratio=` (flip's mean round over Flower's; target <= 1.05).
Usage: python tests/benchmarks/deploy_latency.py
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SITES, ROUNDS, SEED = 2, 3, 42
SYNTHETIC = {"num_sites": SITES, "images_per_site": 120, "image_size": 64, "seed": 0}
BENCH = Path(__file__).resolve().parent
REPO = BENCH.parents[1]
RECIPE = [
    "dicom_synthetic_fedavg", f"federation.num_sites={SITES}", f"federation.num_rounds={ROUNDS}",
    "federation.server_eval_site=null", "federation.local_epochs=1", "trainer.enable_progress_bar=false",
    f"seed={SEED}", *(f"data.synthetic.{key}={value}" for key, value in SYNTHETIC.items()),
]
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{log.name}: no '{text}':\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def cli(args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "flip.cli", *args], env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"flip {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def round_times(run_dir: Path) -> list[float]:
    rows = csv.DictReader((run_dir / "metrics.csv").open())
    return [float(r["value"]) for r in rows if r["split"] == "time" and r["metric"] == "round_s"]


def flip_deployment(work: Path, env: dict[str, str], root: Path) -> list[float]:
    port = free_port()
    certs = work / "certs"
    server = start([sys.executable, "-m", "flip.cli", "server", "--certificates", str(certs), "--home", str(work / "server"), "--port", str(port)],
                   work / "flip-server.out", env, work)
    processes = [server]
    try:
        wait_for(work / "flip-server.out", "flip server ready", server)
        for index in range(1, SITES + 1):
            name = f"site-{index}"
            cli(["server", "register-site", name, str(certs / "sites" / f"{name}.pub"), "--home", str(work / "server")], env, work)
            settings = {
                "name": name, "data": {"root": str(root), "site": name}, "cpus": 1,
                "node": {"superlink": f"127.0.0.1:{port}", "ca_certificate": str(certs / "ca.pem"),
                         "private_key": str(certs / "sites" / f"{name}.key"), "home": str(work / f"{name}-home"),
                         "runtime_port": free_port()},
            }
            (work / f"{name}.yaml").write_text(json.dumps(settings))
            processes.append(start([sys.executable, "-m", "flip.cli", "site", "--config", str(work / f"{name}.yaml")], work / f"{name}.out", env, work))
        for index, site in enumerate(processes[1:], 1):
            wait_for(work / f"site-{index}.out", "joined", site)
        cli(["run", *RECIPE, "federation=deployment", f"federation.superlink=127.0.0.1:{port}", f"federation.root_certificates={certs / 'ca.pem'}"], env, work / "flip-run")
        (summary,) = (work / "server" / "runs").rglob("summary.json")
        return round_times(summary.parent)
    finally:
        stop(processes[1:])
        stop(processes[:1])


def flower_deployment(work: Path, env: dict[str, str], root: Path, batch_size: int, lr: float) -> list[float]:
    import tomli_w
    from flwr.cli.build import build_fab_from_files

    from flip.federation.deployment.control import Control

    port = free_port()
    certs = work / "certs"
    flower_env = {**env, **FLOWER_ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
    link_env = {**flower_env, "FLWR_HOME": str(work / "flower-link")}
    link = start(["flower-superlink", "--host", "127.0.0.1", "--port", str(port), "--ssl-certfile", str(certs / "server.pem"),
                  "--ssl-keyfile", str(certs / "server.key"), "--ssl-ca-certfile", str(certs / "ca.pem"), "--enable-supernode-auth",
                  "--disable-runtime-dependency-installation"], work / "flower-link.out", link_env, work)
    processes = [link]
    try:
        wait_for(work / "flower-link.out", "Application startup complete", link)
        from flwr.supercore.primitives.asymmetric import public_key_to_bytes

        from flip.federation.deployment.certs import load_site_public_key

        control = Control(f"127.0.0.1:{port}", certs / "ca.pem")
        for index in range(1, SITES + 1):
            name = f"site-{index}"
            control.register_node(public_key_to_bytes(load_site_public_key(certs / "sites" / f"{name}.pub")), name)
            node_env = {**flower_env, "FLWR_HOME": str(work / f"flower-{name}")}
            processes.append(start(["flower-supernode", "--superlink", f"127.0.0.1:{port}", "--root-certificates", str(certs / "ca.pem"),
                                    "--auth-supernode-private-key", str(certs / "sites" / f"{name}.key"), "--port", str(free_port()),
                                    "--node-config", f"partition-id={index - 1}"], work / f"flower-{name}.out", node_env, work))
        for index, node in enumerate(processes[1:], 1):
            wait_for(work / f"flower-site-{index}.out", "SuperNode ID", node)
        config = {"root": str(root), "image-size": SYNTHETIC["image_size"], "batch-size": batch_size, "lr": lr, "local-epochs": 1,
                  "seed": SEED, "trainer": "lightning", "sites": SITES, "rounds": ROUNDS, "times-file": str(work / "flower-times.json")}
        pyproject = {"project": {"name": "plain-fedavg", "version": "1.0.0", "dependencies": []},
                     "tool": {"flwr": {"app": {"publisher": "bench", "components": {"serverapp": "plain_deploy_app:server_app",
                                                                                    "clientapp": "plain_deploy_app:client_app"},
                                                "config": config}}}}
        files = {"pyproject.toml": tomli_w.dumps(pyproject).encode(), "plain_flower_app.py": BENCH / "plain_flower_app.py",
                 "plain_deploy_app.py": BENCH / "plain_deploy_app.py"}
        fab, _ = build_fab_from_files(files)
        run_id = control.start_run(fab, {})
        deadline = time.monotonic() + 900
        while (info := control.run(run_id)).status != "finished":
            if time.monotonic() > deadline:
                sys.exit("the Flower run did not finish in 15 minutes")
            time.sleep(0.5)
        if info.sub_status != "completed":
            sys.exit(f"the Flower run {info.sub_status}: {info.details}")
        control.close()
        return json.loads((work / "flower-times.json").read_text())
    finally:
        stop(processes[1:])
        stop(processes[:1])


def flip_simulation(work: Path, env: dict[str, str]) -> list[float]:
    cli(["run", *RECIPE, "federation.cpus_per_site=1", "federation.total_cpus=2"], env, work / "flip-sim")
    (summary,) = (work / "flip-sim").rglob("summary.json")
    return round_times(summary.parent)


def compute_alone(cfg) -> list[float]:
    """Each round: the slower site's training and evaluation, called directly (warm)."""
    import torch

    from flip.federation import site
    from flip.federation.trust import accept_run
    from flip.federation.shipping import pack_config
    from flip.federation.site_config import SiteSettings
    from flip.federation.simulated_sites import simulated_site_names, simulated_site_settings

    torch.set_num_threads(1)
    sites = [SiteSettings.from_mapping(raw, raw["name"]) for raw in simulated_site_settings(cfg, simulated_site_names(cfg))]
    runs = [accept_run(*pack_config(cfg), s) for s in sites]
    state, _ = site.initial_model(runs[0].cfg)
    for run in runs:  # data decoded and cached, as a warm worker has it
        site.site_datamodule(run.cfg, run.site)
    times = []
    for server_round in range(1, ROUNDS + 1):
        per_site, states = [], []
        for run in runs:
            started = time.perf_counter()
            reply = site.train_round(run.cfg, run.site, state, server_round=server_round)
            site.evaluate_round(run.cfg, run.site, reply.state)
            per_site.append(time.perf_counter() - started)
            states.append(reply.state)
        state = {key: sum(s[key] for s in states) / len(states) for key in states[0]}
        times.append(max(per_site))
    return times


def show(name: str, times: list[float]) -> float:
    mean = sum(times) / len(times)
    print(f"{name:<18} " + "  ".join(f"round {i} {t:6.2f} s" for i, t in enumerate(times, 1)) + f"   mean {mean:6.2f} s")
    return mean


def main() -> None:
    from omegaconf import OmegaConf

    from flip.data.synthetic.dataset import ensure_synthetic_dicom

    with tempfile.TemporaryDirectory(prefix="flip-deploy-bench-") as tmp:
        work = Path(tmp)
        for folder in ("flip-run", "flip-sim"):
            (work / folder).mkdir()
        env = {**os.environ, "FLIP_CACHE_DIR": str(work / "cache"), "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        os.environ["FLIP_CACHE_DIR"] = env["FLIP_CACHE_DIR"]
        root = ensure_synthetic_dicom(work / "cache", **SYNTHETIC)
        cli(["certs", str(work / "certs"), *(f"--site=site-{i}" for i in range(1, SITES + 1))], env, work)
        cfg = OmegaConf.create(cli(["show", *RECIPE], env, work))
        flip = flip_deployment(work, env, root)
        flower = flower_deployment(work, env, root, int(cfg.data.batch_size), float(cfg.model.optimizer.lr))
        simulation = flip_simulation(work, env)
        from flip.experiment.recipes import resolve_recipe
        from flip.experiment.validate import validate

        compute = compute_alone(validate(resolve_recipe(RECIPE[0]), RECIPE[1:]))
    print(f"per-round wall times, {SITES} sites x {ROUNDS} rounds, {SYNTHETIC['images_per_site']} images of {SYNTHETIC['image_size']} px per site:")
    flip_mean = show("flip deployment", flip)
    flower_mean = show("Flower deployment", flower)
    show("flip simulation", simulation)
    compute_mean = show("compute alone", compute)
    print(f"deploy_compute_s_per_round={compute_mean:.2f}")
    print(f"flip_vs_compute={flip_mean / compute_mean:.2f}")
    print(f"deploy_vs_flower_ratio={flip_mean / flower_mean:.3f}")


if __name__ == "__main__":
    main()
