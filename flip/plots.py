"""Plots of one run's metrics per round: what every run directory holds under `plots/`.

A run's global value of a metric is the federated aggregate where there is one, else the
server's own evaluation, else the mean over sites; each site's own values are thin lines.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# Site names whose rows already hold the global value, most preferred first.
FEDERATED, SERVER = "federated", "server"
GLOBAL_SITES = (FEDERATED, SERVER)
PLOTS = "plots"
Row = tuple[int, str, str, str, float]


def series_by_site(rows: Iterable[Row], split: str, metric: str) -> dict[str, dict[int, float]]:
    """{site: {round: value}} of one split/metric."""
    by_site: dict[str, dict[int, float]] = defaultdict(dict)
    for round_, site, row_split, row_metric, value in rows:
        if row_split == split and row_metric == metric:
            by_site[site][int(round_)] = float(value)
    return dict(by_site)


def global_of(by_site: dict[str, dict[int, float]]) -> dict[int, float]:
    """The global series: federated rows, else server rows, else the mean over sites per round."""
    for site in GLOBAL_SITES:
        if site in by_site:
            return by_site[site]
    per_round: dict[int, list[float]] = defaultdict(list)
    for series in by_site.values():
        for round_, value in series.items():
            per_round[round_].append(value)
    return {round_: sum(values) / len(values) for round_, values in sorted(per_round.items())}


def _round_axis(axes: Axes, rounds: set[int]) -> None:
    axes.set_xlabel("round")
    if 0 < len(rounds) <= 20:
        axes.set_xticks(sorted(rounds))
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _draw(axes: Axes, by_site: dict[str, dict[int, float]], label: str) -> set[int]:
    """The global line, thick, and each site's own as a thin line; the rounds drawn."""
    rounds: set[int] = set()
    for site, series in sorted(by_site.items()):
        if site not in GLOBAL_SITES and series:
            points = sorted(series)
            axes.plot(points, [series[r] for r in points], linewidth=0.8, alpha=0.6, label=f"{label} · {site}")
            rounds |= set(points)
    if FEDERATED in by_site and SERVER in by_site:  # the server's own evaluation, on its external site
        points = sorted(by_site[SERVER])
        axes.plot(points, [by_site[SERVER][r] for r in points], linestyle="--", marker="s", label=f"{label} · server")
    overall = global_of(by_site)
    if overall and (len(by_site) > 1 or any(site in by_site for site in GLOBAL_SITES)):  # one site: its line is it
        points = sorted(overall)
        axes.plot(points, [overall[r] for r in points], linewidth=2.4, marker="o", label=f"{label} · global")
        rounds |= set(points)
    return rounds


def _figure(title: str) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title)
    return figure, axes


def run_plots(rows: list[Row], monitor: str) -> dict[str, Figure]:
    """The figures of one run by file name: the monitored metric, the losses, and the privacy
    spent when the run accounted any."""
    figures: dict[str, Figure] = {}
    split, _, metric = monitor.partition("/")
    figure, axes = _figure(f"{monitor} per round")
    rounds = _draw(axes, series_by_site(rows, split, metric), monitor)
    _finish(axes, rounds, monitor)
    figures["monitor.png"] = figure

    figure, axes = _figure("loss per round")
    rounds = set()
    for loss_split in ("train", "val"):
        rounds |= _draw(axes, series_by_site(rows, loss_split, "loss"), f"{loss_split}/loss")
    _finish(axes, rounds, "loss")
    figures["loss.png"] = figure

    epsilon = series_by_site(rows, "privacy", "epsilon")
    if epsilon:
        figure, axes = _figure("privacy spent (epsilon) per round")
        _finish(axes, _draw(axes, epsilon, "epsilon"), "epsilon")
        figures["privacy.png"] = figure
    return figures


def _finish(axes: Axes, rounds: set[int], ylabel: str) -> None:
    _round_axis(axes, rounds)
    axes.set_ylabel(ylabel)
    if axes.lines:
        axes.legend(fontsize="x-small")


def png_bytes(figure: Figure) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def roc_figure(positives: list[int], negatives: list[int], title: str) -> Figure:
    """The ROC curve from score counts per bin, with its AUROC."""
    from flip.pooled_metrics import auroc, roc_curve

    fpr, tpr = roc_curve(positives, negatives)
    figure, axes = _figure(title)
    area = auroc(positives, negatives)
    axes.plot(fpr, tpr, linewidth=2, label=f"AUROC {area:.4f}" if area is not None else "one class only")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_aspect("equal")
    axes.legend(loc="lower right", fontsize="small")
    return figure


def calibration_figure(positives: list[int], negatives: list[int], title: str) -> Figure:
    """Observed positive fraction against mean predicted probability, from score counts per bin."""
    from flip.pooled_metrics import calibration_curve

    predicted, observed, items = calibration_curve(positives, negatives)
    figure, axes = _figure(title)
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    axes.plot(predicted, observed, marker="o", linewidth=2, label=f"{int(items.sum())} items")
    axes.set_xlabel("mean predicted probability")
    axes.set_ylabel("observed positive fraction")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_aspect("equal")
    axes.legend(loc="upper left", fontsize="small")
    return figure


def cross_site_figure(table: dict[str, dict[str, float]], metric: str) -> Figure:
    """A heat map of `metric` for each model (rows) at each site (columns), values written in."""
    models = list(table)
    sites = sorted({site for by_site in table.values() for site in by_site})
    values = [[table[model].get(site, float("nan")) for site in sites] for model in models]
    figure = Figure(figsize=(1.6 + 1.3 * len(sites), 1.2 + 0.6 * len(models)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=axes, label=metric)
    axes.set_xticks(range(len(sites)), sites, rotation=30, ha="right")
    axes.set_yticks(range(len(models)), [f"{model} model" for model in models])
    axes.set_xlabel("evaluated at")
    axes.set_title(f"cross-site evaluation: {metric}")
    low, high = image.get_clim()
    for row, model_values in enumerate(values):
        for column, value in enumerate(model_values):
            if value == value:  # not NaN
                dark = high > low and (value - low) / (high - low) < 0.6
                axes.text(column, row, f"{value:.3f}", ha="center", va="center", color="white" if dark else "black", fontsize="small")
    return figure


def plot_files(rows: list[Row], monitor: str, test_counts: tuple[list[int], list[int]] | None = None) -> dict[str, bytes]:
    """`plots/<name>.png` -> PNG bytes, for the run directory's writer; with the final model's
    test score counts (pooled over sites), its ROC and calibration curves too."""
    figures = run_plots(rows, monitor)
    if test_counts is not None:
        figures["roc.png"] = roc_figure(*test_counts, "ROC of the final model on the test split(s)")
        figures["calibration.png"] = calibration_figure(*test_counts, "calibration of the final model on the test split(s)")
    return {f"{PLOTS}/{name}": png_bytes(figure) for name, figure in figures.items()}

