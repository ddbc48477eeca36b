"""Starting, watching and stopping the daemons `flip server` and `flip site` own.

Each daemon runs in its own session (a terminal's Ctrl-C reaches flip, which stops them in
order), with its output in a log file, and dies with its supervisor (Linux: the parent-death
signal, set by `flip.federation.deployment.daemon` in the child). The supervisor is a child
subreaper, so anything a daemon leaves behind is re-parented to it and reaped: nothing it
started stays running or defunct.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process (which then reaps them)."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(parent: int | None) -> None:
    """In a daemon: get SIGTERM when the supervisor dies; exit now if it already has."""
    if parent is None:
        return
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def reap_orphans(keep: set[int] = frozenset()) -> list[int]:
    """Reap every exited child but those in `keep` (the daemons, whose own `Popen` reaps them
    and reads their exit status): descendants re-parented to this subreaper."""
    reaped = []
    for pid in _children() - set(keep):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if done:
            reaped.append(done)
    return reaped


def _children() -> set[int]:
    """This process's children (Linux: /proc; elsewhere none are known)."""
    found: set[int] = set()
    for thread in Path(f"/proc/{os.getpid()}/task").glob("*"):
        try:
            found |= {int(pid) for pid in (thread / "children").read_text().split()}
        except OSError:
            continue
    return found


def flower_environment(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a Flower daemon: its own home, no telemetry, no update check, no
    runtime installs, the Python's bin first on PATH (daemons start each other by name), and
    the flip this process runs importable."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    paths = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    import flip

    flip_root = str(Path(flip.__file__).resolve().parent.parent)
    python_path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != flip_root]
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PATH=os.pathsep.join([bin_dir, *paths]),
        PYTHONPATH=os.pathsep.join([flip_root, *python_path]),
        PYTHONUNBUFFERED="1",
        **(extra or {}),
    )
    return env


@dataclass
class Daemon:
    """One supervised process: started in its own session, output appended to `log`."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    _log_offset: int = 0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exit_code(self) -> int | None:
        """None while running (or never started)."""
        return None if self.process is None else self.process.poll()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        """What it wrote since its last start."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as handle:
            handle.seek(self._log_offset)
            return handle.read().decode("utf-8", "replace")

    def wait_for(self, ready: Callable[[str], bool], timeout: float) -> bool:
        """Poll its output until `ready` says so; False if it exits or the time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready(self.output()):
                return True
            if not self.running():
                return False
            time.sleep(0.05)
        return False

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (a SuperNode then signs off, a SuperLink closes), SIGKILL after `grace`."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:  # whatever else is left of its session
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def stop_all(daemons: list[Daemon], grace: float = 10.0) -> None:
    """Stop `daemons` in the order given, then reap anything they left behind."""
    for daemon in daemons:
        daemon.stop(grace)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        reap_orphans()
        if not _children():
            return
        time.sleep(0.05)
