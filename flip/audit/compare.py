"""`flip audit diff`: what differs between two runs, from their run directories alone.

Config key by key (the resolved configs the manifests hold), overrides, environment, each
site's data fingerprint and counts, and the final and best metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flip.audit.run_directory import read_summary
from flip.audit.verify import load_manifest
from flip.errors import FlipError

MISSING = "(absent)"


@dataclass
class Difference:
    section: str  # config, overrides, environment, data, metrics, models
    key: str
    a: Any
    b: Any


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {dotted.key: leaf}; lists are leaves."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, full))
        else:
            flat[full] = value
    return flat


def _differences(section: str, a: dict[str, Any], b: dict[str, Any]) -> list[Difference]:
    return [
        Difference(section, key, a.get(key, MISSING), b.get(key, MISSING))
        for key in sorted(set(a) | set(b))
        if a.get(key, MISSING) != b.get(key, MISSING)
    ]


def _environment(manifest: dict[str, Any]) -> dict[str, Any]:
    facts = {"flip_version": manifest.get("flip_version"), "git": manifest.get("git")}
    facts.update(flatten(manifest.get("environment") or {}))
    facts.update({f"distribution.{name}": version for name, version in (manifest.get("distributions") or {}).items()})
    return flatten(facts)


def _data(manifest: dict[str, Any]) -> dict[str, Any]:
    return flatten({site: record for site, record in (manifest.get("data") or {}).items()})


def _metrics(run_dir: Path) -> dict[str, Any]:
    try:
        summary = read_summary(run_dir)
    except FlipError:
        return {}
    return flatten({"final": summary.get("metrics") or {}, "best": summary.get("best_metrics") or {}})


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[Difference]:
    return _differences("config", flatten(a.get("config") or {}), flatten(b.get("config") or {}))


def environment_differences(a: dict[str, Any], b: dict[str, Any]) -> list[Difference]:
    return _differences("environment", _environment(a), _environment(b))


def data_differences(a: dict[str, Any], b: dict[str, Any]) -> list[Difference]:
    return _differences("data", _data(a), _data(b))


def diff_runs(run_a: Path, run_b: Path) -> list[Difference]:
    """Every difference between two run directories, section by section."""
    a, b = load_manifest(Path(run_a)), load_manifest(Path(run_b))
    overrides = _differences("overrides", _split(a.get("overrides") or []), _split(b.get("overrides") or []))
    models = _differences("models", {"final": a.get("model_sha256")}, {"final": b.get("model_sha256")})
    return [
        *config_differences(a, b),
        *overrides,
        *environment_differences(a, b),
        *data_differences(a, b),
        *_differences("metrics", _metrics(Path(run_a)), _metrics(Path(run_b))),
        *models,
    ]


def _split(overrides: list[str]) -> dict[str, str]:
    pairs = (str(item).partition("=") for item in overrides)
    return {key.lstrip("+~"): value for key, _, value in pairs}
