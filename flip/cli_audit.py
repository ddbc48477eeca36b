"""`flip audit verify | reproduce | diff` (added to `flip.cli`'s parser)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_verify(args: argparse.Namespace) -> int:
    from flip.audit.run_directory import MANIFEST, find_run_dirs
    from flip.audit.verify import verify
    from flip.console import console

    failed = 0
    for run_dir in find_run_dirs([Path(path) for path in args.paths], marker=MANIFEST):
        verdict = verify(run_dir)
        failed += not verdict.ok
        mark = "[green]PASS[/green]" if verdict.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {run_dir}  ({', '.join(verdict.checked)})", soft_wrap=True)
        for failure in verdict.failures:
            console.print(f"  [red]✗[/red] {failure}", soft_wrap=True, markup=True, highlight=False)
        if verdict.notes:
            console.print("  this machine differs from the one that ran it (a rerun here may not be bit-identical):")
            for note in verdict.notes[: args.notes]:
                console.print(f"    · {note}", soft_wrap=True, markup=False)
            if len(verdict.notes) > args.notes:
                console.print(f"    · … and {len(verdict.notes) - args.notes} more")
    return 1 if failed else 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from flip.audit.reproduce import reproduce
    from flip.console import console

    result = reproduce(Path(args.run_dir), Path(args.out) if args.out else None, allow_targets=args.allow_targets)
    for note in result.notes:
        console.print(f"note: {note}", soft_wrap=True, markup=False)
    if result.identical:
        console.print(f"[green]identical[/green]: {result.rounds_compared} global models (rounds 0…{result.rounds_compared - 1}) "
                      f"have the recorded sha256; rerun in {result.rerun}", soft_wrap=True)
        return 0
    console.print(f"[red]diverges at round {result.first_divergence}[/red]; rerun in {result.rerun}", soft_wrap=True)
    _print_differences(result.differences, "what differs between the run and its rerun")
    return 1


def cmd_diff(args: argparse.Namespace) -> int:
    from flip.audit.compare import diff_runs

    differences = diff_runs(Path(args.run_a), Path(args.run_b))
    _print_differences(differences, f"{args.run_a} (a) vs {args.run_b} (b)")
    return 0


def _print_differences(differences, title: str) -> None:
    """One line per difference, grouped by section: `  key: a → b`."""
    from flip.console import console

    if not differences:
        console.print("no differences in config, environment, data or metrics", soft_wrap=True)
        return
    console.print(title, soft_wrap=True, markup=False)
    section = None
    for difference in differences:
        if difference.section != section:
            section = difference.section
            console.print(f"[bold]{section}[/bold]")
        console.print(f"  {difference.key}: {_cell(difference.a)} → {_cell(difference.b)}", soft_wrap=True, markup=False, highlight=False)


def _cell(value) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return text if len(text) <= 80 else text[:77] + "…"


def add_audit_commands(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser("audit", help="verify, reproduce or compare run directories")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="AUDIT_COMMAND")
    verify = audit_commands.add_parser("verify", help="check a run (or every run of a sweep) against its manifest")
    verify.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run directories, sweep directories or folders holding them")
    verify.add_argument("--notes", type=int, default=10, metavar="N", help="environment differences to list (default: %(default)s)")
    verify.set_defaults(handler=cmd_verify)
    reproduce = audit_commands.add_parser("reproduce", help="rerun a run's recorded config and compare its models round by round")
    reproduce.add_argument("run_dir", metavar="RUN_DIR")
    reproduce.add_argument("--out", metavar="DIR", help="where the rerun goes (default: beside RUN_DIR)")
    reproduce.add_argument("--allow-targets", action="store_true", help="rerun a config whose allowed_targets add components (only for run directories you trust)")
    reproduce.set_defaults(handler=cmd_reproduce)
    diff = audit_commands.add_parser("diff", help="config, environment, data and metric differences between two runs")
    diff.add_argument("run_a", metavar="RUN_A")
    diff.add_argument("run_b", metavar="RUN_B")
    diff.set_defaults(handler=cmd_diff)
