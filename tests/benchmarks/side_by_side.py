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
    medians = alternate_sides({"flip": flip, "plain": plain}, cwd, repeats, dict(zip(("flip", "plain"), cwds or (cwd, cwd))))
    return medians["flip"], medians["plain"]


def alternate_sides(sides: dict[str, Side], cwd: Path, repeats: int, cwds: dict[str, Path] | None = None) -> dict[str, float]:
    """As `alternate`, for any number of named sides, run in turn: the median of each."""
    cwds = cwds or {}
    for name, (command, env) in sides.items():
        timed(command, cwds.get(name, cwd), env)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, (command, env) in sides.items():
            times[name].append(timed(command, cwds.get(name, cwd), env))
        print("  ".join(f"{name} {values[-1]:.2f}s" for name, values in times.items()), flush=True)
    return {name: statistics.median(values) for name, values in times.items()}
