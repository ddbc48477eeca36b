"""Every recipe and every config option composes and validates."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from flip.experiment.rules import IMPLEMENTED_MODES
from flip.experiment.recipes import list_recipes, read_header, resolve_recipe
from flip.experiment.validate import config_problems, validate
from flip.paths import DEFAULT_RECIPE
from tests.conftest import option_files, recipe_files


@pytest.mark.parametrize("recipe", recipe_files(), ids=lambda p: p.stem)
def test_recipe_validates(recipe):
    if "\njob: evaluate" in recipe.read_text():  # the model to evaluate comes from the command line
        assert any(p.startswith("evaluation.checkpoint: job=evaluate evaluates a model") for p in config_problems(recipe, []))
        cfg = validate(recipe, ["evaluation.checkpoint=runs/a-run"])
    else:
        cfg = validate(recipe, [])
    assert cfg.federation.mode in IMPLEMENTED_MODES
    assert not OmegaConf.missing_keys(cfg), "a recipe must run without site-local values on the command line"


@pytest.mark.parametrize("recipe", recipe_files(), ids=lambda p: p.stem)
def test_recipe_header_says_what_and_how(recipe):
    description, command = read_header(recipe)
    assert description and not description.startswith("flip ")
    assert re.fullmatch(rf"flip run {recipe.stem}( .*)?", command), command


@pytest.mark.parametrize("group,option", option_files(), ids=lambda v: str(v))
def test_option_composes_and_validates(group, option):
    recipe = resolve_recipe(None)
    overrides = [f"{group}={option}"]
    if group == "privacy":  # most mechanisms protect what sites send to a server
        overrides.append("federation=simulation")
    problems = config_problems(recipe, overrides)
    # An option may leave site-local values (a data folder, say) for the site to fill in.
    missing = [p.split(":")[0] for p in problems if p.endswith(": missing value")]
    assert problems == [f"{key}: missing value" for key in missing]
    cfg = validate(recipe, overrides + [f"{key}=/site/data" for key in missing])
    assert cfg[group] is not None


def test_default_recipe_is_listed():
    names = [recipe.name for recipe in list_recipes()]
    assert DEFAULT_RECIPE in names
    assert resolve_recipe(None).stem == DEFAULT_RECIPE


def test_recipe_anywhere_on_disk(tmp_path):
    from tests.conftest import write_recipe

    path = write_recipe(tmp_path, "# Mine.\n# flip run recipe\ndefaults:\n  - flip\n  - override trainer: debug\n  - _self_\nseed: 7\n")
    cfg = validate(resolve_recipe(str(path)), ["data.batch_size=4"])
    assert (cfg.seed, cfg.trainer.max_epochs, cfg.data.batch_size) == (7, 1, 4)
