"""`flip report`: compare finished runs as a CSV, a Markdown table and a plot of the global metric."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from rich.console import Console
from rich.table import Table
from rich.text import Text

from flip.audit.run_directory import METRICS, find_run_dirs, read_metric_rows, read_overrides, read_summary
from flip.console import console as default_console
from flip.plots import global_of, series_by_site
from flip.errors import FlipError

RUN_COLUMNS = ("status", "mode", "rounds", "wall_time_s")
# Shown when any run used a privacy mechanism: which one, and the epsilon it spent (if DP).
PRIVACY_COLUMNS = ("privacy", "epsilon")
# What the table leads with for each run, after its name and the overrides that differ: the
# monitored metric (its final value, its best and the round of the best), then cost.
HEADLINE_COLUMNS = ("status", "monitor", "final", "best", "best_round", "wall_time_s")


@dataclass
class Report:
    """The compared runs (one dict per run, keyed by column) and the files written."""

    runs: list[dict[str, Any]]
    columns: list[str]  # every column: report.csv
    headline: list[str]  # what differs and the monitored metric: report.md and the terminal
    csv_path: Path
    md_path: Path
    png_path: Path


@dataclass
class _Run:
    """What the report reads from one run directory."""

    path: Path
    summary: dict[str, Any]
    overrides: dict[str, str]


def build_report(paths: list[Path], out_dir: Path | None = None) -> Report:
    """Find every run under `paths` and write report.csv, report.md and report.png into `out_dir`."""
    paths = [Path(path) for path in paths]
    out_dir = Path(out_dir) if out_dir is not None else _default_out_dir(paths)
    runs = load_runs(paths)
    varying = differing_keys([run.overrides for run in runs])
    columns = _columns(runs, varying)
    rows = [_row(run, varying, out_dir) for run in runs]
    out_dir.mkdir(parents=True, exist_ok=True)
    privacy = [column for column in PRIVACY_COLUMNS if column in columns]
    headline = ["run", *varying, *HEADLINE_COLUMNS, *privacy]
    report = Report(rows, [*columns, *(c for c in HEADLINE_COLUMNS if c not in columns)], headline,
                    out_dir / "report.csv", out_dir / "report.md", out_dir / "report.png")
    _write_csv(report)
    _write_markdown(report)
    monitor_figure(runs, varying).savefig(report.png_path, dpi=100)
    return report


def load_runs(paths: list[Path]) -> list[_Run]:
    """Every run directory with a summary at or below `paths`, read."""
    return [_load_run(run_dir) for run_dir in find_run_dirs(paths)]


def _default_out_dir(paths: list[Path]) -> Path:
    return paths[0] if len(paths) == 1 else Path.cwd()


def _load_run(run_dir: Path) -> _Run:
    return _Run(run_dir, read_summary(run_dir), dict(_split_override(item) for item in read_overrides(run_dir)))


def _split_override(item: str) -> tuple[str, str]:
    key, _, value = item.partition("=")
    return key.lstrip("+~"), value


def differing_keys(overrides: list[dict[str, str]]) -> list[str]:
    """Override keys whose value is not the same in every run (absent counts as a value)."""
    keys = list(dict.fromkeys(key for run in overrides for key in run))
    return [key for key in keys if len({run.get(key) for run in overrides}) > 1]


def _private(summary: dict[str, Any]) -> bool:
    privacy = summary.get("privacy") or {}
    return privacy.get("mechanism", "none") != "none" or bool(privacy.get("secure_aggregation"))


def _columns(runs: list[_Run], varying: list[str]) -> list[str]:
    finals = sorted({key for run in runs for key in run.summary.get("metrics") or {}})
    bests = sorted({key for run in runs for key in run.summary.get("best_metrics") or {}})
    privacy = PRIVACY_COLUMNS if any(_private(run.summary) for run in runs) else ()
    return [
        "run",
        *varying,
        *RUN_COLUMNS,
        *privacy,
        *(f"final:{key}" for key in finals),
        *(f"best:{key}" for key in bests),
        "model_sha256",
    ]


def _row(run: _Run, varying: list[str], out_dir: Path) -> dict[str, Any]:
    summary = run.summary
    row: dict[str, Any] = {"run": _relative(run.path, out_dir)}
    row.update({key: run.overrides.get(key, "") for key in varying})
    row.update({key: summary.get(key) for key in RUN_COLUMNS})
    privacy = summary.get("privacy") or {}
    mechanism = privacy.get("mechanism", "none")
    row["privacy"] = mechanism + (" + SecAgg+" if privacy.get("secure_aggregation") else "")
    if privacy.get("neighbours"):  # what the epsilon protects: one site (or sample) replaced, or added or removed
        row["privacy"] += f" ({privacy['neighbours']})"
    row["epsilon"] = privacy.get("epsilon")
    row.update({f"final:{key}": value for key, value in (summary.get("metrics") or {}).items()})
    row.update({f"best:{key}": value for key, value in (summary.get("best_metrics") or {}).items()})
    row["model_sha256"] = (summary.get("model_sha256") or "")[:12]
    monitor = summary.get("monitor")
    best = summary.get("best_metrics") or {}
    row.update(monitor=monitor, final=(summary.get("metrics") or {}).get(monitor), best=best.get(monitor), best_round=best.get("round"))
    return row


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base.resolve()))
    except ValueError:
        return str(path)


def format_cell(value: Any) -> str:
    """Floats to 4 decimals, missing values empty, everything else as text."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _write_csv(report: Report) -> None:
    with report.csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=report.columns, restval="", extrasaction="ignore")
        writer.writeheader()
        for row in report.runs:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})


