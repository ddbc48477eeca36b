"""Composing a recipe with Hydra's compose API, with flip's config tree on the search path."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from flip.experiment import catalog
from flip.paths import CONF_DIR


def searchpath_override(lenient: bool = False) -> str:
    """The Hydra override that puts flip's schemas (typed, or for validation plain) and its
    `conf/` tree behind the recipe's own folder."""
    return f"hydra.searchpath=[file://{catalog.schema_folder(lenient)},file://{CONF_DIR}]"


@contextmanager
def recipe_context(recipe: Path) -> Iterator[GlobalHydra]:
    """Initialise Hydra for one recipe, the schemas in its ConfigStore."""
    catalog.register()
    with initialize_config_dir(config_dir=str(recipe.parent), version_base="1.3", job_name=recipe.stem):
        yield GlobalHydra.instance()


def compose_recipe(recipe: Path, overrides: list[str], lenient: bool = False) -> DictConfig:
    """Compose `recipe` with Hydra overrides (without the `hydra` node); lenient: untyped, each
    group's node marked with its schema's name."""
    with recipe_context(recipe):
        return compose(config_name=recipe.stem, overrides=[*overrides, searchpath_override(lenient)])


def group_options(recipe: Path, names: list[str]) -> dict[str, list[str]]:
    """Options of each config group in `names` as seen from `recipe` (empty for a non-group)."""
    with recipe_context(recipe) as hydra:
        loader = hydra.config_loader()
        overrides = [searchpath_override()]
        return {name: loader.get_group_options(name, config_name=recipe.stem, overrides=overrides) for name in names}
