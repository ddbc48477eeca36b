"""`flip report` over a real sweep, and over run directories laid out as runs and sweeps write them
(to set each value the table and plot must show)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import matplotlib.image
import pytest
from rich.console import Console

from flip.errors import FlipError
from flip.plots import run_plots
from flip.report import build_report, global_series, load_runs, monitor_figure, print_report

ROUNDS = 3
SITES = ("site-0", "site-1")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SWEEP = [("fedavg", 1), ("fedavg", 2), ("fedprox", 1), ("fedprox", 2)]


def auroc(strategy: str, seed: int, round_: int) -> float:
    """A made-up federated val/auroc that differs per run and peaks at round 2."""
    return 0.7 + 0.1 * min(round_, 2) + (0.02 if strategy == "fedprox" else 0.0) + 0.001 * seed


def write_metrics(run_dir: Path, strategy: str, seed: int) -> None:
    rows = []
    for round_ in range(1, ROUNDS + 1):
        value = auroc(strategy, seed, round_)
        for offset, site in zip((-0.05, 0.05), SITES):
            rows.append((round_, site, "val", "auroc", value + offset))
            rows.append((round_, site, "train", "loss", 1.0 / round_))
        rows.append((round_, "federated", "val", "auroc", value))
        rows.append((round_, "federated", "val", "accuracy", value - 0.1))
    write_csv(run_dir / "metrics.csv", rows)


def write_csv(path: Path, rows: list[tuple]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("round", "site", "split", "metric", "value"))
        writer.writerows(rows)


def write_summary(run_dir: Path, strategy: str, seed: int, status: str = "completed") -> None:
    final, best = auroc(strategy, seed, ROUNDS), auroc(strategy, seed, 2) + 0.01
    summary = {
        "mode": "simulation",
        "recipe": "dicom_synthetic_fedavg",
        "status": status,
        "config_sha256": "ab" * 32,
        "model_sha256": f"{seed}{strategy}".ljust(64, "0"),
        "seed": seed,
        "rounds": ROUNDS,
        "monitor": "val/auroc",
        "metrics": {"val/auroc": final, "val/accuracy": final - 0.1, "test/auroc": final - 0.01},
        "best_metrics": {"round": 2, "val/auroc": best, "test/auroc": best - 0.01},
        "sites": [{"site": site} for site in SITES],
        "wall_time_s": 12.3,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


def write_run(run_dir: Path, strategy: str, seed: int) -> Path:
    (run_dir / ".hydra").mkdir(parents=True)
    overrides = [f"strategy={strategy}", f"seed={seed}", "trainer=debug", "+data.cache=true"]
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    write_metrics(run_dir, strategy, seed)
    write_summary(run_dir, strategy, seed)
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A 2x2 Hydra sweep: strategy {fedavg, fedprox} x seed {1, 2}."""
    root = tmp_path / "runs" / "2026-11-28" / "11-20-00_recipe_sweep"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for job, (strategy, seed) in enumerate(SWEEP):
        write_run(root / f"{job}_seed={seed},strategy={strategy}", strategy, seed)
    return root


def read_report_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_csv_has_one_row_per_run_and_only_differing_overrides(sweep: Path) -> None:
    report = build_report([sweep])
    rows = read_report_csv(sweep / "report.csv")
    assert report.csv_path == sweep / "report.csv"
    assert len(rows) == len(report.runs) == 4
    assert list(rows[0]) == report.columns
    assert report.columns[:7] == ["run", "strategy", "seed", "status", "mode", "rounds", "wall_time_s"]
    assert "trainer" not in report.columns and "data.cache" not in report.columns
    assert [(row["strategy"], int(row["seed"])) for row in rows] == SWEEP
    assert rows[0]["run"] == "0_seed=1,strategy=fedavg"


