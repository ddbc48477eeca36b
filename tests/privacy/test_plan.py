"""The privacy plan (flip.privacy.plan): one class per mechanism, picked by `privacy.mechanism`,
with SecAgg+ added on; and validation that needs none of the halves' libraries."""

from __future__ import annotations

import subprocess
import sys

from omegaconf import OmegaConf

from flip.paths import CONF_DIR
from flip.privacy.mechanisms import MECHANISMS
from flip.privacy.plan import PrivacyPlan
from flip.privacy.schema import SCHEMAS
from tests.privacy.conftest import problems


def test_every_privacy_option_extends_the_schema_of_its_mechanisms_class():
    for path in sorted((CONF_DIR / "privacy").glob("*.yaml")):
        node = OmegaConf.load(path)
        (extended,) = [entry.partition("@")[0] for entry in node.defaults if str(entry).startswith("/schema/privacy/")]
        schema = SCHEMAS[extended.removeprefix("/schema/")]
        name = node.get("mechanism", schema.mechanism)
        assert MECHANISMS[name].schema is schema, path.name


def test_an_unknown_mechanism_is_named_with_those_there_are():
    assert problems("privacy.mechanism=magic") == [
        "privacy.mechanism: 'magic' is not a privacy mechanism (available: none, dp_server_fixed, dp_server_adaptive, "
        "dp_client_fixed, dp_client_adaptive, local_dp, dp_sgd, percentile)"
    ]


def test_secure_aggregation_is_added_to_the_mechanism():
    def plan(mechanism: str, secagg: dict | None = None) -> PrivacyPlan:
        return PrivacyPlan({"mechanism": mechanism, "secagg": secagg}, 4, 4, 0)

    assert plan("none").describe() == "no DP" and plan("none").secure_aggregation is None
    assert plan("none", {}).describe() == "no DP + SecAgg+"
    assert plan("dp_client_fixed", {}).describe() == "dp_client_fixed + SecAgg+"
    assert plan("dp_client_fixed", {}).reply_weights() == {"dp-weight": 1.0, "secagg-weight": 1.0}
    assert plan("none", {}).reply_weights() == {}  # the secure sum is weighted by num-examples


def test_validating_a_config_loads_neither_flower_nor_the_training_stack():
    code = (
        "import sys; from flip.experiment.recipes import resolve_recipe; from flip.experiment.validate import validate; "
        "validate(resolve_recipe('dicom_synthetic_fedavg'), ['federation=simulation', 'privacy=secagg_dp_client_fixed']); "
        "print(' '.join(m for m in ('flwr', 'torch', 'opacus', 'dp_accounting') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == ""
