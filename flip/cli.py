"""The `flip` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flip import __version__
from flip.errors import FlipError


def _split_recipe(items: list[str]) -> tuple[str | None, list[str]]:
    """The first item names a recipe unless it looks like a Hydra override (`key=value`, `+k`, `~k`)."""
    if items and "=" not in items[0] and not items[0].startswith(("+", "~")):
        return items[0], items[1:]
    return None, items


def cmd_run(args: argparse.Namespace) -> int:
    from flip.experiment.recipes import resolve_recipe
    from flip.experiment.validate import validate, validate_sweep
    from flip.launch import launch

    if args.resume:
        from flip.launch import resume_arguments

        recipe, overrides = resume_arguments(Path(args.resume), args.items)
        launch(recipe, overrides, resume=True)
        return 0
    name, overrides = _split_recipe(args.items)
    recipe = resolve_recipe(name)
    if args.multirun:
        validate_sweep(recipe, overrides)
    else:
        validate(recipe, overrides)
    launch(recipe, overrides, multirun=args.multirun)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from flip.experiment.recipes import resolve_recipe
    from flip.experiment.validate import validate_sweep
    from flip.console import console

    name, overrides = _split_recipe(args.items)
    recipe = resolve_recipe(name)
    jobs = validate_sweep(recipe, overrides)
    console.print(f"valid: {recipe.name}" + (f" ({jobs} sweep jobs)" if jobs > 1 else ""))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from flip.experiment.recipes import resolve_recipe
    from flip.experiment.validate import validate

    name, overrides = _split_recipe(args.items)
    cfg = validate(resolve_recipe(name), overrides)
    if args.hash:
        from flip.federation.shipping import config_digest

        print(config_digest(cfg))
        return 0
    sys.stdout.write(OmegaConf.to_yaml(cfg, resolve=not args.raw))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from rich.table import Table

    from flip.experiment.recipes import list_recipes
    from flip.console import console
    from flip.paths import DEFAULT_RECIPE

    table = Table(show_header=True, header_style="bold")
    table.add_column("recipe")
    table.add_column("what it does")
    for recipe in list_recipes():
        marker = " (default)" if recipe.name == DEFAULT_RECIPE else ""
        table.add_row(recipe.name + marker, recipe.description)
    console.print(table)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from flip.report import build_report, print_report

    report = build_report([Path(path) for path in args.paths], Path(args.out) if args.out else None)
    print_report(report)
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    import json

    from flip.experiment.recipes import resolve_recipe
    from flip.experiment.validate import validate
    from flip.inspect import inspect_sites

    name, overrides = _split_recipe(args.items)
    cfg = validate(resolve_recipe(name), overrides)
    if cfg.federation.mode == "deployment":
        raise FlipError("a deployment's data is at its sites: each site inspects its own with `flip site --config SITE.yaml --check RECIPE [OVERRIDES]`")
    sites = inspect_sites(cfg, require_labels=not args.no_labels)
    if args.json:
        print(json.dumps({"sites": [site.as_json() for site in sites]}, indent=2))
    else:
        from flip.console import print_inventory

        print_inventory(sites)
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from flip.console import console
    from flip.data.synthetic.dataset import write_synthetic_dicom

    out = write_synthetic_dicom(
        Path(args.out),
        num_sites=args.sites,
        images_per_site=args.images_per_site,
        image_size=args.image_size,
        seed=args.seed,
    )
    console.print(f"wrote synthetic DICOM, FHIR and notes for {args.sites} site(s) to [bold]{out}[/bold]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flip", description="Declarative federated learning for healthcare.")
    parser.add_argument("--version", action="version", version=f"flip {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full stack traces for errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    items_help = "a recipe (path or name from `flip ls`), then Hydra overrides such as trainer.max_epochs=3"
    run = commands.add_parser("run", help="run a recipe (the default recipe without one)", description="Run a recipe.")
    run.add_argument("items", nargs="*", metavar="[RECIPE] [OVERRIDES]", help=items_help)
    run.add_argument("-m", "--multirun", action="store_true", help="sweep: one run per combination of values")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a federated run that stopped, after its last completed round")
    run.set_defaults(handler=cmd_run)

    validate = commands.add_parser("validate", help="check a recipe and overrides; list every problem")
    validate.add_argument("items", nargs="*", metavar="[RECIPE] [OVERRIDES]", help=items_help)
    validate.add_argument("-m", "--multirun", action="store_true", help="accepted for symmetry with run")
    validate.set_defaults(handler=cmd_validate)

    show = commands.add_parser("show", help="print the fully resolved config as YAML")
    show.add_argument("items", nargs="*", metavar="[RECIPE] [OVERRIDES]", help=items_help)
    show.add_argument("--raw", action="store_true", help="keep ${...} interpolations unresolved")
    show.add_argument("--hash", action="store_true", help="print only the config sha256 a site sees (what a site approves)")
    show.set_defaults(handler=cmd_show)

    ls = commands.add_parser("ls", help="list recipes with what each does")
    ls.set_defaults(handler=cmd_ls)

    report = commands.add_parser("report", help="compare runs or a sweep: report.md, report.csv, report.png")
    report.add_argument("paths", nargs="+", metavar="DIR", help="run directories, sweep directories, or folders holding them")
    report.add_argument("--out", help="where to write the report (default: DIR when one is given, else here)")
    report.set_defaults(handler=cmd_report)

    data = commands.add_parser("data", help="data tools: inspect a recipe's data, write synthetic data")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    synth = data_commands.add_parser("synth", help="write a synthetic multi-site data set: DICOM, FHIR export, notes")
    synth.add_argument("--out", default="synthetic-dicom", help="output folder (default: %(default)s)")
    synth.add_argument("--sites", type=int, default=3, help="number of sites (default: %(default)s)")
    synth.add_argument("--images-per-site", type=int, default=240, help="mean images per site (default: %(default)s)")
    synth.add_argument("--image-size", type=int, default=64, help="image side in pixels (default: %(default)s)")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default: %(default)s)")
    synth.set_defaults(handler=cmd_data_synth)
    inspect = data_commands.add_parser("inspect", help="what each site's data looks like to flip: found, usable, skipped")
    inspect.add_argument("items", nargs="*", metavar="[RECIPE] [OVERRIDES]", help=items_help)
    inspect.add_argument("--json", action="store_true", help="print one JSON object: {\"sites\": [...]}")
    inspect.add_argument("--no-labels", action="store_true", help="report unlabelled items as unlabelled, not as errors")
    inspect.set_defaults(handler=cmd_data_inspect)

    from flip.cli_deployment import add_deployment_commands

    add_deployment_commands(commands)
    from flip.cli_audit import add_audit_commands

    add_audit_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Options may sit between overrides (`flip run r a=1 -m b=2`): argparse leaves the rest over.
    unknown = [item for item in extra if item.startswith("-")]
    if unknown or (extra and not hasattr(args, "items")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.items = [*args.items, *extra]
    if args.debug:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        return args.handler(args)
    except FlipError as error:
        if args.debug:
            raise
        from flip.console import print_problems

        print_problems(f"flip: {error}")
        return error.exit_code
    except KeyboardInterrupt:
        print("flip: interrupted", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # Flower's server thread would keep the interpreter alive (and restart Ray) after the
        # run was stopped; the run directory and Ray are already closed at this point.
        os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
