"""Checks the mechanisms' rules share."""

from __future__ import annotations

from typing import Any, Iterable, Iterator


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_problems(privacy: dict[str, Any], keys: Iterable[str]) -> Iterator[str]:
    """Each of `keys` that is set to a number at or below 0."""
    for key in keys:
        value = privacy.get(key)
        if is_number(value) and value <= 0:
            yield f"privacy.{key}: must be positive, got {value}"
