"""Real processes for the deployment tests: `flip server`, `flip site` and `flip run` on 127.0.0.1,
each tagged through its environment so a test can list every process it caused and check that
none is left running or defunct."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

from tests.conftest import FAST_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
TAG_ENV = "FLIP_TEST_PROCESS_TAG"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(tag: str) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        PATH=os.pathsep.join([bin_dir, env.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PYTHONUNBUFFERED="1",
        **{TAG_ENV: tag},
    )
    return env


def tagged(tag: str) -> dict[int, str]:
    """pid -> state letter of every process whose environment carries `tag` (zombies have no
    readable environment: see `zombies`)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"{TAG_ENV}={tag}".encode() in (entry / "environ").read_bytes():
                found[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
    return found


def state(pid: int) -> str | None:
    """The process's state letter (Z: defunct), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Flip:
    """A `python -m flip.cli ...` process, its output in a file."""

    def __init__(self, args: list[str], cwd: Path, tag: str, name: str):
        self.out = cwd / f"{name}.out"
        self.handle = self.out.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flip.cli", *args], cwd=cwd, env=environment(tag), stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.seen: set[int] = set()

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        def ready() -> bool:
            if text in self.output():
                return True
            assert self.process.poll() is None, f"exited {self.process.returncode} before '{text}':\n{self.output()[-3000:]}"
            return False

        wait_until(ready, timeout, f"'{text}' from {self.out.name}")

    def descendants(self) -> set[int]:
        """Its process tree now (remembered, so a test can check each one is gone later)."""
        found, queue = set(), [self.pid]
        while queue:
            pid = queue.pop()
            for child in children(pid):
                if child not in found:
                    found.add(child)
                    queue.append(child)
        self.seen |= found
        return found

    def finish(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self.handle.close()
        return code

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        self.descendants()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.finish(timeout)


def assert_all_gone(pids: set[int], timeout: float = 15) -> None:
    """Every pid has exited and been reaped: none running, none defunct."""
    def gone() -> bool:
        return all(state(pid) is None for pid in pids)

    try:
        wait_until(gone, timeout, "processes to go")
    except AssertionError:
        left = {pid: (state(pid), cmdline(pid)[:120]) for pid in pids if state(pid) is not None}
        raise AssertionError(f"left running or defunct: {left}") from None


def new_tag() -> str:
    return uuid.uuid4().hex


# The recipe keeps each site's optimizer state between rounds, which a resumed run cannot restore:
# these runs start afresh each round, so any of them can be stopped and resumed exactly.
RESUMABLE = "federation.keep_optimizer_state=false"


def deployment_overrides(port: int, ca: Path, rounds: int) -> list[str]:
    return [
        *FAST_OVERRIDES,
        RESUMABLE,
        "federation=deployment",
        f"federation.superlink=127.0.0.1:{port}",
        f"federation.root_certificates={ca}",
        "federation.num_sites=2",
        f"federation.num_rounds={rounds}",
        "federation.server_eval_site=null",
    ]


def simulation_overrides(rounds: int) -> list[str]:
    return [*FAST_OVERRIDES, RESUMABLE, "federation.num_sites=2", f"federation.num_rounds={rounds}", "federation.server_eval_site=null"]


def site_file(folder: Path, name: str, port: int, certs: Path, runtime_port: int, **extra: object) -> Path:
    settings = {
        "name": name,
        "data": {"site": name},
        "cpus": 1,
        "node": {
            "superlink": f"127.0.0.1:{port}",
            "ca_certificate": str(certs / "ca.pem"),
            "private_key": str(certs / "sites" / f"{name}.key"),
            "home": str(folder / f"{name}-home"),
            "runtime_port": runtime_port,
            "poll_s": 0.1,
            "heartbeat_s": 10,
        },
        **extra,
    }
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(settings, indent=1))
    return path


def run_dirs(folder: Path) -> list[Path]:
    return sorted(path.parent for path in folder.rglob("summary.json"))


def stopped(process: Flip) -> None:
    """Kill what is left of `process` (a test that failed half-way) and reap it."""
    if process.process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.finish(30)
