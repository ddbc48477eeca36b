"""Where a federated run can pick up after it stopped: the last completed round.

After every round the server writes `checkpoints/resume.json` (the round, its records: metrics,
best round, failures, site reports) beside `round_<k>.ckpt`, and the strategy's own state (e.g.
FedAdam's moments) to `checkpoints/strategy_state.npz`. A resumed run starts from them with
round numbers that stay absolute, so every seed (sampling, each site's training) is the one
the uninterrupted run used and the final weights are the same.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig

from flip.audit.run_directory import CHECKPOINTS, RunDirectory, load_weights, round_checkpoint
from flip.errors import FlipError
from flip.results import MetricsTable
from flip.run_types import SiteReport

if TYPE_CHECKING:
    from flip.federation.keeper import RoundKeeper

RESUME_FILE = "resume.json"
STRATEGY_FILE = "strategy_state.npz"


def resume_problems(cfg: DictConfig) -> list[str]:
    """Why a run of `cfg` cannot be resumed exactly (empty when it can)."""
    from flip.privacy.plan import PrivacyPlan

    plan = PrivacyPlan.from_config(cfg)
    problems = []
    if plan.is_dp or plan.secagg is not None:
        problems.append(f"privacy={plan.settings['mechanism']}: the privacy ledger and the mechanism's server state are not saved between rounds")
    if cfg.federation.get("keep_optimizer_state"):
        problems.append("federation.keep_optimizer_state: each site's optimizer state lives in its node for one run only")
    return problems


@dataclass
class ResumePoint:
    """The state after round `round` of an earlier, stopped run."""

    round: int
    records: dict[str, Any]
    strategy: dict[str, np.ndarray]
    checkpoint: Path


def _strategy_arrays(strategy: Any) -> dict[str, np.ndarray]:
    """The strategy's numeric state (arrays, dicts and lists of arrays), flattened for np.savez."""
    from flwr.app import ArrayRecord

    flat: dict[str, np.ndarray] = {}
    for name, value in vars(strategy).items():
        if isinstance(value, ArrayRecord):
            value = {key: array.numpy() for key, array in value.items()}
            kind = "r"
        elif isinstance(value, np.ndarray):
            value, kind = {"": value}, "a"
        elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            kind = "d"
        elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
            value, kind = {str(i): v for i, v in enumerate(value)}, "l"
        else:
            continue
        for index, (key, array) in enumerate(value.items()):
            flat[f"{name}|{kind}|{index:06d}|{key}"] = array
    return flat


def restore_strategy(strategy: Any, flat: dict[str, np.ndarray]) -> None:
    from flwr.app import Array, ArrayRecord

    grouped: dict[tuple[str, str], list[tuple[str, str, np.ndarray]]] = {}
    for full, array in flat.items():
        name, kind, index, key = full.split("|", 3)
        grouped.setdefault((name, kind), []).append((index, key, array))
    for (name, kind), entries in grouped.items():
        entries.sort()
        if kind == "a":
            value: Any = entries[0][2]
        elif kind == "d":
            value = {key: array for _, key, array in entries}
        elif kind == "l":
            value = [array for _, _, array in entries]
        else:
            value = ArrayRecord({key: Array(array) for _, key, array in entries})
        setattr(strategy, name, value)


def save_point(run_directory: RunDirectory, keeper: RoundKeeper, strategy: Any, server_round: int) -> None:
    """Record the state after `server_round`, once its checkpoint is written."""
    flat = _strategy_arrays(strategy)
    if flat:
        buffer = io.BytesIO()
        np.savez(buffer, **flat)
        run_directory.write_bytes(f"{CHECKPOINTS}/{STRATEGY_FILE}", buffer.getvalue())
    records = {
        "round": server_round,
        "best_round": keeper.best_round,
        "best_value": keeper.best_value,
        "failures": keeper.failures,
        "withheld": keeper.withheld,
        "sites": {str(index): asdict(report) for index, report in keeper.sites.items()},
        "site_names": keeper.site_names,
        "table": keeper.table.rows,
        "has_strategy_state": bool(flat),
    }
    run_directory.write_bytes(f"{CHECKPOINTS}/{RESUME_FILE}", json.dumps(records, default=float).encode())


def load_point(run_dir: Path) -> ResumePoint:
    """The last completed round of the run in `run_dir`, or FlipError saying what is missing."""
    checkpoints = run_dir / CHECKPOINTS
    file = checkpoints / RESUME_FILE
    if not file.is_file():
        raise FlipError(f"{run_dir}: no completed round to resume from (no checkpoints/{RESUME_FILE})")
    records = json.loads(file.read_text(encoding="utf-8"))
    checkpoint = checkpoints / round_checkpoint(int(records["round"]))
    if not checkpoint.is_file():
        raise FlipError(f"{run_dir}: checkpoints/{RESUME_FILE} names round {records['round']}, but {checkpoint.name} is missing")
    strategy: dict[str, np.ndarray] = {}
    if records.get("has_strategy_state"):
        with np.load(checkpoints / STRATEGY_FILE, allow_pickle=False) as stored:
            strategy = {key: stored[key] for key in stored.files}
    return ResumePoint(int(records["round"]), records, strategy, checkpoint)


def restore_keeper(keeper: RoundKeeper, point: ResumePoint) -> None:
    """The records of the rounds before the resume point, back in the server's keeper."""
    records = point.records
    keeper.best_round, keeper.best_value = int(records["best_round"]), records["best_value"]
    keeper.failures, keeper.withheld = list(records["failures"]), list(records["withheld"])
    keeper.sites = {
        int(index): SiteReport(**{**report, "split_sizes": tuple(report["split_sizes"])}) for index, report in records["sites"].items()
    }
    keeper.table = MetricsTable([tuple(row) for row in records["table"]])
    keeper.last_round = point.round


def checkpoint_weights(point: ResumePoint) -> dict:
    return load_weights(point.checkpoint)
