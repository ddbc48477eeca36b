"""Schemas of a real federation: the run's `federation=deployment` option, the server's settings
file (`flip server --config`) and the `node` block of a site's settings file (`flip site`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

DEFAULT_PORT = 9092
HEARTBEAT_WINDOW_S = 60.0  # Flower counts a silent SuperNode online this long (30 s x patience 2)
_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class DeploymentFederationConfig:
    """Real sites, each running `flip site`, trained through one `flip server`."""

    mode: str = "deployment"
    num_sites: int = 2
    num_rounds: int = 3
    local_epochs: int = 1
    local_steps: Optional[int] = None
    keep_optimizer_state: bool = False
    # A round in which fewer sites train successfully stops the run.
    min_successful_sites: int = 1
    # Seconds to wait for replies in a round. A site that stopped is reported within Flower's
    # heartbeat window (about 60 s) whatever this says.
    round_timeout: float = 600.0
    # Seconds to wait at the start for every site to connect and answer the handshake.
    connect_timeout: float = 300.0
    # Seconds a round waits for a site that went away to come back before going on without it.
    rejoin_timeout: float = 120.0
    # A site folder of data the server itself holds (an external test set), evaluated after every
    # round; the server's settings file says where its data is (`data:`).
    server_eval_site: Optional[str] = None
    # The run's sites by name (each site's own `name:`); empty: the sites enrolled on the server.
    site_names: List[str] = field(default_factory=list)
    # Where the server's SuperLink listens (`flip server` prints it), and the CA certificate
    # that signed its TLS certificate (`flip certs` writes ca.pem). Neither is part of the
    # experiment: both are left out of the config a site sees and approves.
    superlink: Optional[str] = f"127.0.0.1:{DEFAULT_PORT}"
    root_certificates: Optional[str] = None
    # A server started with --insecure (no TLS): only for a test on one machine.
    insecure: bool = False


@dataclass
class ServerSettingsConfig:
    """`flip server --config SERVER.yaml`: what the server machine runs. Relative paths are
    relative to the settings file."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # Flower's home, the state database, logs, and (unless runs_dir says otherwise) the runs.
    home: str = "flip-server"
    runs_dir: Optional[str] = None
    # A folder from `flip certs` (ca.pem, server.pem, server.key); the three keys below win.
    certificates: Optional[str] = None
    ca_certificate: Optional[str] = None
    certificate: Optional[str] = None
    private_key: Optional[str] = None
    # No TLS and no site authentication: only for a test on one machine.
    insecure: bool = False
    # Refuse sites whose key was not enrolled with `flip server register-site` (needs TLS).
    authenticate_sites: bool = True
    # Strategies this server builds beyond Flower's own (exact dotted names or `package.*`).
    allowed_targets: List[str] = field(default_factory=list)
    # The names sites and researchers reach this server by (printed; `flip certs --name`).
    public_names: List[str] = field(default_factory=list)
    # Seconds between the server's polls for new runs.
    poll_s: float = 0.2
    # Data keys (root, cache_dir) of the data the server holds for `federation.server_eval_site`.
    data: Dict[str, Any] = field(default_factory=dict)
    # MLflow tracking URIs a run may make this server report to (logger.tracking_uri, exact); a
    # tracker that writes under the run directory (csv, tensorboard, a local MLflow store) needs none.
    tracking_uris: List[str] = field(default_factory=list)


@dataclass
class SiteNodeConfig:
    """The `node` block of a site's settings file: how `flip site` connects and where it keeps
    its state. Relative paths are relative to the site file."""

    superlink: str = f"127.0.0.1:{DEFAULT_PORT}"
    ca_certificate: Optional[str] = None
    private_key: Optional[str] = None
    insecure: bool = False
    # Flower's home and the node's logs.
    home: str = "flip-site"
    # The SuperNode's local Runtime API port (this machine only).
    runtime_port: int = 9094
    # Seconds between the node's polls for work (Flower's own: 3 s).
    poll_s: float = 0.5
    # The heartbeat interval the node announces: a node that stops counts as online for two of
    # them (Flower's default 30 s; the SuperLink accepts 10 s and more).
    heartbeat_s: float = 30.0


