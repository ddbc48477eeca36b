"""`flip server`: a SuperLink with TLS and site authentication, flip's ServerApp launcher, and the
server's folder (`server_home`); `flip server register-site` enrols a site's key under its name.

The SuperLink serves Flower's Fleet API (sites), Control API (researchers) and Runtime API
(the server's own ServerApp processes) on one port. Runtime dependency installation and
telemetry are off; its database is a file in the server's home, so enrolled sites and runs
survive a restart.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from flip.config.schema_deployment import DEFAULT_PORT, server_settings_problems
from flip.errors import ConfigError, FlipError
from flip.federation.deployment.certs import CA_CERT, SERVER_CERT, SERVER_KEY, check_pem_certificate, check_server_certificate
from flip.federation.deployment.server_home import SERVER_HOME_ENV, ServerHome
from flip.federation.deployment.supervise import Daemon, become_subreaper, flower_environment, reap_orphans, stop_all

log = logging.getLogger(__name__)
DAEMON = [sys.executable, "-m", "flip.federation.deployment.daemon"]
_READY = "Application startup complete"
_START_TIMEOUT_S = 60.0


@dataclass
class ServerPlan:
    """`flip server`'s settings, checked and with absolute paths."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    home: Path = Path("flip-server")
    runs_dir: Path | None = None
    tls: tuple[Path, Path, Path] | None = None  # CA, certificate, key
    authenticate_sites: bool = True
    allowed_targets: list[str] = field(default_factory=list)
    public_names: list[str] = field(default_factory=list)
    poll_s: float = 0.2
    data: dict[str, Any] = field(default_factory=dict)
    tracking_uris: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def local_address(self) -> str:
        """Where this machine's own processes reach the SuperLink."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{self.port}"

    @property
    def ca(self) -> Path | None:
        return self.tls[0] if self.tls else None


def load_server_plan(config: Path | None = None, **given: Any) -> ServerPlan:
    """The server's settings: the file's (paths relative to it), then the command line's (paths
    relative to the working folder); ConfigError lists every problem with its key."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    where = "server settings"
    if config is not None:
        file = config.expanduser().resolve()
        if not file.is_file():
            raise ConfigError([f"{file}: no such server settings file"])
        loaded = OmegaConf.to_container(OmegaConf.load(file), resolve=True)
        if not isinstance(loaded, dict):
            raise ConfigError([f"{file}: must hold a mapping of server settings"])
        raw, base, where = loaded, file.parent, str(file)
        problems = server_settings_problems(raw, where)
        if problems:
            raise ConfigError(problems, source=where)
    cli_paths = {key for key, value in given.items() if value is not None}
    raw.update({key: value for key, value in given.items() if value is not None})

    def path(key: str) -> Path | None:
        value = raw.get(key)
        if value is None:
            return None
        return ((Path.cwd() if key in cli_paths else base) / Path(str(value)).expanduser()).resolve()

    home = path("home") or (base / "flip-server").resolve()
    plan = ServerPlan(
        host=str(raw.get("host", "127.0.0.1")),
        port=int(raw.get("port", DEFAULT_PORT)),
        home=home,
        runs_dir=path("runs_dir") or home / "runs",
        authenticate_sites=bool(raw.get("authenticate_sites", True)),
        allowed_targets=list(raw.get("allowed_targets") or []),
        public_names=list(raw.get("public_names") or []),
        poll_s=float(raw.get("poll_s", 0.2)),
        data=dict(raw.get("data") or {}),
        tracking_uris=[str(uri) for uri in raw.get("tracking_uris") or []],
    )
    if raw.get("insecure"):
        plan.authenticate_sites = False
        return plan
    folder = path("certificates")
    files = {key: path(key) or (folder / name if folder else None) for key, name in (("ca_certificate", CA_CERT), ("certificate", SERVER_CERT), ("private_key", SERVER_KEY))}
    missing = [key for key, value in files.items() if value is None]
    if missing:
        raise ConfigError(
            [f"{where}: TLS needs certificates (a `flip certs` folder) or {', '.join(missing)}; or insecure: true for a test on one machine"]
        )
    ca = check_pem_certificate(files["ca_certificate"], "ca_certificate")
    cert = check_pem_certificate(files["certificate"], "certificate")
    if not files["private_key"].is_file():
        raise ConfigError([f"private_key: no such file: {files['private_key']}"])
    check_server_certificate(cert, files["private_key"], ca, [n for n in plan.public_names if n])
    plan.tls = (ca, cert, files["private_key"])
    return plan


def superlink_argv(plan: ServerPlan, parent: int) -> list[str]:
    argv = [*DAEMON, "superlink", "--parent", str(parent), "--host", plan.host, "--port", str(plan.port)]
    if plan.tls is None:
        argv.append("--insecure")
    else:
        ca, cert, key = plan.tls
        argv += ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--ssl-ca-certfile", str(ca)]
        if plan.authenticate_sites:
            argv.append("--enable-supernode-auth")
    argv += ["--isolation", "process", "--disable-runtime-dependency-installation", "--database", str(ServerHome(plan.home).database)]
    return argv


def executor_argv(plan: ServerPlan, parent: int) -> list[str]:
    argv = [*DAEMON, "executor", "--parent", str(parent), "--runtime-api-address", plan.local_address]
    argv += ["--logs", str(ServerHome(plan.home).logs), "--poll-s", str(plan.poll_s)]
    return argv + (["--root-certificates", str(plan.ca)] if plan.ca else [])


