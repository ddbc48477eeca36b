"""flip run in local mode vs a hand-written Lightning script: same model, data and epochs.

Both run as fresh processes (start-up included), alternating, several times; the ratio of the
median wall times is printed last as `local_overhead_ratio=<x>` (target <= 1.10).
Usage: python tests/benchmarks/local_overhead.py [REPEATS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flip.data.synthetic import ensure_synthetic_dicom

EPOCHS, IMAGE_SIZE, BATCH, SEED = 20, 64, 16, 42
PLAIN = Path(__file__).with_name("plain_lightning_local.py")


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "FLIP_CACHE_DIR": str(work / "cache")}
        site_dir = ensure_synthetic_dicom(work / "cache") / "site-1"
        flip_command = [
            sys.executable, "-m", "flip.cli", "run", "dicom_synthetic_local",
            f"trainer.max_epochs={EPOCHS}", "trainer.enable_progress_bar=false",
            f"data.image_size={IMAGE_SIZE}", f"data.batch_size={BATCH}", f"seed={SEED}",
        ]
        plain_command = [sys.executable, str(PLAIN), str(site_dir), str(EPOCHS), str(IMAGE_SIZE), str(BATCH), str(SEED)]
        timed(flip_command, work, env)  # warm the decoded-file and import caches for both sides
        flip_times, plain_times = [], []
        for _ in range(repeats):
            flip_times.append(timed(flip_command, work, env))
            plain_times.append(timed(plain_command, work, env))
            print(f"flip {flip_times[-1]:.2f}s  plain {plain_times[-1]:.2f}s", flush=True)
    flip_median, plain_median = statistics.median(flip_times), statistics.median(plain_times)
    print(f"flip_local_s={flip_median:.2f}")
    print(f"plain_lightning_s={plain_median:.2f}")
    print(f"local_overhead_ratio={flip_median / plain_median:.3f}")


if __name__ == "__main__":
    main()