def test_csv_holds_final_and_best_metrics(sweep: Path) -> None:
    build_report([sweep])
    rows = read_report_csv(sweep / "report.csv")
    assert [c for c in rows[0] if c.startswith(("final:", "best:"))] == [
        "final:test/auroc", "final:val/accuracy", "final:val/auroc",
        "best:round", "best:test/auroc", "best:val/auroc",
    ]
    for row, (strategy, seed) in zip(rows, SWEEP):
        assert float(row["final:val/auroc"]) == pytest.approx(auroc(strategy, seed, ROUNDS))
        assert float(row["best:val/auroc"]) == pytest.approx(auroc(strategy, seed, 2) + 0.01)
        assert row["best:round"] == "2"
        assert (row["status"], row["mode"], row["rounds"]) == ("completed", "simulation", "3")
        assert row["model_sha256"] == f"{seed}{strategy}".ljust(12, "0")


def test_markdown_leads_with_what_differs_and_the_monitored_metric(sweep: Path) -> None:
    report = build_report([sweep])
    text = report.md_path.read_text(encoding="utf-8")
    assert text.startswith("# flip report")
    assert "4 run(s); every metric, final and best, is in report.csv." in text
    header = "| run | strategy | seed | status | monitor | final | best | best_round | wall_time_s |"
    assert header in text
    final, best = auroc("fedprox", 2, 3), auroc("fedprox", 2, 2) + 0.01
    assert f"| 3_seed=2,strategy=fedprox | fedprox | 2 | completed | val/auroc | {final:.4f} | {best:.4f} | 2 | 12.3000 |" in text
    assert "val/accuracy" not in text and "model_sha256" not in text  # those stay in the CSV
    assert {"final:val/accuracy", "model_sha256", "final", "best_round"} <= set(read_report_csv(sweep / "report.csv")[0])


def test_runs_of_several_rounds_plot_lines_on_whole_rounds(sweep: Path) -> None:
    axes = monitor_figure(load_runs([sweep]), ["strategy", "seed"]).axes[0]
    assert len(axes.lines) == 4 and not axes.patches
    assert list(axes.get_xticks()) == [1, 2, 3]


def test_single_round_runs_are_a_bar_chart(sweep: Path) -> None:
    for run_dir in sweep.iterdir():
        if run_dir.is_dir():
            write_csv(run_dir / "metrics.csv", [(1, "federated", "val", "auroc", auroc("fedavg", 1, 1))])
    axes = monitor_figure(load_runs([sweep]), ["strategy", "seed"]).axes[0]
    assert len(axes.patches) == 4 and not axes.lines
    assert [tick.get_text() for tick in axes.get_xticklabels()][0] == "strategy=fedavg, seed=1"


def test_plot_is_a_readable_png(sweep: Path) -> None:
    report = build_report([sweep])
    assert report.png_path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(report.png_path)
    assert image.shape[0] > 0 and image.shape[1] > 0


@pytest.mark.slow
def test_a_real_sweep_is_one_row_per_job_with_its_metrics(local_sweep, tmp_path):
    report = build_report([local_sweep], out_dir=tmp_path / "report")
    assert [row["seed"] for row in report.runs] == ["0", "1"]
    summaries = [json.loads(path.read_text()) for path in sorted(local_sweep.glob("*/summary.json"))]
    monitor = summaries[0]["monitor"]
    for row, summary in zip(report.runs, summaries, strict=True):
        assert row["status"] == "completed" and row["rounds"] == 1
        assert row[f"final:{monitor}"] == summary["metrics"][monitor]
        assert row["model_sha256"] == summary["model_sha256"][:12]
    image = matplotlib.image.imread(report.png_path)
    assert report.png_path.read_bytes()[:8] == PNG_MAGIC and image.shape[0] > 0


def test_run_plots_draw_the_global_line_and_each_site(tmp_path: Path) -> None:
    rows = [(r, site, "val", "auroc", 0.5 + 0.1 * r + offset) for r in (1, 2, 3) for site, offset in (("a", 0.0), ("b", 0.02))]
    rows += [(r, "federated", "val", "auroc", 0.51 + 0.1 * r) for r in (1, 2, 3)]
    rows += [(r, "server", "val", "auroc", 0.45 + 0.1 * r) for r in (1, 2, 3)]
    figures = run_plots(rows, "val/auroc")
    assert set(figures) == {"monitor.png", "loss.png"}
    axes = figures["monitor.png"].axes[0]
    labels = [line.get_label() for line in axes.lines]
    assert labels == ["val/auroc · a", "val/auroc · b", "val/auroc · server", "val/auroc · global"]
    assert list(axes.lines[-1].get_ydata()) == pytest.approx([0.61, 0.71, 0.81]) and list(axes.get_xticks()) == [1, 2, 3]
    with_privacy = run_plots([*rows, (1, "federated", "privacy", "epsilon", 1.5)], "val/auroc")
    assert "privacy.png" in with_privacy


