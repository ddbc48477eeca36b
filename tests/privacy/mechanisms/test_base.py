"""What every mechanism's rules share (flip.privacy.mechanisms.base)."""

from __future__ import annotations

from flip.experiment.recipes import resolve_recipe
from flip.experiment.validate import config_problems
from flip.privacy.mechanisms.none import NoPrivacy
from tests.privacy.conftest import problems


def test_mechanisms_that_need_a_server_refuse_a_local_run():
    assert config_problems(resolve_recipe("dicom_synthetic_local"), ["privacy=dp_server_fixed"]) == [
        "privacy.mechanism: dp_server_fixed protects what sites send to a server; a local run sends nothing "
        "(use federation=simulation, privacy=dp_sgd for a private local model, or privacy=none for a baseline without it)"
    ]


def test_a_budget_needs_differential_privacy():
    assert problems("privacy=secagg", "privacy.max_epsilon=3") == [
        "privacy.max_epsilon: none is not differential privacy, so there is no epsilon to budget"
    ]


def test_delta_is_a_probability():
    assert list(NoPrivacy.value_problems({"delta": 1.5, "max_epsilon": None})) == ["privacy.delta: must be in (0, 1), got 1.5"]
