"""Partitioners: disjoint, covering, skewed as asked, deterministic by seed."""

import numpy as np
import pytest

from swarmnode.learning.errors import PartitionError, UnknownName
from swarmnode.learning.partition import PartitionSpec, partition, train_val_split

LABELS = np.random.default_rng(0).integers(0, 10, size=6000)
SPECS = [
    PartitionSpec("iid"),
    PartitionSpec("dominant", {"p": 0.9}),
    PartitionSpec("single-class"),
    PartitionSpec("shards"),
    PartitionSpec("dirichlet", {"alpha": 0.3}),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_disjoint_and_covering(spec):
    parts = partition(LABELS, 10, seed=1, spec=spec)
    assert len(parts) == 10
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)), "a sample was given to two clients"
    assert np.array_equal(np.sort(joined), np.arange(len(LABELS))), "some samples were not assigned"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_deterministic_by_seed(spec):
    n = 20  # with 10 clients single-class has nothing left to randomize
    a = partition(LABELS, n, seed=7, spec=spec)
    b = partition(LABELS, n, seed=7, spec=spec)
    c = partition(LABELS, n, seed=8, spec=spec)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def _dominant_fraction(part: np.ndarray) -> float:
    return np.bincount(LABELS[part], minlength=10).max() / len(part)


@pytest.mark.parametrize("p", [0.5, 0.9])
def test_dominant_follows_requested_fraction(p):
    parts = partition(LABELS, 10, seed=1, spec=PartitionSpec("dominant", {"p": p}))
    for i, part in enumerate(parts):
        counts = np.bincount(LABELS[part], minlength=10)
        assert counts.argmax() == i, f"client {i} is dominated by class {counts.argmax()}"
        assert abs(counts[i] / len(part) - p) < 0.05, f"client {i}: {counts[i] / len(part):.3f} vs {p}"


def test_single_class_gives_exactly_one_class():
    parts = partition(LABELS, 20, seed=1, spec=PartitionSpec("single-class"))
    for i, part in enumerate(parts):
        assert set(np.unique(LABELS[part])) == {i % 10}


def test_shards_gives_few_classes_per_client():
    parts = partition(LABELS, 10, seed=1, spec=PartitionSpec("shards"))
    assert max(len(np.unique(LABELS[p])) for p in parts) <= 4


def test_iid_is_balanced():
    parts = partition(LABELS, 10, seed=1, spec=PartitionSpec("iid"))
    assert max(_dominant_fraction(p) for p in parts) < 0.2


def test_dirichlet_small_alpha_is_more_skewed_than_large():
    low = partition(LABELS, 10, seed=1, spec=PartitionSpec("dirichlet", {"alpha": 0.1}))
    high = partition(LABELS, 10, seed=1, spec=PartitionSpec("dirichlet", {"alpha": 100.0}))
    assert np.mean([_dominant_fraction(p) for p in low]) > np.mean([_dominant_fraction(p) for p in high]) + 0.2


def test_bad_parameters_are_typed_errors():
    with pytest.raises(PartitionError, match="p must be in"):
        partition(LABELS, 10, 0, PartitionSpec("dominant", {"p": 1.5}))
    with pytest.raises(PartitionError, match="one client per class"):
        partition(LABELS, 5, 0, PartitionSpec("single-class"))
    with pytest.raises(PartitionError, match="bad parameters"):
        partition(LABELS, 10, 0, PartitionSpec("iid", {"p": 0.3}))
    with pytest.raises(UnknownName, match="zipf"):
        partition(LABELS, 10, 0, PartitionSpec("zipf"))
    with pytest.raises(PartitionError, match="cannot split"):
        partition(LABELS[:3], 10, 0, PartitionSpec("iid"))


def test_train_val_split_is_disjoint_and_sized():
    idx = np.arange(100, 300)
    tr, va = train_val_split(idx, 0.1, seed=3)
    assert len(va) == 20 and len(tr) == 180
    assert not set(tr) & set(va) and set(tr) | set(va) == set(idx)