def _write_markdown(report: Report) -> None:
    lines = [
        "# flip report",
        "",
        f"{len(report.runs)} run(s); every metric, final and best, is in {report.csv_path.name}.",
        "",
        _markdown_line(report.headline),
        _markdown_line(["---"] * len(report.headline)),
        *(_markdown_line([format_cell(row.get(column)) for column in report.headline]) for row in report.runs),
    ]
    report.md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _markdown_line(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def global_series(run_dir: Path, monitor: str) -> dict[int, float]:
    """{round: value} of `monitor` (`split/metric`): federated rows, else server rows, else the site mean."""
    split, _, metric = monitor.partition("/")
    try:
        rows = [(int(r["round"]), r["site"], r["split"], r["metric"], float(r["value"])) for r in read_metric_rows(run_dir)]
    except (TypeError, ValueError) as error:
        raise FlipError(f"cannot read metrics {run_dir / METRICS}: {error}") from error
    return global_of(series_by_site(rows, split, metric))


def _run_label(run: _Run, varying: list[str]) -> str:
    if not varying:
        return run.path.name
    return ", ".join(f"{key}={run.overrides.get(key, '')}" for key in varying)


def monitor_figure(runs: list[_Run], varying: list[str]) -> Figure:
    """The monitored metric per round, one line per run; a bar per run when no run has more than
    one round (a line of one point says nothing)."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    monitors = sorted({run.summary["monitor"] for run in runs if run.summary.get("monitor")})
    series = {id(run): _plot_series(run) for run in runs}
    metric = ", ".join(monitor.partition("/")[2] or monitor for monitor in monitors)
    if max((len(points) for points in series.values()), default=0) <= 1:
        labelled = [(_run_label(run, varying), next(iter(series[id(run)].values()))) for run in runs if series[id(run)]]
        bars = axes.bar([label for label, _ in labelled], [value for _, value in labelled])
        axes.bar_label(bars, fmt="%.4f", fontsize="small")
        axes.tick_params(axis="x", labelrotation=20 if len(labelled) > 3 else 0, labelsize="small")
        axes.set_ylabel(metric)
        axes.set_title(f"global {', '.join(monitors)} (one round)" if monitors else "no monitored metric")
    else:
        rounds_seen: set[int] = set()
        for run in runs:
            points = series[id(run)]
            if points:
                rounds = sorted(points)
                rounds_seen |= set(rounds)
                axes.plot(rounds, [points[r] for r in rounds], marker="o", label=_run_label(run, varying))
        axes.set_xlabel("round")
        if len(rounds_seen) <= 20:
            axes.set_xticks(sorted(rounds_seen))
        else:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(metric)
        axes.set_title(f"global {', '.join(monitors)} per round" if monitors else "no monitored metric")
        if axes.lines:
            axes.legend(fontsize="small")
    return figure


def _plot_series(run: _Run) -> dict[int, float]:
    monitor = run.summary.get("monitor")
    if not monitor or not (run.path / METRICS).is_file():
        return {}
    return global_series(run.path, monitor)


def print_report(report: Report, console: Console | None = None) -> None:
    """The report table in the terminal, followed by where its files are."""
    console = console or default_console
    table = Table(title=f"flip report · {len(report.runs)} run(s)")
    for column in report.headline:
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in report.runs:
        table.add_row(*(Text(format_cell(row.get(column))) for column in report.headline))
    console.print(table)
    console.print(f"wrote {report.csv_path}, {report.md_path}, {report.png_path}", markup=False)
