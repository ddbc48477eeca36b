"""What SecAgg+ costs: `flip run` with privacy=secagg vs privacy=none, FedAvg, 4 sites x 3 rounds.

Same recipe, data, seed and Ray resources (1 CPU per site, 2 in all) on both sides; only the
privacy option differs. Both run as fresh processes, alternating, after one untimed warm-up of
each. Each run's metrics.csv holds every round's wall time (train, SecAgg+'s four exchanges,
aggregation, evaluation); the medians of those are compared, and so are the whole runs' wall
times (start-up included). Prints both, the round ratio last as `secagg_time_ratio=<secagg/none>`.
Usage: python tests/benchmarks/secagg_cost.py [REPEATS]
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from side_by_side import alternate

SITES, ROUNDS, SEED = 4, 3, 42
FLIP_ARGS = [
    "dicom_synthetic_fedavg", f"federation.num_sites={SITES}", f"federation.num_rounds={ROUNDS}",
    "trainer=debug", "federation.server_eval_site=null", "federation.cpus_per_site=1",
    "federation.total_cpus=2", f"data.synthetic.num_sites={SITES}", "data.synthetic.images_per_site=80",
    "data.synthetic.image_size=32", "data.image_size=32", "data.batch_size=8", f"seed={SEED}",
]


def shown(flip: list[str], args: list[str], cwd: Path, env: dict[str, str]):
    done = subprocess.run([*flip, "show", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"flip show failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return OmegaConf.create(done.stdout)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "FLIP_CACHE_DIR": str(work / "cache")}
        flip = [sys.executable, "-m", "flip.cli"]
        secure, plain = [*FLIP_ARGS, "privacy=secagg"], [*FLIP_ARGS, "privacy=none"]
        cfg = shown(flip, secure, work, env)
        assert cfg.federation.mode == "simulation" and cfg.strategy._target_.endswith(".FedAvg"), cfg
        assert cfg.privacy.secagg is not None and shown(flip, plain, work, env).privacy.get("secagg") is None
        (secure_dir := work / "secagg").mkdir()
        (plain_dir := work / "none").mkdir()
        secure_median, plain_median = alternate(
            ([*flip, "run", *secure], env), ([*flip, "run", *plain], env), work, repeats, cwds=(secure_dir, plain_dir)
        )
        secure_round, plain_round = median_round_time(secure_dir), median_round_time(plain_dir)
    print("(in the lines above, 'flip' is privacy=secagg and 'plain' is privacy=none)")
    print(f"run_secagg_s={secure_median:.2f}")
    print(f"run_none_s={plain_median:.2f}")
    print(f"run_time_ratio={secure_median / plain_median:.3f}")
    print(f"round_secagg_s={secure_round:.3f}")
    print(f"round_none_s={plain_round:.3f}")
    print(f"secagg_time_ratio={secure_round / plain_round:.3f}")


def median_round_time(runs: Path) -> float:
    """Median wall time of a round over every run under `runs` (warm-up included: rounds are alike)."""
    times = [
        float(row["value"])
        for metrics in runs.rglob("metrics.csv")
        for row in csv.DictReader(metrics.open())
        if row["split"] == "time" and row["metric"] == "round_s"
    ]
    if not times:
        sys.exit(f"no round times under {runs}")
    return statistics.median(times)


if __name__ == "__main__":
    main()
