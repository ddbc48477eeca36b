"""A site's own privacy policy (flip.privacy.policy): the refusals it names, and a malformed policy."""

from __future__ import annotations

import pytest

from flip.errors import ConfigError
from flip.federation.site_config import SiteSettings
from flip.privacy.accounting import projected_run_epsilon
from flip.privacy.policy import policy_refusals
from flip.privacy.schema import SitePolicy
from tests.privacy.conftest import plan_for, problems


def refusals(option: str, policy: dict, *overrides: str) -> list[str]:
    return policy_refusals(SitePolicy(**policy), plan_for(option, *overrides), num_rounds=5)


def test_a_site_refuses_a_run_weaker_than_its_policy():
    assert refusals("none", {"require_dp": True}) == [
        "policy.require_dp: this site requires differential privacy, the run uses no DP"
    ]
    assert refusals("dp_client_fixed", {"require_secure_aggregation": True}) == [
        "policy.require_secure_aggregation: this site requires SecAgg+, the run uses dp_client_fixed"
    ]
    assert refusals("dp_client_fixed", {"min_noise_multiplier": 2.0}) == [
        "policy.min_noise_multiplier: 2 required, the run's is 1"
    ]
    assert refusals("secagg", {"allowed_mechanisms": ["dp_client_fixed"]}) == [
        "policy.allowed_mechanisms: none is not one of dp_client_fixed"
    ]
    total = projected_run_epsilon(plan_for("dp_client_fixed"), 5)
    assert refusals("dp_client_fixed", {"max_epsilon": 1.0}) == [
        f"policy.max_epsilon: the run would spend epsilon {total:.3g} over 5 rounds, this site allows 1 "
        "(set privacy.max_epsilon <= 1, or add noise)"
    ]


def test_a_site_accepts_a_run_its_policy_allows():
    policy = {"require_dp": True, "require_secure_aggregation": True, "min_noise_multiplier": 1.0, "max_epsilon": 8.0}
    assert refusals("secagg_dp_client_fixed", policy, "privacy.max_epsilon=8.0") == []
    # DP-SGD sites account their own samples, and hold their training to the site's cap.
    assert refusals("dp_sgd", {"max_epsilon": 1.0}) == []


def test_a_malformed_site_policy_is_a_config_error_naming_its_keys():
    with pytest.raises(ConfigError) as error:
        SiteSettings.from_mapping({"name": "site-2", "policy": {"min_cohort": "many", "require_dpp": True}}, "site-2")
    assert error.value.problems == [
        "site-2.policy.min_cohort: expected an int, got 'many'",
        "site-2.policy.require_dpp: unknown key (did you mean 'require_dp'?)",
    ]


def test_a_misspelt_policy_key_in_the_simulated_sites_is_named():
    found = problems("privacy=dp_client_fixed", "+federation.sites.site-2.policy.require_dpp=true")
    assert "federation.sites.site-2.policy.require_dpp: unknown key (did you mean 'require_dp'?)" in found, found
