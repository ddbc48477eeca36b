"""The command line of a real federation: `flip certs`, `flip server`, `flip site`, `flip runs`
and `flip stop` (added to `flip.cli`'s parser)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_SUPERLINK = "127.0.0.1:9092"


def cmd_certs(args: argparse.Namespace) -> int:
    from flip.console import console
    from flip.federation.deployment.certs import write_certificates

    issued = write_certificates(Path(args.folder), list(args.name or []), list(args.site or []), overwrite=args.force)
    console.print(f"wrote a CA, a server certificate for {', '.join(issued.server_names)} and {len(issued.sites)} site key(s) to [bold]{issued.folder}[/bold]", soft_wrap=True)
    for party, files in issued.handout():
        console.print(f"  {party}: {', '.join(str(issued.folder / f) for f in files)}", soft_wrap=True)
    if issued.sites:
        console.print("enrol each site on the running server: " + "; ".join(f"flip server register-site {s} {issued.folder / 'sites' / s}.pub" for s in issued.sites), soft_wrap=True)
    return 0


def _server_plan(args: argparse.Namespace):
    from flip.federation.deployment.server import load_server_plan

    given = {
        "home": args.home,
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "certificates": getattr(args, "certificates", None),
        "runs_dir": getattr(args, "runs", None),
        "insecure": True if getattr(args, "insecure", False) else None,
    }
    return load_server_plan(Path(args.config) if args.config else None, **given)


def _settings_home(config: Path) -> Path:
    """The `home` a server settings file names (relative to the file), without checking the rest."""
    from omegaconf import OmegaConf

    home = OmegaConf.to_container(OmegaConf.load(config)).get("home", "flip-server")
    return (config.expanduser().resolve().parent / str(home)).resolve()


def cmd_server(args: argparse.Namespace) -> int:
    from flip.console import console
    from flip.federation.deployment.server import serve_forever

    serve_forever(_server_plan(args), say=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
    return 0


def cmd_register_site(args: argparse.Namespace) -> int:
    from flip.console import console
    from flip.federation.deployment.server import register_site

    home = Path(args.home) if args.home else _settings_home(Path(args.config)) if args.config else Path("flip-server")
    node_id = register_site(home, args.site_name, Path(args.key))
    console.print(f"enrolled site {args.site_name}" + (f" (node {node_id})" if node_id else " (insecure server: name only)"), markup=False)
    return 0


def cmd_site(args: argparse.Namespace) -> int:
    from flip.console import console
    from flip.federation.deployment.site_node import check_site, load_site_plan, run_site

    plan = load_site_plan(Path(args.config))
    say = lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    if args.check:
        from flip.experiment.recipes import resolve_recipe

        items = list(args.items)
        name = items.pop(0) if items and "=" not in items[0] and not items[0].startswith(("+", "~")) else None
        recipe = resolve_recipe(name) if name or items else None
        lines, run = check_site(plan, recipe, items)
        for line in lines + (_inventory(run) if run is not None else []):
            say(line)
        return 0
    if args.items:
        raise SystemExit(f"flip site: unexpected arguments {' '.join(args.items)} (a recipe goes with --check)")
    run_site(plan, say=say)
    return 0


def _inventory(run) -> list[str]:
    """The site's data as the run would read it: counts, labels, and what is left out and why."""
    from flip.inspect import inventory_of
    from flip.training import build_datamodule

    datamodule = build_datamodule(run.cfg, min_samples=0)
    datamodule.setup("fit")
    inventory = inventory_of(datamodule)
    labels = ", ".join(f"{label}: {n}" for label, n in inventory.labels.items())
    lines = [f"  data as flip reads it: {inventory.found} found, {inventory.usable} usable ({labels}), {len(inventory.skipped)} skipped"]
    return lines + [f"    skipped {item['path']}: {item['reason']}" for item in inventory.skipped[:20]]


def _control(args: argparse.Namespace):
    from flip.federation.deployment.control import Control, ca_bytes

    return Control(args.superlink, None if args.insecure else ca_bytes(args.ca, "--ca"), args.insecure)