class FlipServer:
    """The SuperLink and the ServerApp launcher, started and stopped together."""

    def __init__(self, plan: ServerPlan):
        self.plan = plan
        home = ServerHome(plan.home)
        for folder in (home.root, home.flower, home.logs, plan.runs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        home.write_settings(
            {
                "runs_dir": str(plan.runs_dir),
                "allowed_targets": plan.allowed_targets,
                "data": plan.data,
                "tracking_uris": plan.tracking_uris,
                "address": plan.address,
                "local_address": plan.local_address,
                "ca_certificate": str(plan.ca) if plan.ca else None,
                "authenticate_sites": plan.authenticate_sites,
            }
        )
        env = flower_environment(home.flower, {SERVER_HOME_ENV: str(home.root)})
        self.superlink = Daemon("superlink", superlink_argv(plan, os.getpid()), home.logs / "superlink.log", env)
        self.executor = Daemon("executor", executor_argv(plan, os.getpid()), home.logs / "executor.log", env)

    def start(self) -> None:
        become_subreaper()
        self.superlink.start()
        if not self.superlink.wait_for(lambda out: _READY in out, _START_TIMEOUT_S):
            tail = _tail(self.superlink.output())
            self.stop()
            raise FlipError(f"the SuperLink did not start on {self.plan.address}: {tail} (log: {self.superlink.log})")
        self.executor.start()

    def _daemons(self) -> list[Daemon]:
        return [self.superlink, self.executor]

    def check(self) -> None:
        """Restart the launcher if it stopped; FlipError if the SuperLink did."""
        reap_orphans({d.pid for d in self._daemons() if d.pid})
        if not self.superlink.running():
            raise FlipError(f"the SuperLink stopped (exit {self.superlink.exit_code()}): {_tail(self.superlink.output())} (log: {self.superlink.log})")
        if not self.executor.running():
            log.warning("the ServerApp launcher stopped (exit %s); restarting it", self.executor.exit_code())
            self.executor.start()

    def stop(self) -> None:
        stop_all([self.executor, self.superlink])


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"


def connection_help(plan: ServerPlan) -> list[str]:
    """What `flip server` prints: where sites and researchers connect, and what to keep private."""
    address = plan.address if plan.host not in ("0.0.0.0", "::") else f"{(plan.public_names or ['HOST'])[0]}:{plan.port}"
    tls = plan.tls is not None
    lines = [
        f"SuperLink on {plan.address} ({'TLS, sites authenticated by key' if tls and plan.authenticate_sites else 'TLS' if tls else 'NO TLS, sites not authenticated'})",
        f"  sites:        flip site --config SITE.yaml    (node.superlink: {address}" + (f", node.ca_certificate: {plan.ca.name})" if tls else ", node.insecure: true)"),
        f"  researchers:  flip run RECIPE federation=deployment federation.superlink={address} "
        + (f"federation.root_certificates={plan.ca}" if tls else "federation.insecure=true"),
        f"  enrol a site: flip server register-site NAME NAME.pub --home {plan.home}",
        f"  runs folder:  {plan.runs_dir}",
        f"  logs:         {ServerHome(plan.home).logs}",
        "  this port also serves Flower's Control API, which does not authenticate callers: let hospitals reach /v1/fleet/ only (README: Run a real federation)",
    ]
    return lines


def serve_forever(plan: ServerPlan, say: Any = print) -> None:
    """Run the server until Ctrl-C or SIGTERM, then stop everything it started."""
    if plan.tls is None:
        say("WARNING: --insecure: no TLS and no site authentication; anyone who reaches this port can join and read the model. Use it only for a test on one machine.")
    server = FlipServer(plan)
    # SIGTERM, and SIGINT even where a shell started this in the background with SIGINT ignored.
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        for line in connection_help(plan):
            say(line)
        say("flip server ready (Ctrl-C stops it)")
        while True:
            server.check()
            time.sleep(0.2)
    except KeyboardInterrupt:
        say("flip server: stopping")
    finally:
        for signum in previous:  # a second Ctrl-C must not cut the shutdown short
            signal.signal(signum, signal.SIG_IGN)
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def register_site(home_dir: Path, name: str, key: Path) -> int:
    """Enrol `key` (a site's OpenSSH ECDSA public key) under `name` on the server running with
    the home `home_dir` (its address and CA are in the home's server.json)."""
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    from flip.federation.deployment.certs import check_site_name, load_site_public_key
    from flip.federation.deployment.control import Control

    check_site_name(name)
    public = load_site_public_key(key)
    home = ServerHome(home_dir)
    settings = home.settings()
    enrolled = home.enrolled()
    if name in enrolled:
        raise FlipError(f"site {name!r} is enrolled already (node {enrolled[name]['node_id']}); one key per site name")
    if settings["ca_certificate"] is None or not settings["authenticate_sites"]:
        home.enrol(name, {"node_id": None, "public_key": key.read_text().strip(), "enrolled_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return 0
    with Control(settings["local_address"], Path(settings["ca_certificate"])) as control:
        node_id = control.register_node(public_key_to_bytes(public), name)
    home.enrol(name, {"node_id": node_id, "public_key": key.read_text().strip(), "enrolled_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return node_id
