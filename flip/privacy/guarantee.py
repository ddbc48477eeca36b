"""What a mechanism states: its guarantee, and the releases the server's ledger composes.

Each mechanism (`flip.privacy.mechanisms`) states its neighbouring relation, the sensitivity that
follows from its clipping and aggregation, its sampling, and so the noise over sensitivity that
the accountant composes: the README's privacy table, one row per class.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dp_accounting import dp_event

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


@dataclass(frozen=True)
class Release:
    """One accounted Gaussian release: all an auditor needs to compose it again."""

    noise_to_sensitivity: float
    sampling: str  # fixed_size | poisson | none
    population: int | None = None  # sites to sample from
    sample_size: int | None = None  # fixed_size: sites sampled without replacement from `population`
    sampling_rate: float | None = None  # poisson

    def event(self) -> dp_event.DpEvent:
        from dp_accounting import dp_event

        gaussian = dp_event.GaussianDpEvent(self.noise_to_sensitivity)
        if self.sampling == POISSON:
            return dp_event.PoissonSampledDpEvent(self.sampling_rate, gaussian)
        if self.sampling == FIXED_SIZE:
            return dp_event.SampledWithoutReplacementDpEvent(self.population, self.sample_size, gaussian)
        return gaussian


def combined(*multipliers: float) -> float:
    """Gaussian releases of the same sample, as one: (sum of z^-2)^-1/2."""
    return 1.0 / math.sqrt(sum(z**-2 for z in multipliers))
