"""Every privacy mechanism, one class each, by its `privacy.mechanism` name."""

from __future__ import annotations

from flip.privacy.mechanisms.base import Mechanism
from flip.privacy.mechanisms.adaptive_dp import DpClientAdaptive, DpServerAdaptive
from flip.privacy.mechanisms.central_dp import DpClientFixed, DpServerFixed
from flip.privacy.mechanisms.dp_sgd import SampleLevelDp
from flip.privacy.mechanisms.local_dp import LocalDp
from flip.privacy.mechanisms.none import NoPrivacy
from flip.privacy.mechanisms.percentile import Percentile

MECHANISMS: dict[str, type[Mechanism]] = {
    cls.name: cls
    for cls in (NoPrivacy, DpServerFixed, DpServerAdaptive, DpClientFixed, DpClientAdaptive, LocalDp, SampleLevelDp, Percentile)
}
