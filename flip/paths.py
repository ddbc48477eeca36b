"""Where flip's bundled config tree and recipes live (inside the wheel, or in the checkout)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _bundled(name: str) -> Path:
    # A wheel carries the folder inside the package; an editable install reads it from the checkout.
    inside = PACKAGE_DIR / name
    return inside if inside.is_dir() else PACKAGE_DIR.parent / name


CONF_DIR = _bundled("conf")
RECIPES_DIR = _bundled("recipes")
DEFAULT_RECIPE = "dicom_synthetic_local"
