"""none: no mechanism beyond keeping the data on site; weights and metrics leave in the clear."""

from __future__ import annotations

from flip.privacy.mechanisms.base import Mechanism


class NoPrivacy(Mechanism):
    name = option = "none"
    runs_locally = True
    site_models_protected = True
