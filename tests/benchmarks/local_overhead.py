"""flip run in local mode vs a hand-written Lightning script: same model, data and epochs.

Both run as fresh processes (start-up included), alternating, several times; the ratio of the
median wall times is printed last as `local_overhead_ratio=<x>` (target <= 1.10).
Usage: python tests/benchmarks/local_overhead.py [REPEATS]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from side_by_side import alternate

from flip.data.synthetic.dataset import ensure_synthetic_dicom

EPOCHS, IMAGE_SIZE, BATCH, SEED = 20, 64, 16, 42
PLAIN = Path(__file__).with_name("plain_lightning_local.py")


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
        flip_median, plain_median = alternate((flip_command, env), (plain_command, env), work, repeats)
    print(f"flip_local_s={flip_median:.2f}")
    print(f"plain_lightning_s={plain_median:.2f}")
    print(f"local_overhead_ratio={flip_median / plain_median:.3f}")


if __name__ == "__main__":
    main()
