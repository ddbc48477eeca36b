"""The simulation driver starts Flower before it loads torch or Lightning (they load in the
ServerApp while the sites start), and a site's handshake loads the training code."""

import subprocess
import sys

HEAVY = ("torch", "lightning", "torchmetrics")


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_driver_modules_load_no_torch():
    modules = "flip.run, flip.launch, flip.federation.simulation, flip.federation.server_app, flip.federation.client_app"
    assert loaded_after(f"import {modules}") == set()


def test_site_code_loads_training_stack():
    statement = (
        "from omegaconf import OmegaConf; from flip.federation.client_app import site_code; "
        "site_code(OmegaConf.create({'federation': {'cpus_per_site': 1}}))"
    )
    assert loaded_after(statement) == set(HEAVY)
