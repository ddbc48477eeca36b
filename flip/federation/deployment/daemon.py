"""Entry point of every process `flip server` and `flip site` start:

    python -m flip.federation.deployment.daemon ROLE --parent PID [ARGS...]

ROLE is `superlink`, `supernode` or `serverapp` (Flower's own processes, run in this process with
flip's settings applied first), `executor` (the server's ServerApp launcher) or `worker` (a
site's warm ClientApp worker). Each dies with the supervisor that started it.

For a SuperNode, two of Flower's fixed timings become the site's own settings, read from the
environment `flip site` sets: `FLIP_NODE_POLL_S` caps the pauses of its polling loop (Flower
sleeps 3 s after every empty pull, 0.5 s while waiting for a reply), and `FLIP_NODE_HEARTBEAT_S`
is the heartbeat interval it announces (Flower's: 30 s, so a stopped node counts as online for
60 s; the SuperLink accepts 10 s and more).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import time
from typing import Any

POLL_ENV = "FLIP_NODE_POLL_S"
HEARTBEAT_ENV = "FLIP_NODE_HEARTBEAT_S"


class _CappedSleeps:
    """Stands in for the `time` module of Flower's SuperNode loop: every pause at most `cap` s."""

    def __init__(self, cap: float):
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def short_object_retries(module: Any, cap: float) -> None:
    """Flower retries an object it pulls too early after 1 s, then 2 s, ...: a message is
    announced before all of it is uploaded, so a fast poll finds it early. Retry every 20 ms
    to `cap` s instead, in `module`'s calls."""
    from functools import partial

    from flwr.supercore.inflatable.inflatable_utils import pull_objects

    module.pull_objects = partial(pull_objects, initial_backoff=0.02, backoff_cap=cap)


def tune_supernode(poll_s: float | None, heartbeat_s: float | None) -> None:
    """Apply the site's polling pause and heartbeat interval to Flower's SuperNode code."""
    if poll_s:
        from flwr.supernode import start_client_internal

        start_client_internal.time = _CappedSleeps(float(poll_s))
        short_object_retries(start_client_internal, float(poll_s))
    if heartbeat_s:
        from flwr.supercore import heartbeat
        from flwr.supernode import fleet_http_connection

        fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL = float(heartbeat_s)
        heartbeat.HEARTBEAT_DEFAULT_INTERVAL = float(heartbeat_s)


def guard_serverapp_bundles() -> None:
    """Flower's ServerApp process installs the run's app bundle and imports the ServerApp it
    names, from the bundle's own files first; the Control API does not authenticate who
    submitted it. flip's server checks the bundle first: flip's own apps, no files of its own."""
    import importlib

    from flip.federation.deployment.app_bundle import check_fab

    run_serverapp = importlib.import_module("flwr.superlink.runtime.run_serverapp")  # the module, not its function

    install = run_serverapp.install_from_fab

    def checked_install(content: bytes, *args: Any, **kwargs: Any) -> Any:
        check_fab(content)
        return install(content, *args, **kwargs)

    run_serverapp.install_from_fab = checked_install


def main(argv: list[str] | None = None) -> None:
    from flip.federation.deployment.supervise import die_with_parent

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--parent":
        sys.exit("usage: python -m flip.federation.deployment.daemon ROLE --parent PID [ARGS...]")
    role, parent, rest = args[0], int(args[2]), args[3:]
    die_with_parent(parent)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` writes every thread's stack to its log
    if role == "superlink":
        from flwr.superlink.cli import flower_superlink

        sys.argv = ["flower-superlink", *rest]
        flower_superlink()
    elif role == "supernode":
        tune_supernode(float(os.environ.get(POLL_ENV, 0)) or None, float(os.environ.get(HEARTBEAT_ENV, 0)) or None)
        from flwr.supernode.cli import flower_supernode

        sys.argv = ["flower-supernode", *rest]
        flower_supernode()
    elif role == "serverapp":
        guard_serverapp_bundles()
        from flwr.superlink.cli import flwr_serverapp

        sys.argv = ["flwr-serverapp", *rest]
        flwr_serverapp()
    elif role == "executor":
        from flip.federation.deployment.executor import main as executor_main

        executor_main(rest)
    elif role == "worker":
        from flip.federation.deployment.worker import main as worker_main

        worker_main(rest)
    else:
        sys.exit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
