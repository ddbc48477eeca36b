"""The simulation driver starts Flower before it loads torch or Lightning, and needs no Lightning
at all unless it evaluates itself or tracks the run (a tracker opens once round 1 is in): the
initial model comes from a site's handshake, which loads the training code."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST_OVERRIDES

HEAVY = ("torch", "lightning", "torchmetrics")


def loaded_after(statement: str, cwd: Path | None = None) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(done.stdout.splitlines()[-1].split()) if done.stdout.strip() else set()


def test_driver_modules_load_no_torch():
    modules = "flip.run, flip.launch, flip.federation.simulation, flip.federation.server_app, flip.federation.client_app"
    assert loaded_after(f"import {modules}") == set()


def test_site_code_loads_training_stack():
    statement = (
        "from types import SimpleNamespace as N; from flip.federation.client_app import site_code; "
        "site_code(N(site=N(cpus=1)))"
    )
    assert loaded_after(statement) == set(HEAVY)


@pytest.mark.slow
def test_a_run_without_server_evaluation_never_loads_lightning_in_the_driver(tmp_path):
    from flip.models.image import ImageClassifier
    from flip.results import model_sha256

    args = ["run", "dicom_synthetic_fedavg", *FAST_OVERRIDES, "federation.num_sites=2", "federation.num_rounds=1",
            "federation.server_eval_site=null", "logger=none"]
    assert loaded_after(f"from flip.cli import main; assert main({args!r}) == 0", cwd=tmp_path) == {"torch"}
    # The checkpoints the server wrote without Lightning load in it, as the weights the summary names.
    (summary,) = tmp_path.glob("runs/*/*/summary.json")
    final = ImageClassifier.load_from_checkpoint(summary.parent / "checkpoints" / "final.ckpt", weights_only=True)
    assert model_sha256(final.state_dict()) == json.loads(summary.read_text())["model_sha256"]
    assert final.hparams["channels"] == [16, 32, 64]