def valid_site_name(name: Any) -> bool:
    return isinstance(name, str) and bool(_SITE_NAME.fullmatch(name))


def _address_problem(key: str, address: Any) -> list[str]:
    host, _, port = str(address).rpartition(":")
    if "://" in str(address) or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return [f"{key}: must be HOST:PORT (no scheme), got {address!r}"]
    return []


def connection_problems(federation: Any) -> list[str]:
    """How the researcher's machine reaches the server, checked when `flip run` starts (the
    config's hash, which sites approve, does not depend on it: `flip show --hash` needs none)."""
    problems = _address_problem("federation.superlink", federation.superlink)
    if federation.insecure and federation.root_certificates:
        problems.append("federation.insecure: true with federation.root_certificates set; choose one")
    if not federation.insecure and not federation.root_certificates:
        problems.append(
            "federation.root_certificates: set the CA certificate the server's TLS certificate is signed with "
            "(`flip certs` writes ca.pem), or federation.insecure=true for a server started with --insecure"
        )
    return problems


def deployment_problems(federation: Any) -> list[str]:
    """Rules of `federation=deployment` that span its keys."""
    problems = []
    names = list(federation.site_names or [])
    for name in names:
        if not valid_site_name(name):
            problems.append(f"federation.site_names: {name!r} is not a site name (letters, digits, '-', '_', '.')")
    if len(set(names)) != len(names):
        problems.append(f"federation.site_names: lists a site twice: {names}")
    if names and len(names) != federation.num_sites:
        problems.append(f"federation.site_names: lists {len(names)} site(s), federation.num_sites is {federation.num_sites}")
    if federation.superlink is not None:  # null in the config a site or the server receives
        problems += _address_problem("federation.superlink", federation.superlink)
    for key in ("round_timeout", "connect_timeout"):
        if federation[key] <= 0:
            problems.append(f"federation.{key}: must be positive, got {federation[key]}")
    if federation.rejoin_timeout < 0:
        problems.append(f"federation.rejoin_timeout: must be 0 or more, got {federation.rejoin_timeout}")
    return problems


def server_settings_problems(raw: dict, where: str) -> list[str]:
    from flip.config.allowlist import entry_problems
    from flip.config.checks import check_node

    problems = check_node(raw, ServerSettingsConfig, where)
    problems += entry_problems(raw.get("allowed_targets"), f"{where}.allowed_targets")
    if "port" in raw and isinstance(raw["port"], int) and not 0 < raw["port"] < 65536:
        problems.append(f"{where}.port: must be a TCP port (1-65535), got {raw['port']}")
    if isinstance(raw.get("poll_s"), (int, float)) and not 0.01 <= raw["poll_s"] <= 10:
        problems.append(f"{where}.poll_s: must be between 0.01 and 10 seconds, got {raw['poll_s']}")
    return problems


def node_problems(raw: Any, where: str) -> list[str]:
    from flip.config.checks import check_node

    if raw is None:
        return []
    if not isinstance(raw, dict):
        return [f"{where}: must be a mapping, got {raw!r}"]
    problems = check_node(raw, SiteNodeConfig, where)
    if "superlink" in raw:
        problems += _address_problem(f"{where}.superlink", raw["superlink"])
    if isinstance(raw.get("poll_s"), (int, float)) and not 0.05 <= raw["poll_s"] <= 3:
        problems.append(f"{where}.poll_s: must be between 0.05 and 3 seconds, got {raw['poll_s']}")
    if isinstance(raw.get("heartbeat_s"), (int, float)) and not 10 <= raw["heartbeat_s"] <= 1800:
        problems.append(f"{where}.heartbeat_s: must be between 10 and 1800 seconds (what the SuperLink accepts), got {raw['heartbeat_s']}")
    return problems
