"""Every strategy option composes with its schema, builds its Flower strategy and aggregates real
site replies; `strategy_problems` reports every cross-key mistake."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.superlink.grid.inmemory_grid import InMemoryGrid
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import validate
from flip.config.strategies import FLOWER, STRATEGY_SCHEMAS, strategy_problems
from flip.paths import CONF_DIR
from tests.conftest import in_memory_grid

STRATEGY_DIR = CONF_DIR / "strategy"
OPTION_FILES = sorted(STRATEGY_DIR.glob("*.yaml"))
NUM_SITES = 7
# Constructor arguments a YAML file cannot or must not set.
NOT_IN_YAML = {
    "weighted_by_key", "arrayrecord_key", "configrecord_key", "train_metrics_aggr_fn",
    "evaluate_metrics_aggr_fn", "selection_rule", "train_loss_key",
}
# Strategies whose aggregate is the example-weighted mean of the site models.
WEIGHTED_MEAN = {"fedavg", "fedprox"}
# Strategies whose aggregate stays, weight by weight, between the smallest and largest site value.
WITHIN_SITES = WEIGHTED_MEAN | {"fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"}


@pytest.fixture
def grid(monkeypatch: pytest.MonkeyPatch) -> InMemoryGrid:
    return in_memory_grid(monkeypatch, NUM_SITES)


def compose_option(path: Path) -> DictConfig:
    """The option composed into a full simulation config, as `flip run` composes it."""
    overrides = [f"strategy={path.stem}", "federation=simulation", f"federation.num_sites={NUM_SITES}"]
    return validate(resolve_recipe(None), overrides).strategy


def site_model(seed: int) -> dict[str, torch.Tensor]:
    """State dict of a small CNN, different for every seed."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16, 2))
    return net.state_dict()


def site_reply(instruction: Message, state_dict: dict[str, torch.Tensor], num_examples: int, loss: float) -> Message:
    """The reply a site's ClientApp returns after training."""
    content = RecordDict(
        {
            "arrays": ArrayRecord(state_dict),
            "metrics": MetricRecord({"num-examples": num_examples, "train_loss": loss}),
        }
    )
    return Message(content, reply_to=instruction)


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: p.stem)
def test_an_options_schema_declares_every_knob_of_its_flower_strategy(path):
    raw = OmegaConf.load(path)
    assert raw.defaults == [f"/schema/strategy/{path.stem}@_here_", "_self_"]
    schema = OmegaConf.structured(STRATEGY_SCHEMAS[f"strategy/{path.stem}"])
    assert set(raw) - {"defaults"} <= set(schema)
    knobs = set(schema) - {"_target_"}
    assert knobs == set(inspect.signature(get_class(schema._target_)).parameters) - NOT_IN_YAML


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: p.stem)
def test_strategy_aggregates_site_models(path, grid):
    cfg = compose_option(path)
    assert strategy_problems(cfg, NUM_SITES) == []
    strategy = instantiate(cfg)
    assert f"{FLOWER}{type(strategy).__name__}" == cfg._target_

    # configure_train samples the grid's nodes and lets the server-side optimisers store the
    # current global model, which their aggregation starts from.
    instructions = list(strategy.configure_train(1, ArrayRecord(site_model(100)), ConfigRecord(), grid))
    assert len(instructions) == NUM_SITES
    models = [site_model(site) for site in range(NUM_SITES)]
    counts = [10 * (site + 1) for site in range(NUM_SITES)]
    sites = [{key: value.numpy().astype(np.float64) for key, value in model.items()} for model in models]
    replies = [
        site_reply(instruction, model, count, 0.5 + 0.1 * site)
        for site, (instruction, model, count) in enumerate(zip(instructions, models, counts))
    ]

    arrays, metrics = strategy.aggregate_train(1, replies)

    aggregate = {key: array.numpy() for key, array in arrays.items()}
    assert {key: value.shape for key, value in aggregate.items()} == {key: value.shape for key, value in sites[0].items()}
    assert all(np.isfinite(value).all() for value in aggregate.values())
    assert any(not np.array_equal(aggregate[key], site[key]) for site in sites for key in aggregate)
    assert "train_loss" in metrics
    if path.stem in WEIGHTED_MEAN:
        for key, value in aggregate.items():
            expected = sum(count * site[key] for count, site in zip(counts, sites)) / sum(counts)
            np.testing.assert_allclose(value, expected, rtol=0, atol=1e-6)
    if path.stem in WITHIN_SITES:
        for key, value in aggregate.items():
            stacked = np.stack([site[key] for site in sites])
            assert (stacked.min(axis=0) - 1e-6 <= value).all() and (value <= stacked.max(axis=0) + 1e-6).all()


