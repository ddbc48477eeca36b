"""A site's own privacy policy: the check that refuses a run weaker than it.

A site's policy is part of its own settings (`flip.federation.site_config`), never of the run's
config. The check runs before the site touches its data, in the server's handshake and again in
every round (`flip.federation.trust`), and names each rule the run breaks.
"""

from __future__ import annotations

from flip.privacy.plan import PrivacyPlan
from flip.privacy.schema import SitePolicy


def policy_refusals(policy: SitePolicy, plan: PrivacyPlan, num_rounds: int) -> list[str]:
    """Every policy rule the run would break, each naming the rule."""
    mechanism, refusals = plan.mechanism.name, []
    if policy.require_dp and not plan.is_dp:
        refusals.append(f"policy.require_dp: this site requires differential privacy, the run uses {plan.describe()}")
    if policy.require_secure_aggregation and plan.secagg is None:
        refusals.append(f"policy.require_secure_aggregation: this site requires SecAgg+, the run uses {plan.describe()}")
    if policy.allowed_mechanisms is not None and mechanism not in policy.allowed_mechanisms:
        refusals.append(f"policy.allowed_mechanisms: {mechanism} is not one of {', '.join(policy.allowed_mechanisms)}")
    if policy.min_noise_multiplier is not None:
        noise = plan.mechanism.noise_multiplier
        if noise is None:
            refusals.append(f"policy.min_noise_multiplier: {policy.min_noise_multiplier:g} required, the run adds no noise ({plan.describe()})")
        elif noise < policy.min_noise_multiplier:
            refusals.append(f"policy.min_noise_multiplier: {policy.min_noise_multiplier:g} required, the run's is {noise:.3g}")
    if policy.max_epsilon is not None:
        refusals += _epsilon_refusals(policy.max_epsilon, plan, num_rounds)
    return refusals


def sharing_refusals(policy: SitePolicy, cross_site: bool) -> list[str]:
    """A run that would send this site's own model to the other sites, where its policy forbids it."""
    if cross_site and not policy.share_model:
        return ["policy.share_model: this site's model may not go to other sites, and the run asks for evaluation.cross_site"]
    return []


def _epsilon_refusals(limit: float, plan: PrivacyPlan, num_rounds: int) -> list[str]:
    if not plan.is_dp:
        return [f"policy.max_epsilon: this site allows epsilon {limit:g} at most, the run ({plan.describe()}) is not differential privacy"]
    budget = plan.max_epsilon
    if budget is not None and budget <= limit:
        return []  # the run stops itself before it spends more
    from flip.privacy.accounting import projected_run_epsilon

    total = projected_run_epsilon(plan, num_rounds)
    if total is None:
        return []  # sites account themselves (dp_sgd): this one caps its own budget at `limit`
    if total > limit:
        return [
            f"policy.max_epsilon: the run would spend epsilon {total:.3g} over {num_rounds} rounds, this site allows "
            f"{limit:g} (set privacy.max_epsilon <= {limit:g}, or add noise)"
        ]
    return []


def site_epsilon_cap(policy: SitePolicy, plan: PrivacyPlan) -> float | None:
    """The budget a site that accounts itself (dp_sgd) holds its training to: the run's or its policy's, the lower."""
    caps = [c for c in (plan.max_epsilon, policy.max_epsilon) if c is not None]
    return min(caps) if caps else None
