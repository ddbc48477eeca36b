"""Data sources (DICOM, FHIR, clinical text, their join) and flip's synthetic multi-site data set."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    """flip's cache folder: $FLIP_CACHE_DIR, else $XDG_CACHE_HOME/flip, else ~/.cache/flip."""
    if os.environ.get("FLIP_CACHE_DIR"):
        return Path(os.environ["FLIP_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "flip"
    return Path.home() / ".cache" / "flip"


def synthetic_site_name(index: int) -> str:
    """The folder (and name) of site `index` (1-based) of flip's synthetic data set."""
    return f"site-{index}"


def synthetic_site_names(num_sites: int) -> list[str]:
    """The site folders of flip's synthetic data set, in order."""
    return [synthetic_site_name(index) for index in range(1, num_sites + 1)]


def synthetic_root(synthetic: Mapping[str, Any], cache_dir: str | Path | None = None) -> Path:
    """flip's generated data set for `synthetic` parameters, made in its cache on first use."""
    from flip.data.synthetic.dataset import ensure_synthetic_dicom

    return ensure_synthetic_dicom(cache_dir or default_cache_dir(), **synthetic)


__all__ = ["default_cache_dir", "synthetic_root", "synthetic_site_name", "synthetic_site_names"]