def strategy_cfg(option: str, **values) -> DictConfig:
    """An option's schema defaults with some values changed."""
    return OmegaConf.merge(OmegaConf.structured(STRATEGY_SCHEMAS[f"strategy/{option}"]), values)


WAITS = "; the run would wait forever for sites"


@pytest.mark.parametrize(
    "option,num_sites,values,expected",
    [
        pytest.param(
            "fedavg",
            3,
            dict(fraction_train=0.2, min_train_nodes=0, fraction_evaluate=1.5, min_evaluate_nodes=4, min_available_nodes=5),
            [
                "strategy.min_available_nodes: 5 is more than federation.num_sites (3)" + WAITS,
                "strategy.min_evaluate_nodes: 4 is more than federation.num_sites (3)" + WAITS,
                "strategy.fraction_train: samples no site of 3 (int(3 x 0.2) = 0 and min_train_nodes = 0)",
                "strategy.fraction_evaluate: 1.5 must be in [0, 1]",
            ],
            id="sampling",
        ),
        pytest.param(
            "fedprox",
            2,
            dict(fraction_train=0.0, fraction_evaluate=0.0, min_evaluate_nodes=9, proximal_mu=-1.0),
            [
                "strategy.fraction_train: 0 trains no site; Flower skips training when it is 0",
                "strategy.proximal_mu: -1.0 must be >= 0",
            ],
            id="evaluation-off-ignores-its-minimum",
        ),
        pytest.param(
            "fedadam",
            3,
            dict(eta=0.0, tau=-1.0, beta_1=1.0),
            ["strategy.eta: 0.0 must be > 0", "strategy.tau: -1.0 must be > 0", "strategy.beta_1: 1.0 must be in [0, 1)"],
            id="fedadam",
        ),
        pytest.param("fedtrimmedavg", 3, dict(beta=0.5), ["strategy.beta: 0.5 must be in [0, 0.5)"], id="fedtrimmedavg"),
        pytest.param(
            "qfedavg",
            3,
            dict(q=-0.5, client_learning_rate=0.0),
            ["strategy.client_learning_rate: 0.0 must be > 0", "strategy.q: -0.5 must be >= 0"],
            id="qfedavg",
        ),
        pytest.param(
            "bulyan",
            5,
            dict(num_malicious_nodes=1),
            ["strategy.num_malicious_nodes: Bulyan with 1 needs at least 7 sites per round (4f+3), but a round trains 5"],
            id="bulyan-too-few-sites",
        ),
        pytest.param(
            "krum",
            8,
            dict(fraction_train=0.5, num_malicious_nodes=1),
            ["strategy.num_malicious_nodes: Krum with 1 needs at least 5 sites per round (2f+3), but a round trains 4"],
            id="krum-too-few-sampled",
        ),
        pytest.param("krum", 8, dict(num_malicious_nodes=-1), ["strategy.num_malicious_nodes: -1 must be >= 0"], id="krum"),
        pytest.param(
            "multikrum",
            6,
            dict(fraction_train=0.5, num_nodes_to_select=4),
            ["strategy.num_nodes_to_select: 4 is more than the 3 sites trained per round"],
            id="multikrum-selects-too-many",
        ),
    ],
)
def test_strategy_problems_lists_every_mistake(option, num_sites, values, expected):
    assert strategy_problems(strategy_cfg(option, **values), num_sites) == expected
    assert strategy_problems(OmegaConf.to_container(strategy_cfg(option, **values)), num_sites) == expected
