"""Terminal output with rich: summaries, recipe lists, error lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    table = Table(title=f"{summary['recipe']} · {summary['mode']} · {summary['rounds']} round(s)")
    table.add_column("metric")
    table.add_column("final", justify="right")
    table.add_column(f"best (round {summary['best_metrics'].get('round', '?')})", justify="right")
    best = summary["best_metrics"]
    for key, value in summary["metrics"].items():
        best_value = best.get(key)
        table.add_row(key, f"{value:.4f}", "" if best_value is None else f"{best_value:.4f}")
    console.print(table)
    console.print(f"model sha256 {summary['model_sha256'][:16]}…  run directory [bold]{run_dir}[/bold]")


def print_problems(message: str) -> None:
    """Errors go to stderr unwrapped, so every problem stays on one line for grep and tests."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


def print_inventory(sites: list) -> None:
    """One table of counts per site, then every skipped item with its reason."""
    table = Table(title="data as flip sees it")
    for column in ("site", "found", "usable", "unlabelled", "skipped", "labels"):
        table.add_column(column, justify="left" if column in ("site", "labels") else "right")
    for site in sites:
        labels = ", ".join(f"{label}: {count}" for label, count in site.labels.items())
        table.add_row(site.site, str(site.found), str(site.usable), str(site.unlabelled), str(len(site.skipped)), labels)
    console.print(table)
    for site in sites:
        for name, counts in site.counts.items():
            console.print(f"{site.site} {name}: " + ", ".join(f"{key} {value}" for key, value in counts.items()))
        for item in site.skipped:
            console.print(f"{site.site} skipped {item['path']}: {item['reason']}", markup=False, highlight=False)
