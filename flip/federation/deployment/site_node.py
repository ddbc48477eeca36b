"""`flip site --config SITE.yaml`: one hospital's node. It runs Flower's SuperNode (which talks to
the server) and flip's warm worker (which runs flip's ClientApp on each message), restarts both
with back-off after a crash, and stops both on Ctrl-C. `flip site --check` says what the site
would serve, without connecting.

The site file holds what belongs to the site alone (see the README's "What a site trusts"): its
name, data, policy, allow-list, approvals and CPU share, and in its `node` block where it
connects, with which CA certificate and private key, and where it keeps its state.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from flip.config.schema_deployment import SiteNodeConfig
from flip.errors import FlipError
from flip.federation.deployment.certs import check_pem_certificate, check_site_private_key
from flip.federation.deployment.daemon import HEARTBEAT_ENV, POLL_ENV
from flip.federation.deployment.supervise import Daemon, become_subreaper, flower_environment, reap_orphans, stop_all
from flip.federation.site_config import SiteSettings, load_site_file

log = logging.getLogger(__name__)
DAEMON = [sys.executable, "-m", "flip.federation.deployment.daemon"]
_CONNECTED = "SuperNode ID:"
_WORKER_READY = "worker ready"
_ACTIVATION_FAILED = "Failed to activate SuperNode"
_START_TIMEOUT_S = 120.0
_MAX_BACKOFF_S = 8.0


@dataclass
class SitePlan:
    """A site's settings file, checked, with the node's paths absolute."""

    file: Path
    site: SiteSettings
    node: SiteNodeConfig
    home: Path
    ca: Path | None
    key: Path | None

    @property
    def restart_window_s(self) -> float:
        """How long a crashed node may keep failing to re-activate: Flower counts it online for
        two heartbeat intervals after its last one."""
        return 2 * self.node.heartbeat_s + 30.0


def load_site_plan(path: Path) -> SitePlan:
    file = path.expanduser().resolve()
    site = load_site_file(file)
    raw = OmegaConf.to_container(OmegaConf.load(file), resolve=True).get("node") or {}
    node = SiteNodeConfig(**raw)
    base = file.parent

    def resolve(value: str | None) -> Path | None:
        return None if value is None else (base / Path(value).expanduser()).resolve()

    ca = key = None
    if not node.insecure:
        if not node.ca_certificate or not node.private_key:
            missing = [k for k in ("ca_certificate", "private_key") if not getattr(node, k)]
            raise FlipError(f"{file}: node.{' and node.'.join(missing)}: needed for TLS and site authentication (or node.insecure: true for a test on one machine)")
        ca = check_pem_certificate(resolve(node.ca_certificate), f"{file}: node.ca_certificate")
        key = check_site_private_key(resolve(node.private_key), f"{file}: node.private_key")
    return SitePlan(file, site, node, resolve(node.home), ca, key)


def supernode_argv(plan: SitePlan, parent: int) -> list[str]:
    argv = [*DAEMON, "supernode", "--parent", str(parent), "--superlink", plan.node.superlink]
    if plan.ca is None:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(plan.ca), "--auth-supernode-private-key", str(plan.key)]
    argv += ["--isolation", "process", "--host", "127.0.0.1", "--port", str(plan.node.runtime_port)]
    return argv + ["--node-config", f"site-config={json.dumps(str(plan.file))}"]


def worker_argv(plan: SitePlan, parent: int) -> list[str]:
    return [*DAEMON, "worker", "--parent", str(parent), "--runtime-api-address", f"127.0.0.1:{plan.node.runtime_port}"]


class SiteNode:
    """The SuperNode and the worker of one site, run and restarted as a unit."""

    def __init__(self, plan: SitePlan):
        self.plan = plan
        logs = plan.home / "logs"
        extra = {POLL_ENV: str(plan.node.poll_s), HEARTBEAT_ENV: str(plan.node.heartbeat_s)}
        env = flower_environment(plan.home / "flower", extra)
        self.supernode = Daemon("supernode", supernode_argv(plan, os.getpid()), logs / "supernode.log", env)
        self.worker = Daemon("worker", worker_argv(plan, os.getpid()), logs / "worker.log", env)
        self.connected_once = False

    def start(self) -> None:
        """Start the worker and the SuperNode; FlipError if the SuperNode cannot join."""
        become_subreaper()
        self.worker.start()
        self.join()

    def join(self) -> None:
        """(Re)start the SuperNode; FlipError if it cannot join. The worker keeps running meanwhile:
        it claims work from the SuperNode's local port whenever one answers there."""
        self.supernode.start()
        if self.supernode.wait_for(lambda out: _CONNECTED in out, _START_TIMEOUT_S):
            self.connected_once = True
            return
        output = self.supernode.output()
        self.supernode.stop()
        raise FlipError(self.join_failure(output))

    def join_failure(self, output: str) -> str:
        name, address = self.plan.site.name, self.plan.node.superlink
        if _ACTIVATION_FAILED in output:
            return (
                f"the SuperLink at {address} refused site {name}'s key: it is not enrolled there "
                f"(the server runs `flip server register-site {name} {name}.pub`), or this site's previous node "
                f"still counts as online (Flower keeps a stopped node for up to {2 * self.plan.node.heartbeat_s:.0f} s)"
            )
        if "Unable to parse the private key" in output:
            return f"{self.plan.file}: node.private_key {self.plan.key} is not a key Flower can read"
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        return f"the node of site {name} did not join {address}: {' | '.join(lines[-3:]) or 'no output'} (log: {self.supernode.log})"

    def _daemons(self) -> list[Daemon]:
        return [self.supernode, self.worker]

    def alive(self) -> bool:
        reap_orphans({d.pid for d in self._daemons() if d.pid})
        return self.supernode.running() and self.worker.running()

    def stop(self) -> None:
        stop_all([self.worker, self.supernode])  # the worker first, while its SuperNode still answers


