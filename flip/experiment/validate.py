"""Validation that reports every problem in a config at once, one line each, with full keys.

Hydra stops at the first bad key or override, so flip composes the recipe once, untyped (each
schema as plain marked defaults, `catalog.schema_folder`), with the group choices only; applies
the value overrides itself as Hydra would; and checks the result against the schemas of the
catalog, the rules across groups and the `_target_` allow-list (placement and names; objects are
resolved when a component is built). A config with no problem is returned typed, without
composing again.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from flip.config.allowlist import AllowList, entry_problems, target_problems
from flip.config.checks import MISSING_VALUE, check_node, did_you_mean, show, strip_markers, unwrap_optional
from flip.config.schema import SCHEMA_MARKER
from flip.errors import ConfigError
from flip.experiment import compose
from flip.experiment.catalog import GROUPS, SCHEMAS, typed_config
from flip.experiment.rules import rule_problems


# ---------------------------------------------------------------- entry points


def validate(recipe: Path, overrides: list[str]) -> DictConfig:
    """The typed config of `recipe` + `overrides`, or ConfigError listing every problem."""
    cfg, problems = checked(recipe, overrides)
    if problems:
        raise ConfigError(problems, source=recipe.name)
    return cfg


def config_problems(recipe: Path, overrides: list[str]) -> list[str]:
    return checked(recipe, overrides)[1]


def validate_sweep(recipe: Path, overrides: list[str]) -> int:
    """Validate every job of a multirun sweep; returns the number of jobs."""
    parsed, problems = parse_overrides(overrides)
    if problems:
        raise ConfigError(problems, source=recipe.name)
    jobs = sweep_jobs(parsed)
    seen: dict[str, None] = {}
    for job in jobs:
        for problem in checked(recipe, job)[1]:
            seen.setdefault(problem)
    if seen:
        raise ConfigError(list(seen), source=recipe.name)
    return len(jobs)


def sweep_jobs(parsed: list[Override]) -> list[list[str]]:
    """The override lines of each job of a sweep: every combination of the swept values, in
    Hydra's order (the last override varies fastest)."""
    choices = []
    for override in parsed:
        if override.is_sweep_override():
            prefix = override.get_key_element()
            choices.append([f"{prefix}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.product(*choices)]


def checked(recipe: Path, overrides: list[str]) -> tuple[DictConfig | None, list[str]]:
    """(typed config, []) for a valid recipe + overrides, else (None, every problem); composed once."""
    parsed, problems = parse_overrides(overrides)
    options = _options(recipe, [o.key_or_group for o in parsed])
    group_overrides, value_overrides = [], []
    for override in parsed:
        (group_overrides if _is_composition_override(options, override) else value_overrides).append(override)
    problems += _unknown_options(options, group_overrides)
    try:
        composed = compose.compose_recipe(recipe, [o.input_line for o in group_overrides if o.input_line], lenient=True)
    except (HydraException, OmegaConfBaseException) as error:
        return None, [*problems, one_line(error)]
    cfg = OmegaConf.create(fill_defaults(OmegaConf.to_container(composed, resolve=False)))
    problems += _apply_value_overrides(cfg, value_overrides)
    resolved, interpolated, resolve_errors = resolve_leaves(cfg)
    problems += resolve_errors + schema_problems(resolved, interpolated)
    problems += rule_problems(OmegaConf.create(strip_markers(resolved)))
    allowed = resolved.get("allowed_targets")
    problems += entry_problems(allowed, "allowed_targets")
    problems += target_problems(strip_markers(resolved), AllowList.of(allowed if isinstance(allowed, list) else ()))
    if problems:
        return None, problems
    return typed_config(OmegaConf.to_container(cfg, resolve=False)), []


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
    """Apply value overrides as Hydra does (struct mode on, so it rejects what Hydra would), each
    problem reported instead of the first raised."""
    problems = []
    OmegaConf.set_struct(cfg, True)
    for override in overrides:
        key, line, value = override.key_or_group, override.input_line, override.value()
        exists = _exists(cfg, key)
        if override.is_delete():
            if not exists:
                problems.append(f"{key}: cannot delete a key that is not set (override '{line}')")
            else:
                parent, _, leaf = key.rpartition(".")
                with open_dict(cfg):
                    del (OmegaConf.select(cfg, parent) if parent else cfg)[leaf]
            continue
        if override.is_add() and exists and not isinstance(value, (dict, list)):
            problems.append(f"{key}: already set; use '++{line.lstrip('+')}' to replace it")
            continue
        if not exists and not override.is_add() and not override.is_force_add():
            problems.append(f"{key}: unknown key{_suggestion(cfg, key)} (override '{line}')")
            continue
        try:
            OmegaConf.update(cfg, key, value, merge=True, force_add=override.is_add() or override.is_force_add())
        except OmegaConfBaseException as error:
            problems.append(f"{key}: cannot merge {show(value)} into it ({one_line(error)}); use '++{line.lstrip('+')}' to replace it")
    OmegaConf.set_struct(cfg, False)
    return problems


def _exists(cfg: DictConfig, key: str) -> bool:
    """Whether `key` is set, a `???` value included (OmegaConf's `in` says no to those)."""
    parent, _, leaf = key.rpartition(".")
    container = OmegaConf.select(cfg, parent, default=None, throw_on_missing=False) if parent else cfg
    return isinstance(container, DictConfig) and leaf in container.keys()


def fill_defaults(node: Any) -> Any:
    """Give each marked node's nested schemas their defaults (a recipe may set a nested mapping
    partly, as `data.synthetic: {num_sites: 4}`), as Hydra's typed composition does."""
    if isinstance(node, dict):
        marker = node.get(SCHEMA_MARKER)
        if marker in SCHEMAS:
            _fill_from(node, SCHEMAS[marker])
        for value in node.values():
            fill_defaults(value)
    elif isinstance(node, list):
        for value in node:
            fill_defaults(value)
    return node


def _fill_from(node: dict, schema_cls: type) -> None:
    defaults = OmegaConf.to_container(OmegaConf.structured(schema_cls), resolve=False, enum_to_str=True)
    hints = typing.get_type_hints(schema_cls)
    for key, value in defaults.items():
        if key not in node and value != MISSING_VALUE:
            node[key] = value
        inner, _ = unwrap_optional(hints[key])
        if dataclasses.is_dataclass(inner) and isinstance(node.get(key), dict):
            _fill_from(node[key], inner)


def _suggestion(cfg: Any, key: str) -> str:
    parent, _, leaf = key.rpartition(".")
    container = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    keys = [str(k) for k in container.keys()] if isinstance(container, (dict, DictConfig)) else []
    return did_you_mean(leaf, keys)


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


def schema_problems(node: dict, interpolated: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Every key of a composed config (plain, markers in) against its schema."""
    if node.get(SCHEMA_MARKER) != "root":
        return ["config: the recipe does not start from flip's root config (add `- flip` to its defaults)"]
    problems = [
        f"{group}: option has no schema (its file must extend /schema/{group}/<name>@_here_)"
        for group in sorted(GROUPS)
        if isinstance(node.get(group), dict) and SCHEMA_MARKER not in node[group]
    ]
    return problems + check_node(node, SCHEMAS["root"], "", interpolated, SCHEMAS)


def one_line(error: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines; keep the first that says something,
    and the first line of its cause (Hydra wraps the OmegaConf error that names the key)."""
    def first(exc: BaseException) -> str:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return lines[0] if lines else type(exc).__name__

    cause = error.__cause__
    return f"{first(error)} {first(cause)}" if cause is not None else first(error)

