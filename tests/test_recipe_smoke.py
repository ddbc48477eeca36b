"""Every shipped recipe runs end to end on small synthetic data and fills its run directory:
local recipes on one site, federated ones as a 2-site, 1-round simulation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import recipe_files

pytestmark = pytest.mark.slow

SMALL = ["trainer=debug", "data.min_samples=5", "data.synthetic.num_sites=2", "data.synthetic.images_per_site=40",
         "data.synthetic.image_size=32"]
LOCAL = [*SMALL, "data.site=site-1"]
SIMULATION = [*SMALL, "federation.num_sites=2", "federation.num_rounds=1", "federation.server_eval_site=null"]


def smoke_overrides(recipe) -> list[str]:
    text = recipe.read_text()
    if "override federation: simulation" not in text:
        return LOCAL
    # Two sites can only rebuild a secret from two shares.
    return [*SIMULATION, "privacy.secagg.reconstruction_threshold=2"] if "secagg" in text else SIMULATION


# Recipes another test already runs end to end at this size, and where.
RUN_ELSEWHERE = {
    "dicom_synthetic_local": "tests/test_local_run.py (the session's local_run)",
    "dicom_synthetic_fedavg": "tests/federation/test_startup.py, tests/federation/test_simulation.py",
    "dicom_synthetic_cross_site": "tests/conftest.py (the session's simulation_run)",
    "dicom_synthetic_evaluate": "tests/test_evaluation.py (on the session's simulation_run)",
}


def test_recipes_run_elsewhere_exist():
    assert set(RUN_ELSEWHERE) <= {recipe.stem for recipe in recipe_files()}


@pytest.mark.parametrize("recipe", [r for r in recipe_files() if r.stem not in RUN_ELSEWHERE], ids=lambda p: p.stem)
def test_recipe_runs_locally(recipe, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flip.cli", "run", str(recipe), *smoke_overrides(recipe)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (summary_path,) = (tmp_path / "runs").rglob("summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "completed" and summary["recipe"] == recipe.stem
    assert "test/accuracy" in summary["metrics"] and len(summary["model_sha256"]) == 64
    assert (summary_path.parent / "checkpoints" / "final.ckpt").is_file()
