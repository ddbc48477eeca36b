"""manifest.json: everything needed to say what ran, on what, with which software."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import flip
from flip.paths import PACKAGE_DIR

# Raised when what a manifest holds changes; a flip reads manifests of this format or older.
MANIFEST_FORMAT = 1
# Environment variables that set thread counts (and so summation order) before torch starts.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY")
KEY_PACKAGES = ("flip-fl", "torch", "lightning", "flwr", "hydra-core", "omegaconf", "torchmetrics", "pydicom")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def run_environment() -> dict[str, Any]:
    """What decides float results beyond the seed, as this process ran: torch's thread counts,
    deterministic-algorithm flag and the CPU instruction set its kernels use."""
    torch = sys.modules.get("torch")
    environment: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "env": {name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ},
    }
    if torch is not None:  # a deployment's `flip run` trains nothing: torch may not be loaded
        environment["torch"] = {
            "version": torch.__version__,
            "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        }
    return environment


def start_manifest(*, recipe: Path | None, config_sha256: str, seed: int, mode: str) -> dict[str, Any]:
    distributions = installed_distributions()
    return {
        "format": MANIFEST_FORMAT,
        "flip_version": flip.__version__,
        "mode": mode,
        "recipe": str(recipe) if recipe else None,
        "recipe_sha256": file_sha256(recipe) if recipe and recipe.is_file() else None,
        "config_sha256": config_sha256,
        "seed": seed,
        "command": sys.argv,
        "cwd": os.getcwd(),  # where relative paths in the config point from
        "started_at": now_iso(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {name: distributions.get(name) for name in KEY_PACKAGES},
        "git": git_state(PACKAGE_DIR),
        "distributions": distributions,
    }
