"""What each mechanism guarantees: the neighbouring relation, the sensitivity that follows from the
clipping and the aggregation, the sampling, and so the noise multiplier (noise std / sensitivity)
that the accountant composes. This is the README's privacy table, in code.

Central DP (C = clipping norm, sigma = privacy.noise_multiplier, N sites, k replies):
- replace_one: a fixed number of sites sampled without replacement; the released mean of the k
  replies moves by at most 2C/k when one site's data is replaced; flip adds noise sigma*C/k to
  it, so the multiplier is sigma/2.
- add_remove: each site sampled with probability q (Poisson); the sum of the clipped updates is
  divided by the expected count q*N (fixed), so adding or removing a site moves it by at most
  C/(q*N); noise sigma*C/(q*N): the multiplier is sigma.
- adaptive clipping also releases the noisy count of clipped updates (std clipped_count_stddev):
  one site moves it by 1 (replace_one) or 1/2 (add_remove, centred bits); the update's own noise
  multiplier is Flower's (sigma^-2 - (2 clipped_count_stddev)^-2)^-1/2. Both use the same sample, so
  they are one Gaussian release with multiplier (z_update^-2 + z_count^-2)^-1/2.
local_dp: each site's release, the update clipped to C plus LocalDpMod's noise; the site's data
replaced moves it by at most 2C; no amplification.
dp_sgd: one sample added or removed at a site, Poisson-sampled batches (Opacus, per site).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from flwr.supercore.differential_privacy import compute_adaptive_noise_params

if TYPE_CHECKING:
    from flip.privacy.plan import PrivacyPlan

FIXED_SIZE, POISSON, NO_AMPLIFICATION = "fixed_size", "poisson", "none"


@dataclass(frozen=True)
class Guarantee:
    """One mechanism's stated guarantee, as `summary.json` and `manifest.json` report it."""

    neighbours: str  # replace_one | add_remove
    unit: str  # what two neighbours differ in: one site's data, or one sample
    sampling: str  # fixed_size | poisson | none
    sensitivity: str  # how far one neighbour moves what is noised, from the clipping and the aggregation
    noise_to_sensitivity: float | None  # noise std / that sensitivity (None: each dp_sgd site derives its own)
    sampling_rate: float | None = None  # Poisson's q (add_remove); fixed_size's is sample / population


def statement(stated: Guarantee | None) -> dict[str, Any]:
    """The guarantee's keys in a `privacy` block of summary.json (None for a mechanism that is not DP)."""
    if stated is None:
        return {f.name: None for f in fields(Guarantee)}
    return asdict(stated)


def guarantee(plan: PrivacyPlan) -> Guarantee | None:
    """The guarantee of the plan's mechanism; None when it is not differential privacy."""
    s, mechanism = plan.settings, plan.mechanism
    if mechanism == "local_dp":
        return Guarantee(
            "replace_one", "site", NO_AMPLIFICATION, "2C: one site's update, clipped to C = clipping_norm",
            local_dp_noise_std(s) / (2 * s["clipping_norm"]),
        )
    if mechanism == "dp_sgd":
        return Guarantee(
            "add_remove", "sample", POISSON, "C: one sample's gradient, clipped to C = clipping_norm (Opacus)",
            s.get("noise_multiplier"),
        )
    if not plan.is_dp:
        return None
    clip = "C = clipping_norm" if "fixed" in mechanism else "C = this round's clipping norm"
    if plan.neighbours == "add_remove":
        sensitivity = f"C/(qN): the sum of the clipped updates over the expected count q*N ({clip})"
        return Guarantee("add_remove", "site", POISSON, sensitivity, central_noise_multiplier(plan), plan.sampling_rate)
    sensitivity = f"2C/k: the mean of the k replies, each clipped to {clip}"
    return Guarantee("replace_one", "site", FIXED_SIZE, sensitivity, central_noise_multiplier(plan))


def central_noise_multiplier(plan: PrivacyPlan) -> float:
    """The noise multiplier of one central-DP round, relative to the relation's sensitivity."""
    sigma = plan.noise_multiplier
    # The update's noise std over its sensitivity: sigma*C/k over 2C/k, or sigma*C/(qN) over C/(qN).
    share = 0.5 if plan.neighbours == "replace_one" else 1.0
    if "adaptive" not in plan.mechanism:
        return share * sigma
    count_stddev, update_noise = adaptive_noise(plan)
    # One site moves the clipped count by 1, or by 1/2 once add_remove centres the bits.
    count_sensitivity = 1.0 if plan.neighbours == "replace_one" else 0.5
    return combined(share * update_noise, count_stddev / count_sensitivity)


def adaptive_noise(plan: PrivacyPlan) -> tuple[float, float]:
    """(clipped_count_stddev, the update's noise multiplier) as Flower's adaptive wrappers set them."""
    return compute_adaptive_noise_params(
        plan.noise_multiplier, plan.expected_sites, plan.settings.get("clipped_count_stddev")
    )


def combined(*multipliers: float) -> float:
    """Gaussian releases of the same sample, as one: (sum of z^-2)^-1/2."""
    return 1.0 / math.sqrt(sum(z**-2 for z in multipliers))


def local_dp_noise_std(settings: dict) -> float:
    """LocalDpMod's noise std: the classic Gaussian calibration of its (sensitivity, epsilon, delta)."""
    return settings["sensitivity"] * math.sqrt(2 * math.log(1.25 / settings["delta"])) / settings["epsilon"]
