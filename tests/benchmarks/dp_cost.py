"""What sample-level DP-SGD costs in flip's local training: wall time and test accuracy.

One site of the synthetic DICOM data (recipe dicom_synthetic_local, 800 films per site at 32 px),
the recipe's CNN, the same epochs, batches and seeds with DP-SGD (flip.privacy.dp_sgd) and
without. DP-SGD's noise is derived for target_epsilon=8 over the run (delta 1/n^1.1). Each side
trains with the optimizer that suits it (OPTIMIZERS): without DP the recipe's Adam; with DP-SGD,
SGD with momentum, because Adam under DP noise stalls at the majority class on this data.
Fits alternate in one process (data decoded once): one warm-up pair, then REPEATS pairs, the seed
changing per pair; medians of wall time, CPU time and test accuracy. Prints each pair, then
`dp_sgd_utility_ratio=` (DP test accuracy / non-private) and last `dp_sgd_time_ratio=` (DP fit
wall time / non-private).
Usage: python tests/benchmarks/dp_cost.py [REPEATS]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import validate
from flip.privacy.dp_sgd import DpSgd
from flip.training import build_datamodule, build_model, build_trainer, configure_torch

EPOCHS, BATCH, IMAGES_PER_SITE, IMAGE_SIZE, SEED = 20, 64, 800, 32, 42
TARGET_EPSILON, CLIPPING_NORM = 8.0, 1.0
# DP-SGD's learning rate: the best of 0.01 / 0.03 / 0.1 on this data (clipped gradients are small).
OPTIMIZERS = {
    "plain": [],
    "dp_sgd": ["model.optimizer._target_=torch.optim.SGD", "+model.optimizer.momentum=0.9", "model.optimizer.lr=0.1"],
}


def config(side: str, seed: int):
    return validate(resolve_recipe("dicom_synthetic_local"), [
        f"seed={seed}", f"trainer.max_epochs={EPOCHS}", "trainer.enable_progress_bar=false",
        f"data.batch_size={BATCH}", f"data.image_size={IMAGE_SIZE}", f"data.synthetic.image_size={IMAGE_SIZE}",
        f"data.synthetic.images_per_site={IMAGES_PER_SITE}", *OPTIMIZERS[side],
    ])


def one_fit(datamodule, side: str, seed: int) -> tuple[float, float, float, str]:
    """(fit wall seconds, fit CPU seconds, test accuracy, privacy note) of one seeded fit."""
    cfg = config(side, seed)
    configure_torch(cfg)
    model = build_model(cfg)
    dp = DpSgd({"noise_multiplier": None, "target_epsilon": TARGET_EPSILON, "clipping_norm": CLIPPING_NORM})
    callbacks = [dp] if side == "dp_sgd" else []
    trainer = build_trainer(
        cfg, callbacks, logger=False, enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0
    )
    started, started_cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=datamodule)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    accuracy = trainer.test(model, datamodule=datamodule, verbose=False)[0]["test/accuracy"]
    note = f" (epsilon {dp.epsilon:.2f}, noise {dp.noise_multiplier:.3f}, {dp.steps} steps)" if callbacks else ""
    return seconds, cpu_seconds, accuracy, note


def alternate(datamodule, repeats: int) -> dict[str, list[tuple[float, float, float]]]:
    """(wall s, CPU s, test accuracy) per counted fit of each side; pair 0 warms caches up."""
    results = {"plain": [], "dp_sgd": []}
    for pair in range(repeats + 1):
        for side in results:
            seconds, cpu_seconds, accuracy, note = one_fit(datamodule, side, SEED + pair)
            label = f"{'warm-up ' if pair == 0 else ''}{side}"
            print(f"{label}: {seconds:.2f}s ({cpu_seconds:.2f}s CPU), test accuracy {accuracy:.3f}{note}", flush=True)
            if pair:
                results[side].append((seconds, cpu_seconds, accuracy))
    return results


def report(results: dict[str, list[tuple[float, float, float]]]) -> None:
    medians = {side: [statistics.median(column) for column in zip(*runs)] for side, runs in results.items()}
    wall, cpu, accuracy = ({side: values[i] for side, values in medians.items()} for i in range(3))
    print(f"plain_fit_s={wall['plain']:.2f}")
    print(f"dp_sgd_fit_s={wall['dp_sgd']:.2f}")
    print(f"dp_sgd_cpu_time_ratio={cpu['dp_sgd'] / cpu['plain']:.3f}")
    print(f"plain_test_accuracy={accuracy['plain']:.3f}")
    print(f"dp_sgd_test_accuracy={accuracy['dp_sgd']:.3f}")
    print(f"dp_sgd_utility_ratio={accuracy['dp_sgd'] / accuracy['plain']:.3f}")
    print(f"dp_sgd_time_ratio={wall['dp_sgd'] / wall['plain']:.3f}")


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FLIP_CACHE_DIR"] = tmp
        datamodule = build_datamodule(config("plain", SEED))
        datamodule.setup("fit")
        print(f"site-1: {datamodule.split_sizes} train/val/test films, batch {BATCH}, {EPOCHS} epochs", flush=True)
        results = alternate(datamodule, repeats)
    report(results)


if __name__ == "__main__":
    main()