def test_global_series_prefers_federated_then_server_then_site_mean(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    run = tmp_path
    site_rows = [(1, "a", "val", "auroc", 0.6), (1, "b", "val", "auroc", 0.8), (2, "a", "val", "auroc", 0.9)]
    write_csv(path, site_rows)
    assert global_series(run, "val/auroc") == pytest.approx({1: 0.7, 2: 0.9})
    write_csv(path, [*site_rows, (1, "server", "val", "auroc", 0.5)])
    assert global_series(run, "val/auroc") == {1: 0.5}
    write_csv(path, [*site_rows, (1, "server", "val", "auroc", 0.5), (1, "federated", "val", "auroc", 0.4)])
    assert global_series(run, "val/auroc") == {1: 0.4}


def test_several_paths_write_into_the_current_directory(sweep: Path, tmp_path: Path, monkeypatch) -> None:
    extra = write_run(tmp_path / "single", "scaffold", 3)
    (extra / "metrics.csv").unlink()
    write_summary(extra, "scaffold", 3, status="failed")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    report = build_report([sweep, extra])
    assert report.csv_path == Path.cwd() / "report.csv" and report.png_path.is_file()
    assert [row["strategy"] for row in report.runs] == ["fedavg", "fedavg", "fedprox", "fedprox", "scaffold"]
    assert report.runs[-1]["status"] == "failed"
    assert report.runs[-1]["run"] == str(extra.resolve())


def test_single_run_directory_is_a_report_of_one(sweep: Path, tmp_path: Path) -> None:
    run_dir = sweep / "2_seed=1,strategy=fedprox"
    report = build_report([run_dir], out_dir=tmp_path / "single-report")
    assert len(report.runs) == 1
    assert report.columns[1] == "status"
    assert report.md_path.is_file() and report.png_path.read_bytes()[:8] == PNG_MAGIC


def test_print_report_shows_every_run(sweep: Path) -> None:
    console = Console(file=io.StringIO(), width=300)
    print_report(build_report([sweep]), console=console)
    text = console.file.getvalue()
    assert text.count("│ completed │") == 4 and "report.png" in text
    assert all(f"{job}_seed={seed},strategy={strategy}" in text for job, (strategy, seed) in enumerate(SWEEP))


def test_folder_without_runs_is_named_in_the_error(tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    with pytest.raises(FlipError, match="nothing-here"):
        build_report([empty])


def test_unreadable_summary_is_named_in_the_error(sweep: Path) -> None:
    broken = sweep / "1_seed=2,strategy=fedavg" / "summary.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(FlipError, match=r"1_seed=2,strategy=fedavg.summary\.json"):
        build_report([sweep])


def test_private_runs_show_their_mechanism_and_epsilon(sweep: Path) -> None:
    private = sweep / "0_seed=1,strategy=fedavg" / "summary.json"
    summary = json.loads(private.read_text())
    summary["privacy"] = {
        "mechanism": "dp_client_fixed", "secure_aggregation": True, "is_dp": True, "epsilon": 3.25, "delta": 1e-5,
        "neighbours": "replace_one",
    }
    private.write_text(json.dumps(summary))
    report = build_report([sweep])
    assert report.columns[7:9] == ["privacy", "epsilon"]
    rows = read_report_csv(sweep / "report.csv")
    assert (rows[0]["privacy"], rows[0]["epsilon"]) == ("dp_client_fixed + SecAgg+ (replace_one)", "3.25")
    assert (rows[1]["privacy"], rows[1]["epsilon"]) == ("none", "")


def test_reports_without_private_runs_have_no_privacy_columns(sweep: Path) -> None:
    assert "epsilon" not in build_report([sweep]).columns
