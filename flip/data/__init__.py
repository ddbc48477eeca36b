"""Data sources: a DICOM folder data module and a synthetic multi-site DICOM generator."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """flip's cache folder: $FLIP_CACHE_DIR, else $XDG_CACHE_HOME/flip, else ~/.cache/flip."""
    if os.environ.get("FLIP_CACHE_DIR"):
        return Path(os.environ["FLIP_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "flip"
    return Path.home() / ".cache" / "flip"


__all__ = ["default_cache_dir"]
