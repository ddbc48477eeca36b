"""Timing two commands side by side in one benchmark run: fresh processes, alternating, medians."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

Side = tuple[list[str], dict[str, str]]  # command, environment


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall time of one command, start-up included; a failure stops the benchmark with its output."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def alternate(
    flip: Side, plain: Side, cwd: Path, repeats: int, cwds: tuple[Path, Path] | None = None
) -> tuple[float, float]:
    """One warm-up of each (file and import caches), then `repeats` alternating pairs: the medians.

    `cwds` runs each side in its own folder (e.g. to read each side's run directories after).
    """
    (flip_command, flip_env), (plain_command, plain_env) = flip, plain
    flip_cwd, plain_cwd = cwds or (cwd, cwd)
    timed(flip_command, flip_cwd, flip_env)
    timed(plain_command, plain_cwd, plain_env)
    flip_times, plain_times = [], []
    for _ in range(repeats):
        flip_times.append(timed(flip_command, flip_cwd, flip_env))
        plain_times.append(timed(plain_command, plain_cwd, plain_env))
        print(f"flip {flip_times[-1]:.2f}s  plain {plain_times[-1]:.2f}s", flush=True)
    return statistics.median(flip_times), statistics.median(plain_times)
