"""What a mode's runner hands back to `flip.run` to be written into the run directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flip.results import MetricsTable


@dataclass
class SiteReport:
    """Per-site facts safe to leave the site: counts and a data fingerprint, no patient data."""

    site: str
    fingerprint: str
    found: int
    skipped: int
    split_sizes: tuple[int, int, int]
    label_counts: dict[str, int]

    @classmethod
    def from_datamodule(cls, datamodule: Any, name: str | None = None) -> "SiteReport":
        """The report of a set-up data module, under the site's own name when one is given."""
        return cls(
            site=name or datamodule.site_name,
            fingerprint=datamodule.fingerprint,
            found=datamodule.num_items_found,
            skipped=len(datamodule.skipped),
            split_sizes=tuple(datamodule.split_sizes),
            label_counts={str(k): int(v) for k, v in datamodule.label_counts.items()},
        )


@dataclass
class ModeResult:
    rounds: int
    model_sha256: str
    metrics: dict[str, float]
    best_metrics: dict[str, Any]
    table: MetricsTable
    sites: list[SiteReport] = field(default_factory=list)
    # Sites that raised or did not reply: round, site, phase and a traceback summary.
    failures: list[dict[str, Any]] = field(default_factory=list)
    # Replies a site withheld under its policy's k: round, site, phase and why.
    withheld: list[dict[str, Any]] = field(default_factory=list)
    # {mechanism, secure_aggregation, is_dp, epsilon, delta, max_epsilon}.
    privacy: dict[str, Any] = field(default_factory=dict)
    # Why the run stopped before its last round (e.g. the privacy budget), if it did.
    stop_reason: str | None = None
    # Federated runs: each site's own train/val/test metrics of the last round, by site name.
    site_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    # The final model's score counts per split, pooled over sites: (positives, negatives) per bin.
    score_counts: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    # evaluation.cross_site: one row per model, site, split and metric (cross_site.csv).
    cross_site: list[dict[str, Any]] = field(default_factory=list)
    # job=evaluate: the checkpoint evaluated (its path and sha256).
    evaluated: dict[str, Any] = field(default_factory=dict)
    # What the mode adds to manifest.json (a deployment: the server's run id and run directory).
    manifest_extra: dict[str, Any] = field(default_factory=dict)
