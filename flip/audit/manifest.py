"""manifest.json: everything needed to say what ran, on what, with which software."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import flip
from flip.paths import PACKAGE_DIR

KEY_PACKAGES = ("flip-fl", "torch", "lightning", "flwr", "hydra-core", "omegaconf", "torchmetrics", "pydicom")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def installed_distributions() -> dict[str, str]:
    """Name -> version of every installed distribution, sorted by name."""
    versions = {dist.metadata["Name"]: dist.version for dist in metadata.distributions() if dist.metadata["Name"]}
    return dict(sorted(versions.items(), key=lambda item: item[0].lower()))


def git_state(directory: Path) -> dict[str, Any] | None:
    """Commit and dirtiness of the checkout holding `directory`, or None outside a checkout."""
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def start_manifest(*, recipe: Path | None, config_sha256: str, seed: int, mode: str) -> dict[str, Any]:
    distributions = installed_distributions()
    return {
        "flip_version": flip.__version__,
        "mode": mode,
        "recipe": str(recipe) if recipe else None,
        "recipe_sha256": file_sha256(recipe) if recipe and recipe.is_file() else None,
        "config_sha256": config_sha256,
        "seed": seed,
        "command": sys.argv,
        "started_at": now_iso(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {name: distributions.get(name) for name in KEY_PACKAGES},
        "git": git_state(PACKAGE_DIR),
        "distributions": distributions,
    }
