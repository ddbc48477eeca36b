"""Checks any layer uses: a plain mapping against a dataclass schema, every problem one line with
its full key, in plain words ('expected a float, got [0.1]', "did you mean 'max_epochs'?")."""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from enum import Enum
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from flip.config.schema import SCHEMA_MARKER

MISSING_VALUE = "???"


def strip_markers(node: Any) -> Any:
    """A copy of a plain config without the schema markers flip adds to validated nodes."""
    if isinstance(node, dict):
        return {k: strip_markers(v) for k, v in node.items() if k != SCHEMA_MARKER}
    if isinstance(node, list):
        return [strip_markers(v) for v in node]
    return node


def check_node(
    node: dict, schema_cls: type, path: str, interpolated: frozenset[str] | set[str] = frozenset(),
    marked: Mapping[str, type] | None = None,
) -> list[str]:
    """Problems of a plain mapping against a dataclass schema: unknown keys, types, missing values.

    Values copied in by interpolation are not checked again: their source key was. A top-level
    value marked with a schema name (a config group's option) is checked against `marked[name]`.
    """
    problems = []
    fields = {f.name: f for f in dataclasses.fields(schema_cls)}
    hints = typing.get_type_hints(schema_cls)
    probe = OmegaConf.structured(schema_cls)
    for key, value in node.items():
        full = join(path, key)
        if key == SCHEMA_MARKER:
            continue
        if key not in fields:
            problems.append(f"{full}: unknown key{did_you_mean(str(key), list(fields))}")
            continue
        if full not in interpolated:
            problems += _check_value(value, hints[key], probe, key, full, interpolated, marked if not path else None)
    for key, field in fields.items():
        if key not in node and is_required(field):
            problems.append(f"{join(path, key)}: missing value")
    return problems


def _check_value(
    value: Any, hint: Any, probe: DictConfig, key: str, full: str, interpolated: frozenset[str] | set[str],
    marked: Mapping[str, type] | None,
) -> list[str]:
    inner, optional = unwrap_optional(hint)
    if value == MISSING_VALUE:
        return [f"{full}: missing value"]
    marker = value.get(SCHEMA_MARKER) if isinstance(value, dict) else None
    if marker is not None and marked is not None:
        if marker not in marked:
            return [f"{full}: {marker!r} is not a schema flip knows"]
        return check_node(value, marked[marker], full, interpolated)
    if dataclasses.is_dataclass(inner):
        if value is None and optional:
            return []
        if isinstance(value, dict):
            return check_node(value, inner, full, interpolated)
        return [f"{full}: expected {describe(hint)}, got {show(value)}"]
    try:
        probe[key] = strip_markers(value)
    except (ValidationError, OmegaConfBaseException):
        return [f"{full}: expected {describe(hint)}, got {show(value)}"]
    return []


def is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING or (
        field.default == MISSING_VALUE
    )


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


_TYPE_NAMES: dict[Any, str] = {int: "an int", float: "a float", bool: "a bool (true/false)", str: "a string"}


def describe(hint: Any) -> str:
    """Plain-English name of a schema type: 'a float', 'a list of int', 'one of min, max'."""
    inner, optional = unwrap_optional(hint)
    origin = typing.get_origin(inner)
    if inner in _TYPE_NAMES:
        text = _TYPE_NAMES[inner]
    elif isinstance(inner, type) and issubclass(inner, Enum):
        text = "one of " + ", ".join(member.name for member in inner)
    elif origin in (list, typing.List):
        (item,) = typing.get_args(inner) or (Any,)
        text = f"a list of {getattr(item, '__name__', 'values')}"
    elif origin in (dict, typing.Dict) or dataclasses.is_dataclass(inner):
        text = "a mapping"
    else:
        text = "a value"
    return f"{text} or null" if optional else text


def show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
