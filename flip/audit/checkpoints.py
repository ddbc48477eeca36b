"""The model an evaluation-only run evaluates (`evaluation.checkpoint`), and whether it fits.

A flip run directory stands for its final model; any other path must be a checkpoint file
holding a `state_dict` (a flip or Lightning checkpoint). Loading never runs code from the file
(`weights_only`).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from flip.audit.run_directory import CHECKPOINTS, FINAL, is_run_dir
from flip.errors import ConfigError

if TYPE_CHECKING:
    import torch

KEY = "evaluation.checkpoint"


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint file `path` names: a run directory's final model, or the file itself."""
    given = Path(path).expanduser()
    if given.is_dir():
        if not is_run_dir(given):
            raise ConfigError([f"{KEY}: {given} is a folder but not a flip run directory (no manifest.json or summary.json)"])
        final = given / CHECKPOINTS / FINAL
        if not final.is_file():
            raise ConfigError([f"{KEY}: the run directory {given} has no final model ({CHECKPOINTS}/{FINAL}); did the run complete?"])
        return final
    if not given.is_file():
        raise ConfigError([f"{KEY}: {given} does not exist (give a flip run directory or a checkpoint file)"])
    return given


def evaluated_weights(path: str | Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """(the file, its state_dict), or ConfigError naming the file and what is wrong with it."""
    import torch

    file = checkpoint_file(path)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError([f"{KEY}: {file} is not a checkpoint torch can load safely: {first}"]) from None
    state = payload.get("state_dict") if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError([f"{KEY}: {file} holds no state_dict of tensors (a flip or Lightning checkpoint has one)"])
    return file, state


def fit_problems(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], file: Path) -> list[str]:
    """How a checkpoint's weights differ from the configured model's, by key and shape."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{key} {list(state[key].shape)} in the checkpoint, {list(expected[key].shape)} in the model"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    problems = []
    for label, keys in (("missing from the checkpoint", missing), ("not in the model", unexpected), ("of another shape", shapes)):
        if keys:
            shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            problems.append(f"{KEY}: {file} does not fit the configured model: weights {label}: {shown}")
    return problems
