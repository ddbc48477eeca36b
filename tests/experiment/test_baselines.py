"""A federated recipe is its own baseline: `federation=local` and `federation=pooled` compose with
it unchanged, train as long as one of its sites does, and train on the sites it names."""

from __future__ import annotations

import pytest

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import config_problems, validate
from flip.federation.baseline import baseline_sites, trainer_length, unused_keys
from tests.conftest import FAST_OVERRIDES, recipe_files

# Federated recipes that train (an evaluation-only recipe has no baseline: it trains nothing).
FEDERATED = [r for r in recipe_files() if "override federation: simulation" in r.read_text() and "\njob: evaluate" not in r.read_text()]
# Its mechanism protects what sites send to a server, and flip never drops a privacy setting
# silently: it has no baseline of its own (tests/benchmarks/recipe_results.py uses its twin's).
SERVER_PRIVACY = {"fhir_synthetic_fedavg_secagg_dp"}


@pytest.mark.parametrize("mode", ["local", "pooled"])
@pytest.mark.parametrize("recipe", [r for r in FEDERATED if r.stem not in SERVER_PRIVACY], ids=lambda p: p.stem)
def test_a_federated_recipe_composes_as_a_baseline(recipe, mode):
    federated = validate(recipe, [])
    cfg = validate(recipe, [f"federation={mode}"])
    assert cfg.federation.mode == mode
    for key in ("num_sites", "num_rounds", "local_epochs", "server_eval_site"):
        assert cfg.federation[key] == federated.federation[key], key
    rounds, epochs = federated.federation.num_rounds, federated.federation.local_epochs
    assert trainer_length(cfg) == {"max_epochs": rounds * epochs}


def test_a_server_side_mechanism_is_never_dropped_silently():
    recipe = resolve_recipe("fhir_synthetic_fedavg_secagg_dp")
    problems = config_problems(recipe, ["federation=pooled"])
    assert any("a pooled run sends nothing" in p and "privacy=none for a baseline" in p for p in problems), problems


def test_a_local_recipe_trains_its_own_max_epochs():
    cfg = validate(resolve_recipe("dicom_synthetic_local"), ["trainer.max_epochs=7"])
    assert (cfg.federation.num_sites, trainer_length(cfg)) == (1, {"max_epochs": 7})
    assert [name for name, _ in baseline_sites(cfg).trained] == [""] and not baseline_sites(cfg).evaluated


def test_steps_per_round_become_steps():
    cfg = validate(resolve_recipe("dicom_synthetic_fedavg"), ["federation=pooled", "federation.local_steps=4", "federation.num_rounds=3"])
    assert trainer_length(cfg) == {"max_epochs": -1, "max_steps": 12}


SITES = [*FAST_OVERRIDES, "data.synthetic.num_sites=4", "federation.num_sites=3", "federation.server_eval_site=site-4"]


def test_local_baseline_trains_the_first_site_never_the_held_out_one():
    cfg = validate(resolve_recipe("dicom_synthetic_fedavg"), ["federation=local", *SITES])
    sites = baseline_sites(cfg)
    assert [name for name, _ in sites.trained] == ["site-1"]
    assert [name for name, _ in sites.evaluated] == ["site-1", "site-2", "site-3", "site-4"]
    other = baseline_sites(validate(resolve_recipe("dicom_synthetic_fedavg"), ["federation=local", *SITES, "data.site=site-3"]))
    assert [name for name, _ in other.trained] == ["site-3"]


def test_pooled_baseline_trains_every_federated_site_and_says_what_it_ignores():
    cfg = validate(resolve_recipe("dicom_synthetic_fedprox"), ["federation=pooled", *SITES, "federation.cpus_per_site=0.5"])
    sites = baseline_sites(cfg)
    assert [name for name, _ in sites.trained] == ["site-1", "site-2", "site-3"]
    assert sites.held_out == "site-4" and sites.evaluated[-1][0] == "site-4"
    assert unused_keys(cfg) == [
        "strategy (FedProx: one optimizer trains one model)", "federation.keep_optimizer_state", "federation.cpus_per_site"
    ]
