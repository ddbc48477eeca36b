"""flip run in simulation mode vs hand-written Flower apps (plain_flower_app.py): FedAvg, 4 sites x 3 rounds.

Same model (flip's small CNN), same synthetic DICOM data (site-1..site-4), one local epoch per
round at the same batch size and learning rate, every site evaluating the global model on its val
and test split each round, and the same Ray resources (1 CPU per client, 2 in all). The batch size,
image size and learning rate the plain apps get are read from `flip show` of the flip command, so
every side stays matched. Two hand-written apps: one whose sites train with Lightning, as flip's
do (its figure is flip's own overhead: config validation, Hydra, the site handshake, run
directory, checkpoints, metrics), and one with a bare torch loop (which also counts the cost of
loading Lightning and torchmetrics, about 2 s a process here). All run as fresh processes
(start-up included), in turn, after one untimed warm-up of each. Prints the medians,
`fl_overhead_vs_torch_ratio=<flip/bare torch app>` and last
`fl_overhead_ratio=<flip/Lightning app>` (target <= 1.10).
Usage: python tests/benchmarks/fl_overhead.py [REPEATS]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from side_by_side import alternate_sides

from flip.data.synthetic.dataset import ensure_synthetic_dicom

SITES, ROUNDS, SEED = 4, 3, 42
SYNTHETIC = {"num_sites": SITES, "images_per_site": 240, "image_size": 64, "seed": 0}
PLAIN = Path(__file__).with_name("plain_flower_app.py")
FLIP_ARGS = [
    "dicom_synthetic_fedavg", f"federation.num_sites={SITES}", "federation.server_eval_site=null",
    f"federation.num_rounds={ROUNDS}", "federation.local_epochs=1", "federation.local_steps=null",
    "federation.cpus_per_site=1", "federation.total_cpus=2", "strategy.fraction_train=1.0",
    "strategy.fraction_evaluate=1.0", "trainer.enable_progress_bar=false", f"seed={SEED}",
    *(f"data.synthetic.{key}={value}" for key, value in SYNTHETIC.items()),
]


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "FLIP_CACHE_DIR": str(work / "cache")}
        plain_env = {**env, "FLWR_HOME": str(work / "flwr"), "FLWR_TELEMETRY_ENABLED": "0"}
        root = ensure_synthetic_dicom(work / "cache", **SYNTHETIC)
        flip = [sys.executable, "-m", "flip.cli"]
        cfg = OmegaConf.create(run([*flip, "show", *FLIP_ARGS], work, env))
        assert cfg.federation.mode == "simulation" and cfg.strategy._target_.endswith(".FedAvg"), cfg
        assert cfg.data.image_size == cfg.data.synthetic.image_size and cfg.partition.kind == "by_site", cfg
        plain = [
            sys.executable, str(PLAIN), str(root), str(SITES), str(ROUNDS), "1",
            str(cfg.data.image_size), str(cfg.data.batch_size), str(cfg.model.optimizer.lr), str(SEED),
        ]
        medians = alternate_sides({
            "flip": ([*flip, "run", *FLIP_ARGS], env),
            "lightning_app": ([*plain, "lightning"], plain_env),
            "torch_app": ([*plain, "torch"], plain_env),
        }, work, repeats)
    for name, median in medians.items():
        print(f"{name}_s={median:.2f}")
    print(f"fl_overhead_vs_torch_ratio={medians['flip'] / medians['torch_app']:.3f}")
    print(f"fl_overhead_ratio={medians['flip'] / medians['lightning_app']:.3f}")


if __name__ == "__main__":
    main()
