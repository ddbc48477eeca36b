"""The seeds of a federated run: each site's per round, and the record of all of them."""

from __future__ import annotations

import hashlib
from typing import Any

from omegaconf import DictConfig


def site_seed(cfg: DictConfig, server_round: int, name: str) -> int:
    """The seed of a site's round: from the run's seed, the round and the site's name (the same
    name, and so the same seed, wherever the site runs)."""
    salt = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    return (cfg.seed * 1_000_003 + server_round * 1_009 + salt) % 2**32


def run_seeds(cfg: DictConfig, names: list[str], rounds: int) -> dict[str, Any]:
    """Every seed a federated run of `rounds` rounds used: the run's, the data split's, each
    site's per round, and the strings that seed the server's draws per round."""
    return {
        "global": int(cfg.seed),
        "data": int(cfg.data.get("seed", cfg.seed)),
        "sites": {name: {str(r): site_seed(cfg, r, name) for r in range(1, rounds + 1)} for name in names},
        "server": {
            "sampling": f"{cfg.seed}-train-<round> / {cfg.seed}-evaluate-<round>",
            "dp_noise": f"{cfg.seed}-noise-<round>",
            "secagg": f"{cfg.seed}-secagg-<round>",
        },
    }
