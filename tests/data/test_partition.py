"""Partitioning one data set into simulated sites: coverage, determinism, skew and errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from flip.data.partition import describe_partitions, partition_indices, partition_names

NUM_CLASSES = 10
LABELS = [i % NUM_CLASSES for i in range(1000)]
SITES = ["Royal Free", "Guy's", "St Thomas'"]
GROUPS = [SITES[i % 3] for i in range(len(LABELS))]
RANDOM_KINDS = ("iid", "dirichlet", "quantity")


def split(kind: str, num_partitions: int = 3, **kwargs) -> list[list[int]]:
    """Partition LABELS (and GROUPS) with defaults suited to every kind."""
    kwargs.setdefault("seed", 0)
    return partition_indices(kind, labels=LABELS, num_partitions=num_partitions, groups=GROUPS, **kwargs)


def mean_label_skew(parts: list[list[int]]) -> float:
    """Mean total-variation distance between each partition's label distribution and the global one."""
    overall = np.bincount(LABELS, minlength=NUM_CLASSES) / len(LABELS)
    distances = []
    for part in parts:
        local = np.bincount([LABELS[i] for i in part], minlength=NUM_CLASSES) / len(part)
        distances.append(0.5 * np.abs(local - overall).sum())
    return float(np.mean(distances))


@pytest.mark.parametrize("kind", [*RANDOM_KINDS, "by_site"])
def test_partitions_are_sorted_disjoint_and_cover_every_item(kind: str) -> None:
    parts = split(kind)
    assert len(parts) == 3
    assert all(part == sorted(part) for part in parts)
    assert sorted(i for part in parts for i in part) == list(range(len(LABELS)))


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_same_arguments_give_identical_output_and_another_seed_differs(kind: str) -> None:
    assert split(kind, 5, seed=7) == split(kind, 5, seed=7)
    assert split(kind, 5, seed=7) != split(kind, 5, seed=8)


def test_iid_parts_are_near_equal() -> None:
    sizes = [len(part) for part in split("iid", 7)]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_small_alpha_skews_labels_far_more_than_large_alpha() -> None:
    skewed = mean_label_skew(split("dirichlet", 10, alpha=0.1))
    uniform = mean_label_skew(split("dirichlet", 10, alpha=100))
    assert skewed > 0.4
    assert uniform < 0.1


def test_quantity_small_alpha_gives_unequal_sizes() -> None:
    sizes = [len(part) for part in split("quantity", 10, alpha=0.1)]
    assert max(sizes) > 5 * min(sizes)


@pytest.mark.parametrize("kind", ["dirichlet", "quantity"])
def test_min_size_is_respected(kind: str) -> None:
    for seed in range(5):
        parts = split(kind, 20, alpha=0.1, min_size=10, seed=seed)
        assert min(len(part) for part in parts) >= 10


def test_by_site_follows_groups_in_sorted_order() -> None:
    parts = split("by_site")
    assert partition_names("by_site", 3, GROUPS) == ["Guy's", "Royal Free", "St Thomas'"]
    assert [{GROUPS[i] for i in part} for part in parts] == [{"Guy's"}, {"Royal Free"}, {"St Thomas'"}]


def test_names_of_random_kinds_are_numbered_sites() -> None:
    assert partition_names("dirichlet", 3) == ["site-1", "site-2", "site-3"]


def test_describe_counts_sizes_and_labels() -> None:
    labels = [2, 0, 2, 1, 0]
    assert describe_partitions([[0, 2, 3], [1, 4], []], labels) == [
        {"size": 3, "labels": {1: 1, 2: 2}},
        {"size": 2, "labels": {0: 2}},
        {"size": 0, "labels": {}},
    ]


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        ("random", {}, "unknown partition kind 'random'; valid kinds: iid, dirichlet, quantity, by_site"),
        ("iid", {"num_partitions": 0}, "num_partitions must be at least 1, got 0"),
        ("dirichlet", {"alpha": 0.0}, "dirichlet partition: alpha must be positive, got 0.0"),
        ("quantity", {"alpha": -1.0}, "quantity partition: alpha must be positive, got -1.0"),
        ("by_site", {"groups": None}, "by_site partition needs groups: one site name per item"),
        ("by_site", {"groups": ["a", "b"]}, "groups has 2 entries but labels has 5; give one group per item"),
        (
            "by_site",
            {"groups": ["b", "a", "b", "c", "a"], "num_partitions": 2},
            "by_site partition: num_partitions is 2 but groups name 3 distinct sites: a, b, c",
        ),
        (
            "dirichlet",
            {"num_partitions": 8},
            "dirichlet partition: cannot give every one of 8 partitions at least 1 items from 5 items "
            "(alpha=0.5); lower num_partitions or raise alpha",
        ),
        (
            "quantity",
            {"num_partitions": 2, "min_size": 3},
            "quantity partition: cannot give every one of 2 partitions at least 3 items from 5 items; "
            "lower num_partitions or min_size",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(kind: str, kwargs: dict, message: str) -> None:
    arguments = {"labels": [0, 1, 0, 1, 1], "num_partitions": 3, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        partition_indices(kind, **arguments)


def test_dirichlet_gives_up_when_min_size_is_never_met() -> None:
    labels = [0] * 20
    with pytest.raises(ValueError, match=r"^dirichlet partition: cannot give every one of 4 partitions"):
        partition_indices("dirichlet", labels=labels, num_partitions=4, seed=0, alpha=0.01, min_size=5)


def test_partition_names_checks_kind_and_groups() -> None:
    with pytest.raises(ValueError, match=r"^unknown partition kind 'x'"):
        partition_names("x", 2)
    with pytest.raises(ValueError, match=r"^by_site partition: num_partitions is 1 but groups name 2"):
        partition_names("by_site", 1, ["a", "b"])
