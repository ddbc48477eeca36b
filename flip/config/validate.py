"""Validation that reports every problem in a config at once, one line each, with full keys.

Hydra stops at the first bad key or override. flip composes the recipe leniently (schemas
replaced by markers), applies value overrides itself, and checks the result against the same
dataclass schemas, the rules that span groups and the `_target_` allow-list (placement and
names; the objects are resolved when a component is built). Only a config
with no problem is then composed strictly and handed to the runner.
"""

from __future__ import annotations

import dataclasses
import json
import difflib
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from flip.config import compose, schema
from flip.config.allowlist import AllowList, entry_problems, target_problems
from flip.config.rules import rule_problems
from flip.errors import ConfigError

# Config groups are the schema names' first parts: data, model, trainer, federation, strategy, ...
GROUPS = frozenset(name.partition("/")[0] for name in schema.SCHEMAS if "/" in name)
_MISSING = "???"


# ---------------------------------------------------------------- entry points


def validate(recipe: Path, overrides: list[str]) -> DictConfig:
    """The strictly composed config of `recipe` + `overrides`, or ConfigError listing every problem."""
    problems = config_problems(recipe, overrides)
    if problems:
        raise ConfigError(problems, source=recipe.name)
    try:
        return compose.compose_recipe(recipe, overrides)
    except (HydraException, OmegaConfBaseException) as error:  # a case the lenient pass missed
        raise ConfigError([one_line(error)], source=recipe.name) from error


def validate_sweep(recipe: Path, overrides: list[str]) -> int:
    """Validate every job of a multirun sweep; returns the number of jobs."""
    parsed, problems = parse_overrides(overrides)
    if problems:
        raise ConfigError(problems, source=recipe.name)
    try:
        jobs = BasicSweeper.split_arguments(parsed, None)[0]
    except HydraException as error:
        raise ConfigError([one_line(error)], source=recipe.name) from error
    seen: dict[str, None] = {}
    for job in jobs:
        problems = config_problems(recipe, job)
        if not problems:
            problems = _strict_problems(recipe, job)
        for problem in problems:
            seen.setdefault(problem)
    if seen:
        raise ConfigError(list(seen), source=recipe.name)
    return len(jobs)


def _strict_problems(recipe: Path, overrides: list[str]) -> list[str]:
    """What Hydra's own composition rejects that the lenient pass let through."""
    try:
        compose.compose_recipe(recipe, overrides)
    except (HydraException, OmegaConfBaseException) as error:
        return [one_line(error)]
    return []


def config_problems(recipe: Path, overrides: list[str]) -> list[str]:
    parsed, problems = parse_overrides(overrides)
    options = _options(recipe, [o.key_or_group for o in parsed])
    group_overrides, value_overrides = [], []
    for override in parsed:
        (group_overrides if _is_composition_override(options, override) else value_overrides).append(override)
    problems += _unknown_options(options, group_overrides)
    try:
        cfg = compose.compose_recipe(
            recipe, [o.input_line for o in group_overrides if o.input_line], lenient=True
        )
    except (HydraException, OmegaConfBaseException) as error:
        return [*problems, one_line(error)]
    OmegaConf.set_struct(cfg, False)
    fill_schema_defaults(cfg)
    problems += _apply_value_overrides(cfg, value_overrides)
    resolved, interpolated, resolve_errors = resolve_leaves(cfg)
    problems += resolve_errors
    problems += schema_problems(resolved, interpolated)
    problems += rule_problems(OmegaConf.create(strip_markers(resolved)))
    allowed = resolved.get("allowed_targets")
    problems += entry_problems(allowed, "allowed_targets")
    problems += target_problems(resolved, AllowList.of(allowed if isinstance(allowed, list) else ()))
    return problems


# ---------------------------------------------------------------- overrides


def parse_overrides(overrides: list[str]) -> tuple[list[Override], list[str]]:
    parser = OverridesParser.create()
    parsed, problems = [], []
    for line in overrides:
        try:
            parsed.extend(parser.parse_overrides([line]))
        except HydraException as error:
            problems.append(f"override '{line}': {one_line(error)}")
    return parsed, problems


