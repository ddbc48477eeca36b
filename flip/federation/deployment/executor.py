"""The server's ServerApp launcher: claims each run's ServerApp task from the SuperLink and starts
a `flwr-serverapp` process for it (a run's own process, which `flip stop` ends), with its output
in `<home>/logs/serverapp-<run id>.log`. Unlike Flower's SuperExec it waits for every process it
starts, so none is left defunct, and stops them when it is stopped."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    from flwr.supercore.constant import TaskType

    from flip.federation.deployment.runtime import Stopping, claim_tasks

    parser = argparse.ArgumentParser(prog="flip-server-executor")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--root-certificates", default=None)
    parser.add_argument("--logs", required=True)
    parser.add_argument("--poll-s", type=float, default=0.2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    ca = Path(args.root_certificates).read_bytes() if args.root_certificates else None
    children: list[subprocess.Popen] = []
    stopping = Stopping()

    def reap() -> None:
        for child in list(children):
            if child.poll() is not None:
                log.info("ServerApp process %d ended with %d", child.pid, child.returncode)
                children.remove(child)

    def launch(task: Any, token: str) -> None:
        reap()
        # Flower's flwr-serverapp, with the run's app bundle checked first (daemon.guard_serverapp_bundles).
        command = [sys.executable, "-m", "flip.federation.deployment.daemon", "serverapp", "--parent", str(os.getpid())]
        command += ["--runtime-api-address", args.runtime_api_address, "--token", token]
        command += ["--root-certificates", args.root_certificates] if args.root_certificates else ["--insecure"]
        command += ["--parent-pid", str(os.getpid())]
        out = Path(args.logs) / f"serverapp-{task.run_id}.log"
        with out.open("ab") as handle:
            children.append(subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        log.info("run %s: ServerApp process %d (log %s)", task.run_id, children[-1].pid, out)

    try:
        claim_tasks(args.runtime_api_address, ca, TaskType.SERVER_APP, args.poll_s, launch, stopping, idle=reap)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
