"""Bad configs: every problem is reported at once, one line each, with its full key."""

from __future__ import annotations

import pytest

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import config_problems, validate, validate_sweep
from flip.errors import ConfigError, FlipError
from tests.conftest import write_recipe

BAD_RECIPE = """\
# A recipe with five mistakes.
# flip run bad
defaults:
  - flip
  - override data: dicom
  - _self_
seed: lots
trainer:
  max_epoch: 3
model:
  dropout: [0.1]
  optimizer:
    _target_: os.system
"""


def test_bad_recipe_lists_every_problem(tmp_path):
    recipe = write_recipe(tmp_path, BAD_RECIPE, "bad")
    assert config_problems(recipe, []) == [
        "seed: expected an int, got 'lots'",
        "data.root: missing value",
        "model.dropout: expected a float, got [0.1]",
        "trainer.max_epoch: unknown key (did you mean 'max_epochs'?)",
        "model.optimizer._target_: 'os.system' is not an allowed optimizer (allowed: a class in torch.optim, "
        "and what the builder lists in its own allowed_targets) (rule: allow-list)",
    ]


def test_bad_overrides_are_all_reported():
    recipe = resolve_recipe(None)
    overrides = [
        "trainer.max_epochs=lots",
        "trainer.max_epoch=3",
        "data=nope",
        "seed=[",
        "+privacy.noise_multiplier=1.0",
        "monitor_mode=highest",
        "data.val_fraction=0.7",
        "data.test_fraction=0.5",
    ]
    assert config_problems(recipe, overrides) == [
        "override 'seed=[': no viable alternative at input '['",
        "data: no option 'nope' (available: dicom, fhir, multimodal, synthetic_dicom, text)",
        "trainer.max_epoch: unknown key (did you mean 'max_epochs'?) (override 'trainer.max_epoch=3')",
        "monitor_mode: expected one of min, max, got 'highest'",
        "trainer.max_epochs: expected an int, got 'lots'",
        "privacy.noise_multiplier: unknown key",
        "data.val_fraction + data.test_fraction: must leave data to train on, got 0.7 + 0.5",
    ]


def test_rules_across_groups():
    recipe = resolve_recipe(None)
    problems = config_problems(recipe, ["monitor=val/dice", "model.metrics=[accuracy,kappa]", "data.synthetic=null"])
    assert problems == [
        "model.metrics: unknown metric 'kappa' (available: accuracy, auroc, f1, precision, recall)",
        "monitor: 'val/dice' is not a metric this model reports (available: val/loss, val/accuracy, val/kappa)",
        "data.root: null needs data.synthetic (generated data); otherwise set the folder of this site's data",
    ]


def test_allowed_targets_extends_the_allow_list():
    recipe = resolve_recipe(None)
    overrides = ["model.optimizer._target_=mylab.optim.Lion"]
    assert len(config_problems(recipe, overrides)) == 1
    assert config_problems(recipe, [*overrides, "allowed_targets=[mylab.optim.*]"]) == []


def test_validate_raises_with_all_problems():
    with pytest.raises(ConfigError) as caught:
        validate(resolve_recipe(None), ["seed=x", "threads=0"])
    assert caught.value.problems == ["seed: expected an int, got 'x'", "threads: must be at least 1, got 0"]
    assert str(caught.value).splitlines()[0] == "invalid config (dicom_synthetic_local.yaml): 2 problem(s)"


def test_sweep_validates_every_job():
    recipe = resolve_recipe(None)
    assert validate_sweep(recipe, ["seed=1,2", "trainer=default,debug"]) == 4
    with pytest.raises(ConfigError) as caught:
        validate_sweep(recipe, ["seed=1,x", "data=dicom,nope"])
    assert "seed: expected an int, got 'x'" in caught.value.problems
    assert "data: no option 'nope' (available: dicom, fhir, multimodal, synthetic_dicom, text)" in caught.value.problems


def test_unknown_recipe_names_the_choices():
    with pytest.raises(FlipError, match=r"unknown recipe 'nope': no such file, and no recipe of that name .*available: .*dicom_synthetic_local"):
        resolve_recipe("nope")


def test_federated_settings_are_checked_before_flower_starts():
    recipe = resolve_recipe("dicom_synthetic_fedavg")
    problems = config_problems(recipe, [
        "strategy=fedprox", "strategy.proximal_mu=lots", "federation.num_sites=1",
        "strategy.min_available_nodes=4", "strategy.fraction_train=0.2", "strategy.min_train_nodes=0",
    ])
    assert problems == [
        "strategy.proximal_mu: expected a float, got 'lots'",
        "federation.num_sites: a simulation run needs at least 2 sites, got 1",
        "strategy.min_available_nodes: 4 is more than federation.num_sites (1); the run would wait forever for sites",
        "strategy.min_evaluate_nodes: 2 is more than federation.num_sites (1); the run would wait forever for sites",
        "strategy.fraction_train: samples no site of 1 (int(1 x 0.2) = 0 and min_train_nodes = 0)",
    ]


def test_keys_of_a_nested_schema_set_partly_in_a_recipe_can_be_overridden():
    # The recipe sets only data.synthetic.num_sites; the other keys come from the schema's defaults.
    recipe = resolve_recipe("fhir_synthetic_local")
    assert config_problems(recipe, ["data.synthetic.images_per_site=40"]) == []
    assert config_problems(recipe, ["data.synthetic.imgs=40"]) == [
        "data.synthetic.imgs: unknown key (override 'data.synthetic.imgs=40')"
    ]


def test_logit_adjustment_is_checked_and_kept_from_dp_sgd():
    recipe = resolve_recipe("dicom_synthetic_fedavg")
    assert config_problems(recipe, ["model.logit_adjustment=-0.5"]) == [
        "model.logit_adjustment: must be 0 (off) or positive, got -0.5"
    ]
    assert config_problems(recipe, ["privacy=dp_sgd", "model.logit_adjustment=1.0"]) == [
        "model.logit_adjustment: it trains on the site's exact label counts, which DP-SGD does not protect; set it to 0"
    ]
