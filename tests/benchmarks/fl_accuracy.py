"""FedAvg on a non-IID split vs central training on the pooled data, with the same budget.

The pooled synthetic DICOM data (all sites' images, root-level labels.csv) is split into 4 sites
by label skew (partition=dirichlet, alpha=0.5). FedAvg runs R rounds of 1 local epoch (each image
is seen R times); the central run trains the same model on the pooled data for R epochs. Each
side's final `metrics["test/accuracy"]` from summary.json is compared: for FedAvg the
example-weighted accuracy over the sites' test splits (together a patient split of the pooled
data), for central the pooled data's own test split. Both use SGD with momentum (see OPTIMIZER).
Prints both, and last
`fedavg_vs_central=<fedavg/central>` (target >= 0.95).
Usage: python tests/benchmarks/fl_accuracy.py [ROUNDS]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flip.data.synthetic import ensure_synthetic_dicom

SITES, SEED = 4, 42
# Both sides train with SGD + momentum: Adam restarted at every round (its state is local and
# fresh each round) drives class-skewed sites apart and FedAvg to the majority class.
OPTIMIZER = ["model.optimizer._target_=torch.optim.SGD", "+model.optimizer.momentum=0.9", "model.optimizer.lr=0.02"]
SYNTHETIC = {"num_sites": 4, "images_per_site": 240, "image_size": 64, "seed": 0}
COMMON = [
    "data.site=null", "trainer.enable_progress_bar=false", f"seed={SEED}",
    *(f"data.synthetic.{key}={value}" for key, value in SYNTHETIC.items()),
    *OPTIMIZER,
]


def flip_run(recipe: str, overrides: list[str], work: Path, env: dict[str, str]) -> dict:
    """Run a recipe in `work`; its summary.json."""
    before = set(work.glob(f"runs/*/*_{recipe}/summary.json"))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flip.cli", "run", recipe, *COMMON, *overrides],
                          cwd=work, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{recipe} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    (summary,) = set(work.glob(f"runs/*/*_{recipe}/summary.json")) - before
    print(f"{recipe}: {time.perf_counter() - started:.1f}s", flush=True)
    return json.loads(summary.read_text())


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "FLIP_CACHE_DIR": str(work / "cache")}
        ensure_synthetic_dicom(work / "cache", **SYNTHETIC)
        fedavg = flip_run("dicom_synthetic_fedavg", [
            "partition=dirichlet", "partition.alpha=0.5", f"federation.num_sites={SITES}",
            "federation.server_eval_site=null", f"federation.num_rounds={rounds}", "federation.local_epochs=1",
            "federation.local_steps=null", "strategy.fraction_train=1.0", "strategy.fraction_evaluate=1.0",
        ], work, env)
        central = flip_run("dicom_synthetic_local", [f"trainer.max_epochs={rounds}"], work, env)
    for site in fedavg["sites"]:
        print(f"  {site.get('site')}: splits {site.get('split_sizes')} labels {site.get('label_counts')}")
    fed_acc, central_acc = fedavg["metrics"]["test/accuracy"], central["metrics"]["test/accuracy"]
    print(f"rounds=epochs={rounds}")
    print(f"fedavg_test_accuracy={fed_acc:.4f}")
    print(f"central_test_accuracy={central_acc:.4f}")
    print(f"fedavg_vs_central={fed_acc / central_acc:.3f}")


if __name__ == "__main__":
    main()
