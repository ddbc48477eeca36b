"""The import contract in pyproject.toml: layers import downward only, and Flower stays at the edge."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contract_holds():
    done = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_the_contract_can_fail(tmp_path):
    """A lower layer that imports a higher one breaks it (checked on a copy of the package)."""
    import shutil

    copy = tmp_path / "flip"
    shutil.copytree(ROOT / "flip", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "config" / "upward.py").write_text("from flip.federation import trust\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    done = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(tmp_path), "PATH": ""},
    )
    assert done.returncode != 0
    assert "flip.config is not allowed to import flip.federation" in done.stdout