def cmd_runs(args: argparse.Namespace) -> int:
    import json

    with _control(args) as control:
        runs = control.runs()
    if args.json:
        print(json.dumps([vars(info) for info in runs], indent=1))
        return 0
    print(f"{'run id':<21} {'status':<20} {'submitted':<19}  {'finished':<19}  details")
    for info in runs:
        status = info.status if info.status != "finished" else f"finished: {info.sub_status}"
        print(f"{info.run_id:<21} {status:<20} {info.pending_at[:19]:<19}  {info.finished_at[:19]:<19}  {info.details[:100]}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from flip.console import console
    from flip.errors import FlipError

    with _control(args) as control:
        info = control.run(args.run_id)
        if info.status == "finished":
            raise FlipError(f"run {args.run_id} already finished ({info.sub_status})")
        control.stop_run(args.run_id)
    console.print(f"stopping run {args.run_id}")
    return 0


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--superlink", default=DEFAULT_SUPERLINK, help="the server's address (default: %(default)s)")
    parser.add_argument("--ca", help="the CA certificate of the server's TLS certificate (ca.pem from `flip certs`)")
    parser.add_argument("--insecure", action="store_true", help="the server runs without TLS (--insecure)")


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the server's settings file (SERVER.yaml)")
    parser.add_argument("--home", help="the server's folder: Flower's home, logs, enrolled sites, runs (default: ./flip-server)")
    parser.add_argument("--certificates", help="a `flip certs` folder (ca.pem, server.pem, server.key)")
    parser.add_argument("--insecure", action="store_true", help="no TLS and no site authentication (a test on one machine only)")


def add_deployment_commands(commands: argparse._SubParsersAction) -> None:
    certs = commands.add_parser("certs", help="write a CA, the server's TLS certificate and the sites' keys")
    certs.add_argument("folder", metavar="DIR")
    certs.add_argument("--name", action="append", help="a name sites reach the server by (repeatable); localhost and 127.0.0.1 are always added")
    certs.add_argument("--site", action="append", help="a site to make a key pair for (repeatable)")
    certs.add_argument("--force", action="store_true", help="replace certificates already in DIR")
    certs.set_defaults(handler=cmd_certs)

    server = commands.add_parser("server", help="run the federation's server (a SuperLink with TLS and site authentication)")
    _server_options(server)
    server.add_argument("--host", help="the address to listen on (default: 127.0.0.1; 0.0.0.0 for every interface)")
    server.add_argument("--port", type=int, help="the port (default: 9092)")
    server.add_argument("--runs", help="where run directories go (default: HOME/runs)")
    server.set_defaults(handler=cmd_server)
    server_commands = server.add_subparsers(dest="server_command", metavar="SERVER_COMMAND")
    register = server_commands.add_parser("register-site", help="enrol a site's public key under its name")
    register.add_argument("site_name", metavar="NAME")
    register.add_argument("key", metavar="KEY.pub")
    _server_options(register)
    register.set_defaults(handler=cmd_register_site)

    site = commands.add_parser("site", help="run one site's node (`--check`: what it would serve)")
    site.add_argument("--config", required=True, help="the site's settings file (SITE.yaml)")
    site.add_argument("--check", action="store_true", help="report the site's settings, and with a recipe whether it would accept that run and what data it would read; connects to nothing")
    site.add_argument("items", nargs="*", metavar="[RECIPE] [OVERRIDES]", help="with --check: a recipe and its overrides")
    site.set_defaults(handler=cmd_site)

    runs = commands.add_parser("runs", help="list the runs on a server, with their status")
    _connection_options(runs)
    runs.add_argument("--json", action="store_true", help="print a JSON list")
    runs.set_defaults(handler=cmd_runs)

    stop = commands.add_parser("stop", help="stop a run on a server")
    stop.add_argument("run_id", type=int, metavar="RUN_ID")
    _connection_options(stop)
    stop.set_defaults(handler=cmd_stop)
