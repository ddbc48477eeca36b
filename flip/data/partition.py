"""Split one data set into N simulated sites, deterministically from a seed (simulation only: a
real site reads its own data whole).

Kinds:
    iid        shuffle, then deal into near-equal parts.
    dirichlet  label skew: each class is spread over the sites by Dirichlet(alpha) proportions.
    quantity   size skew: site sizes follow Dirichlet(alpha) proportions.
    by_site    one site per distinct value of ``groups`` (e.g. InstitutionName), in natural order.

Smaller ``alpha`` means stronger skew; the same arguments always give the same partitions.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

KINDS = ("iid", "dirichlet", "quantity", "by_site")
MAX_DIRICHLET_ATTEMPTS = 100


def natural_key(name: str) -> list:
    """Sort key that puts site-2 before site-10: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def partition_indices(
    kind: str,
    *,
    labels: Sequence[int],
    num_partitions: int,
    seed: int,
    alpha: float = 0.5,
    groups: Sequence[str] | None = None,
    min_size: int = 1,
) -> list[list[int]]:
    """Item indices of each of ``num_partitions`` partitions, each sorted ascending and disjoint."""
    _check_arguments(kind, num_partitions, alpha, groups, len(labels))
    rng = np.random.default_rng(seed)
    if kind == "iid":
        parts = _iid(len(labels), num_partitions, rng)
    elif kind == "dirichlet":
        parts = _dirichlet(np.asarray(labels), num_partitions, alpha, min_size, rng)
    elif kind == "quantity":
        parts = _quantity(len(labels), num_partitions, alpha, min_size, rng)
    else:
        parts = _by_site(groups, num_partitions)
    return [sorted(int(i) for i in part) for part in parts]


def partition_names(kind: str, num_partitions: int, groups: Sequence[str] | None = None) -> list[str]:
    """Site names: the distinct groups in natural order for ``by_site``, else ``site-1`` .. ``site-N``."""
    _check_kind(kind)
    _check_num_partitions(num_partitions)
    if kind == "by_site":
        return _site_names(groups, num_partitions)
    return [f"site-{i}" for i in range(1, num_partitions + 1)]


def describe_partitions(parts: list[list[int]], labels: Sequence[int]) -> list[dict]:
    """Per partition its size and label counts: ``{"size": n, "labels": {label: count}}``."""
    return [_describe(part, labels) for part in parts]


def _describe(part: list[int], labels: Sequence[int]) -> dict:
    """Size and sorted label counts of one partition."""
    counts = Counter(int(labels[i]) for i in part)
    return {"size": len(part), "labels": dict(sorted(counts.items()))}


def _check_arguments(
    kind: str, num_partitions: int, alpha: float, groups: Sequence[str] | None, num_items: int
) -> None:
    """Raise ValueError on an unknown kind or arguments that do not fit it."""
    _check_kind(kind)
    _check_num_partitions(num_partitions)
    if kind in ("dirichlet", "quantity") and alpha <= 0:
        raise ValueError(f"{kind} partition: alpha must be positive, got {alpha}")
    if groups is not None and len(groups) != num_items:
        raise ValueError(
            f"groups has {len(groups)} entries but labels has {num_items}; give one group per item"
        )


def _check_kind(kind: str) -> None:
    """Raise ValueError unless ``kind`` is one of KINDS."""
    if kind not in KINDS:
        raise ValueError(f"unknown partition kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def _check_num_partitions(num_partitions: int) -> None:
    """Raise ValueError unless there is at least one partition."""
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be at least 1, got {num_partitions}")


def _iid(num_items: int, num_partitions: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle all items and deal them into near-equal parts."""
    return np.array_split(rng.permutation(num_items), num_partitions)


def _dirichlet(
    labels: np.ndarray, num_partitions: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label skew, resampled until every partition holds at least ``min_size`` items."""
    if len(labels) >= num_partitions * min_size:
        for _ in range(MAX_DIRICHLET_ATTEMPTS):
            parts = _dirichlet_attempt(labels, num_partitions, alpha, rng)
            if min(len(part) for part in parts) >= min_size:
                return parts
    raise ValueError(
        f"dirichlet partition: cannot give every one of {num_partitions} partitions at least "
        f"{min_size} items from {len(labels)} items (alpha={alpha}); lower num_partitions or raise alpha"
    )


def _dirichlet_attempt(
    labels: np.ndarray, num_partitions: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """One draw: each class's shuffled items cut by its own Dirichlet proportions."""
    shares: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
    for label in np.unique(labels):
        items = rng.permutation(np.flatnonzero(labels == label))
        proportions = rng.dirichlet(np.full(num_partitions, alpha))
        for part, share in zip(shares, np.split(items, _cut_points(proportions, len(items)))):
            part.append(share)
    return [np.concatenate(part) if part else np.array([], dtype=int) for part in shares]


def _quantity(
    num_items: int, num_partitions: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Size skew: ``min_size`` items each, the rest split by Dirichlet proportions."""
    spare = num_items - num_partitions * min_size
    if spare < 0:
        raise ValueError(
            f"quantity partition: cannot give every one of {num_partitions} partitions at least "
            f"{min_size} items from {num_items} items; lower num_partitions or min_size"
        )
    proportions = rng.dirichlet(np.full(num_partitions, alpha))
    extra_sizes = np.diff(_cut_points(proportions, spare), prepend=0, append=spare)
    return np.split(rng.permutation(num_items), np.cumsum(extra_sizes + min_size)[:-1])


def _cut_points(proportions: np.ndarray, total: int) -> np.ndarray:
    """The inner cut points that split ``total`` items by ``proportions``."""
    return np.round(np.cumsum(proportions)[:-1] * total).astype(int)


def _by_site(groups: Sequence[str] | None, num_partitions: int) -> list[list[int]]:
    """One partition per distinct group value, in natural order."""
    sites = _site_names(groups, num_partitions)
    members: dict[str, list[int]] = {site: [] for site in sites}
    for index, group in enumerate(groups):
        members[group].append(index)
    return [members[site] for site in sites]


def _site_names(groups: Sequence[str] | None, num_partitions: int) -> list[str]:
    """Distinct groups in natural order, checked to number exactly ``num_partitions``."""
    if groups is None:
        raise ValueError("by_site partition needs groups: one site name per item")
    sites = sorted(set(groups), key=natural_key)
    if len(sites) != num_partitions:
        raise ValueError(
            f"by_site partition: num_partitions is {num_partitions} but groups name "
            f"{len(sites)} distinct sites: {', '.join(sites)}"
        )
    return sites


def site_share(items: Sequence[Any], partition: Mapping[str, Any]) -> tuple[list[Any], str]:
    """A simulated site's items of a pooled data set, and its name: the items its `by_site` group
    names, or its part of an iid, dirichlet or quantity split of the patients (so no patient is at
    two sites). Items need `.patient`, `.label` and `.group`.
    """
    if partition["kind"] == "by_site":
        return [item for item in items if item.group == partition["group"]], partition["group"]
    by_patient: dict[str, list[Any]] = defaultdict(list)
    for item in items:
        by_patient[item.patient].append(item)
    patients = sorted(by_patient)
    parts = partition_indices(
        partition["kind"],
        labels=[max(item.label for item in by_patient[p]) for p in patients],
        num_partitions=partition["num_partitions"],
        seed=partition["seed"],
        alpha=partition.get("alpha", 0.5),
        min_size=partition.get("min_size", 1),
    )
    name = partition_names(partition["kind"], partition["num_partitions"])[partition["index"]]
    return [item for i in parts[partition["index"]] for item in by_patient[patients[i]]], name
