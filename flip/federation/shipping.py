"""The resolved config travels to sites as one YAML string plus its sha256.

The server marks every node with the schema it was validated against; a site checks the hash,
then re-runs the same schema checks, rules and `_target_` allow-list before it builds anything.
"""

from __future__ import annotations

import hashlib
from enum import Enum
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from flip.config import schema
from flip.config.allowlist import target_problems
from flip.config.rules import rule_problems
from flip.config.validate import schema_problems, strip_markers
from flip.errors import ConfigError, FlipError

_SCHEMA_NAMES = {cls: name for name, cls in schema.SCHEMAS.items()}
_RECEIVED: dict[str, DictConfig] = {}


def _with_markers(node: Any) -> Any:
    if isinstance(node, DictConfig):
        if node._is_none():
            return None
        marked = {key: _with_markers(node._get_node(key)) for key in node.keys()}
        name = _SCHEMA_NAMES.get(OmegaConf.get_type(node))
        return {schema.SCHEMA_MARKER: name, **marked} if name else marked
    if isinstance(node, ListConfig):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    value = node._value()
    return value.name if isinstance(value, Enum) else value


def pack_config(cfg: DictConfig) -> tuple[str, str]:
    """(YAML text, sha256) of the resolved config, each node marked with its schema."""
    # Merging the resolved values back into the typed config keeps each node's schema.
    resolved = OmegaConf.merge(cfg, OmegaConf.to_container(cfg, resolve=True))
    text = OmegaConf.to_yaml(_with_markers(resolved))
    return text, hashlib.sha256(text.encode()).hexdigest()


def unpack_config(text: str, digest: str, extra_allowed: tuple[str, ...] = ()) -> DictConfig:
    """The config a site may build from, or an error naming what failed; cached per digest."""
    if digest in _RECEIVED:
        return _RECEIVED[digest]
    if hashlib.sha256(text.encode()).hexdigest() != digest:
        raise FlipError("received config does not match its sha256: refusing to build it")
    container = OmegaConf.to_container(OmegaConf.create(text))
    problems = schema_problems(container)
    plain = strip_markers(container)
    cfg = OmegaConf.create(plain)
    problems += rule_problems(cfg) + target_problems(plain, [*plain.get("allowed_targets", []), *extra_allowed])
    if problems:
        raise ConfigError(problems, source="received config")
    _RECEIVED[digest] = cfg
    return cfg
