"""The `_target_` allow-list: a config from elsewhere may only build what a site trusts."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Iterable

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from flip.errors import ConfigError

DEFAULT_ALLOWED = ("flip.*", "flwr.serverapp.strategy.*", "torch.optim.*", "torch.optim.lr_scheduler.*")


def allowed_patterns(extra: Iterable[str] = ()) -> tuple[str, ...]:
    return (*DEFAULT_ALLOWED, *extra)


def find_targets(node: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (full key, target) pair under `node`, in config order."""
    found = []
    if isinstance(node, (dict, DictConfig)):
        for key, value in node.items():
            full = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                found.append((full, str(value)))
            else:
                found.extend(find_targets(value, full))
    elif isinstance(node, (list, ListConfig)):
        for index, value in enumerate(node):
            found.extend(find_targets(value, f"{path}[{index}]"))
    return found


def target_problems(node: Any, extra: Iterable[str] = (), path: str = "") -> list[str]:
    patterns = allowed_patterns(extra)
    return [
        f"{key}: '{target}' is not on the allow-list ({', '.join(patterns)}); "
        "add a pattern under allowed_targets to trust it"
        for key, target in find_targets(node, path)
        if not any(fnmatchcase(target, pattern) for pattern in patterns)
    ]


def safe_instantiate(node: DictConfig, extra: Iterable[str] = (), path: str = "", **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, refusing any `_target_` outside the allow-list."""
    problems = target_problems(OmegaConf.to_container(node, resolve=True), extra, path)
    if problems:
        raise ConfigError(problems)
    # Plain lists and dicts, so what a component keeps (checkpoint hyperparameters) holds no OmegaConf types.
    return instantiate(node, _convert_="all", **kwargs)