def run_site(plan: SitePlan, say: Callable[[str], Any] = print) -> None:
    """Run the site until Ctrl-C or SIGTERM, restarting its node after a crash."""
    from flip.federation.deployment.control import probe_superlink

    probe_superlink(plan.node.superlink, plan.ca)
    node = SiteNode(plan)
    # SIGTERM, and SIGINT even where a shell started this in the background with SIGINT ignored.
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        node.start()
        say(f"site {plan.site.name} joined {plan.node.superlink} (logs: {plan.home / 'logs'}; Ctrl-C stops it)")
        while True:
            while node.alive():
                time.sleep(0.2)
            if not node.worker.running():
                say(f"site {plan.site.name}: the worker stopped (exit {node.worker.exit_code()}); restarting it")
                node.worker.start()
            if not node.supernode.running():
                say(f"site {plan.site.name}: the SuperNode stopped (exit {node.supernode.exit_code()}); restarting it")
                _restart(node, plan, say)
    except KeyboardInterrupt:
        say(f"site {plan.site.name}: stopping")
    finally:
        for signum in previous:  # a second Ctrl-C must not cut the shutdown short
            signal.signal(signum, signal.SIG_IGN)
        node.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _restart(node: SiteNode, plan: SitePlan, say: Callable[[str], Any]) -> None:
    """Start the node again after a crash. Flower counts its last life online until two of its
    heartbeat intervals pass (re-activating fails until then), so it retries every few seconds
    within that window, then backs off, and gives up after `restart_window_s`."""
    started = time.monotonic()
    window = 2 * plan.node.heartbeat_s
    while True:
        elapsed = time.monotonic() - started
        time.sleep(2.0 if elapsed < window + 10 else _MAX_BACKOFF_S)
        try:
            node.join()
            say(f"site {plan.site.name} rejoined {plan.node.superlink}")
            return
        except FlipError as error:
            if time.monotonic() - started > plan.restart_window_s:
                raise FlipError(f"site {plan.site.name} could not rejoin within {plan.restart_window_s:.0f} s: {error}") from None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _policy(site: SiteSettings) -> str:
    """The policy's rules that differ from accepting anything, e.g. `require_dp: True, min_cohort: 20`."""
    from dataclasses import asdict, fields

    from flip.privacy.schema import SitePolicy

    defaults = {f.name: f.default for f in fields(SitePolicy)}
    set_rules = {key: value for key, value in asdict(site.policy).items() if value != defaults.get(key)}
    return ", ".join(f"{key}: {value}" for key, value in set_rules.items()) or "none (accepts any privacy setting)"


def check_site(plan: SitePlan, recipe: Path | None, overrides: list[str]) -> tuple[list[str], Any]:
    """What the site would serve, as lines: its settings, its node, and (given a recipe) whether
    it accepts that run; with the run it accepted (None otherwise). Nothing connects."""
    site = plan.site
    lines = [
        f"site {site.name} (settings: {plan.file})",
        f"  node: {plan.node.superlink}, " + ("NO TLS (node.insecure)" if plan.ca is None else f"TLS with {plan.ca}, key {plan.key}"),
        f"  state and logs: {plan.home}",
        f"  data: {json.dumps(site.data) if site.data else '(the recipe’s)'}",
        f"  policy: {_policy(site)}",
        f"  approves: {'any run' if site.approved is None else ', '.join(site.approved) or 'no run'}",
        f"  allow-list additions: {', '.join(site.allowed_targets) or 'none'}; cpus: {site.cpus or 'torch default'}",
    ]
    if recipe is None:
        return lines + ["  (give a recipe and its overrides to check a run against this site and inspect the data it would read)"], None
    from flip.experiment.validate import validate
    from flip.federation.shipping import pack_config
    from flip.federation.trust import SiteRefusal, accept_run

    cfg = validate(recipe, overrides)
    text, digest = pack_config(cfg)
    try:
        run = accept_run(text, digest, site)
    except SiteRefusal as refusal:
        return lines + [f"  run {recipe.stem} (config sha256 {digest}): REFUSED", *(f"    - {p}" for p in refusal.problems)], None
    return lines + [f"  run {recipe.stem} (config sha256 {digest}): accepted"], run