def _is_composition_override(options: dict[str, list[str]], override: Override) -> bool:
    """Overrides Hydra must see while composing: group choices and `hydra.*` settings."""
    if override.is_hydra_override():
        return True
    if isinstance(override.value(), dict):
        return False
    return bool(options.get(override.key_or_group))


_OPTIONS_CACHE: dict[tuple[Path, str], list[str]] = {}


def _options(recipe: Path, names: list[str]) -> dict[str, list[str]]:
    """Group options for each name (empty for value keys), looked up once per recipe and name.

    A dotted name (`federation.num_sites`) is a key, never a group (groups nest with `/`), so
    only the others are looked up: each lookup searches the config tree.
    """
    for name in names:
        if "." in name:
            _OPTIONS_CACHE.setdefault((recipe, name), [])
    missing = sorted({name for name in names if (recipe, name) not in _OPTIONS_CACHE})
    if missing:
        for name, found in compose.group_options(recipe, missing).items():
            _OPTIONS_CACHE[(recipe, name)] = found
    return {name: _OPTIONS_CACHE[(recipe, name)] for name in names}


def _unknown_options(all_options: dict[str, list[str]], overrides: list[Override]) -> list[str]:
    problems = []
    for override in list(overrides):
        if override.is_hydra_override() or override.is_delete():
            continue
        options = all_options[override.key_or_group]
        choices = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        unknown = [c for c in choices if str(c) not in options]
        if unknown:
            overrides.remove(override)
            problems.append(
                f"{override.key_or_group}: no option {', '.join(repr(str(u)) for u in unknown)} "
                f"(available: {', '.join(options)})"
            )
    return problems


def _apply_value_overrides(cfg: DictConfig, overrides: list[Override]) -> list[str]:
    problems = []
    for override in overrides:
        key = override.key_or_group
        exists = _exists(cfg, key)
        line = override.input_line
        if override.is_delete():
            if not exists:
                problems.append(f"{key}: cannot delete a key that is not set (override '{line}')")
            else:
                parent, _, leaf = key.rpartition(".")
                container = OmegaConf.select(cfg, parent) if parent else cfg
                del container[leaf]
            continue
        if override.is_add() and exists:
            problems.append(f"{key}: already set; use '++{line.lstrip('+')}' to replace it")
            continue
        if not exists and not override.is_add() and not override.is_force_add():
            problems.append(f"{key}: unknown key{_suggestion(cfg, key)} (override '{line}')")
            continue
        OmegaConf.update(cfg, key, override.value(), merge=True, force_add=True)
    return problems


def _exists(cfg: DictConfig, key: str) -> bool:
    """Whether `key` is set, a `???` value included (OmegaConf's `in` says no to those)."""
    parent, _, leaf = key.rpartition(".")
    container = OmegaConf.select(cfg, parent, default=None, throw_on_missing=False) if parent else cfg
    return isinstance(container, DictConfig) and leaf in container.keys()


def fill_schema_defaults(node: Any) -> None:
    """Give every marked node its schema's defaults, so the lenient config has the strict one's keys."""
    if isinstance(node, DictConfig):
        name = node.get(schema.SCHEMA_MARKER)
        if name is not None:
            _fill_from(node, schema.SCHEMAS[name])
        for key in node.keys():
            fill_schema_defaults(node._get_node(key))


def _fill_from(node: DictConfig, schema_cls: type) -> None:
    """Missing keys from the dataclass's defaults, also inside nested dataclass fields that are set."""
    defaults = OmegaConf.to_container(OmegaConf.structured(schema_cls), resolve=False)
    hints = typing.get_type_hints(schema_cls)
    for key, value in defaults.items():
        if key not in node.keys() and value != _MISSING:
            node[key] = value
        inner, _ = _unwrap_optional(hints[key])
        child = node._get_node(key) if key in node.keys() else None
        if dataclasses.is_dataclass(inner) and isinstance(child, DictConfig) and not child._is_none():
            _fill_from(child, inner)


