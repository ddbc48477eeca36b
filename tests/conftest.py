"""Shared fixtures: small synthetic data in a per-session cache, and recipe helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flip.paths import CONF_DIR, RECIPES_DIR

# Tiny settings that keep an end-to-end run to seconds.
FAST_OVERRIDES = [
    "trainer=debug",
    "data.synthetic.num_sites=3",
    "data.synthetic.images_per_site=40",
    "data.synthetic.image_size=32",
    "data.image_size=32",
    "data.batch_size=8",
]


@pytest.fixture(scope="session", autouse=True)
def flip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep generated data out of the user's cache; shared by every test of the session."""
    cache = tmp_path_factory.mktemp("flip-cache")
    os.environ["FLIP_CACHE_DIR"] = str(cache)
    return cache


def recipe_files() -> list[Path]:
    return sorted(RECIPES_DIR.glob("*.yaml"))


def option_files() -> list[tuple[str, str]]:
    """(group, option) for every option file in conf/, Hydra's own `hydra` group aside."""
    return sorted(
        (path.parent.name, path.stem)
        for path in CONF_DIR.glob("*/*.yaml")
        if path.parent.name != "hydra"
    )


def write_recipe(directory: Path, body: str, name: str = "recipe") -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(body, encoding="utf-8")
    return path
