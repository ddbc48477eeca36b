"""Terminal output with rich: summaries, recipe lists, error lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    unit = "epoch" if summary["mode"] in ("local", "pooled") else "round"
    evaluated = summary.get("job") == "evaluate"
    done = "evaluation only" if evaluated else f"{summary['rounds']} {unit}(s)"
    table = Table(title=f"{summary['recipe']} · {summary['mode']} · {done}")
    table.add_column("metric")
    table.add_column("value" if evaluated else "final", justify="right")
    if not evaluated:
        table.add_column(f"best ({unit} {summary['best_metrics'].get('round', '?')})", justify="right")
    best = summary["best_metrics"]
    for key, value in summary["metrics"].items():
        best_value = best.get(key)
        table.add_row(key, f"{value:.4f}", *([] if evaluated else ["" if best_value is None else f"{best_value:.4f}"]))
    console.print(table)
    if summary.get("evaluated"):
        console.print(f"evaluated {summary['evaluated']['checkpoint']}")
    if cross_site := summary.get("cross_site"):
        console.print(
            f"cross-site {cross_site['metric']}: global model {_shown(cross_site['global_mean_over_sites'])} over the sites, "
            f"site models {_shown(cross_site['site_models_mean_on_own_site'])} at home and "
            f"{_shown(cross_site['site_models_mean_on_other_sites'])} elsewhere (cross_site.csv)"
        )
    privacy = summary.get("privacy") or {}
    if privacy.get("mechanism", "none") != "none" or privacy.get("secure_aggregation"):
        console.print(f"privacy {privacy_line(privacy)}")
    if summary.get("stop_reason"):
        console.print(f"[yellow]stopped early:[/yellow] {summary['stop_reason']}")
    console.print(f"model sha256 {summary['model_sha256'][:16]}…  run directory [bold]{run_dir}[/bold]")


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def privacy_line(privacy: dict[str, Any]) -> str:
    """e.g. `dp_client_fixed + SecAgg+ · epsilon 3.2 at delta 1e-05, one site replaced`, or why there is no epsilon."""
    parts = [privacy.get("mechanism", "none")] + (["SecAgg+"] if privacy.get("secure_aggregation") else [])
    name = " + ".join(p for p in parts if p != "none") or "none"
    if not privacy.get("is_dp"):
        return f"{name} · not differential privacy (no epsilon)"
    if privacy.get("epsilon") is None:
        return f"{name} · no epsilon spent"
    line = f"{name} · epsilon {privacy['epsilon']:.3g} at delta {privacy['delta']:.3g}"
    relation = {"replace_one": "replaced", "add_remove": "added or removed"}.get(privacy.get("neighbours"))
    return f"{line}, one {privacy.get('unit')} {relation}" if relation else line


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