def _suggestion(cfg: Any, key: str) -> str:
    parent, _, leaf = key.rpartition(".")
    container = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    keys = [str(k) for k in container.keys()] if isinstance(container, (dict, DictConfig)) else []
    return _did_you_mean(leaf, keys)


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---------------------------------------------------------------- interpolations


def resolve_leaves(cfg: DictConfig) -> tuple[dict, set[str], list[str]]:
    """A plain copy of `cfg` with every interpolation resolved, the keys that were interpolations,
    and the problems of those that do not resolve."""
    problems: list[str] = []
    interpolated: set[str] = set()

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {key: walk(value, f"{path}.{key}" if path else str(key)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value, f"{path}[{i}]") for i, value in enumerate(node)]
        if isinstance(node, str) and "${" in node:
            try:
                value = OmegaConf.select(cfg, path, throw_on_resolution_failure=True, throw_on_missing=False)
            except OmegaConfBaseException as error:
                problems.append(f"{path}: cannot resolve '{node}': {one_line(error)}")
                return node
            interpolated.add(path)
            return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
        return node

    return walk(OmegaConf.to_container(cfg, resolve=False), ""), interpolated, problems


# ---------------------------------------------------------------- schemas


def strip_markers(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip_markers(v) for k, v in node.items() if k != schema.SCHEMA_MARKER}
    if isinstance(node, list):
        return [strip_markers(v) for v in node]
    return node


def schema_problems(node: dict, interpolated: set[str] = frozenset()) -> list[str]:
    name = node.get(schema.SCHEMA_MARKER)
    if name is None:
        return ["config: the recipe does not start from flip's root config (add `- flip` to its defaults)"]
    return check_node(node, schema.SCHEMAS[name], "", interpolated)


def check_node(node: dict, schema_cls: type, path: str, interpolated: set[str] = frozenset()) -> list[str]:
    """Problems of a plain mapping against a dataclass schema: unknown keys, types, missing values.

    Values copied in by interpolation are not checked again: their source key was.
    """
    problems = []
    fields = {f.name: f for f in dataclasses.fields(schema_cls)}
    hints = typing.get_type_hints(schema_cls)
    probe = OmegaConf.structured(schema_cls)
    for key, value in node.items():
        full = f"{path}.{key}" if path else str(key)
        if key == schema.SCHEMA_MARKER:
            continue
        if key not in fields:
            problems.append(f"{full}: unknown key{_did_you_mean(str(key), list(fields))}")
            continue
        if full not in interpolated:
            problems += _check_value(value, hints[key], probe, key, full, interpolated)
    for key, field in fields.items():
        if key not in node and _is_required(field):
            problems.append(f"{_join(path, key)}: missing value")
    return problems


def _check_value(value: Any, hint: Any, probe: DictConfig, key: str, full: str, interpolated: set[str]) -> list[str]:
    inner, optional = _unwrap_optional(hint)
    if value == _MISSING:
        return [f"{full}: missing value"]
    if key in GROUPS and full == key and isinstance(value, dict):  # a config group of the root config
        marker = value.get(schema.SCHEMA_MARKER)
        if marker is None:
            return [f"{full}: option has no schema (its file must extend /schema/{key}/<name>@_here_)"]
        return check_node(value, schema.SCHEMAS[marker], full, interpolated)
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


def _is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING or (
        field.default == _MISSING
    )


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


_TYPE_NAMES: dict[Any, str] = {int: "an int", float: "a float", bool: "a bool (true/false)", str: "a string"}


def describe(hint: Any) -> str:
    """Plain-English name of a schema type: 'a float', 'a list of int', 'one of min, max'."""
    inner, optional = _unwrap_optional(hint)
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


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def one_line(error: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines; keep the first that says something,
    and the first line of its cause (Hydra wraps the OmegaConf error that names the key)."""
    def first(exc: BaseException) -> str:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return lines[0] if lines else type(exc).__name__

    cause = error.__cause__
    return f"{first(error)} {first(cause)}" if cause is not None else first(error)

