"""Partitioners: pure functions from labels to per-client index arrays, deterministic by seed.

Every partitioner takes the label array of the data to split (indices refer to positions in it),
the number of clients and a seed, and returns one sorted int64 array per client. The arrays are
disjoint and together cover every index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from swarmnode.learning.errors import PartitionError, UnknownName

Partition = list[np.ndarray]


def _check(labels: np.ndarray, num_clients: int) -> None:
    if num_clients < 1:
        raise PartitionError(f"num_clients must be >= 1, got {num_clients}")
    if len(labels) < num_clients:
        raise PartitionError(f"cannot split {len(labels)} samples over {num_clients} clients")


def _finish(parts: Sequence[Sequence[int] | np.ndarray]) -> Partition:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def iid(labels: np.ndarray, num_clients: int, seed: int) -> Partition:
    """Uniformly random, equal-sized shares."""
    _check(labels, num_clients)
    perm = np.random.default_rng(seed).permutation(len(labels))
    return _finish(np.array_split(perm, num_clients))


def _class_pools(labels: np.ndarray, rng: np.random.Generator) -> dict[int, list[int]]:
    return {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)}


def _split_by_weights(pool: np.ndarray, weights: np.ndarray) -> list[np.ndarray]:
    """Cut `pool` into len(weights) consecutive pieces sized in proportion (largest remainder)."""
    exact = weights / weights.sum() * len(pool)
    sizes = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - sizes), kind="stable")[: len(pool) - sizes.sum()]:
        sizes[i] += 1
    return np.split(pool, np.cumsum(sizes)[:-1])


def dominant(labels: np.ndarray, num_clients: int, seed: int, p: float = 0.9) -> Partition:
    """Client i holds a fraction p of class (i mod C); the rest is spread evenly over the other classes.

    This is the seed paper's setup. Every class is dealt out whole, in proportion to how much of it each
    client should hold (p for its dominant class, (1 - p) / (C - 1) for each other), so the partition
    covers the data and the skew holds even when class sizes differ.
    """
    _check(labels, num_clients)
    if not 0.0 <= p <= 1.0:
        raise PartitionError(f"dominant fraction p must be in [0, 1], got {p}")
    rng = np.random.default_rng(seed)
    pools = _class_pools(labels, rng)
    classes = sorted(pools)
    if len(classes) < 2:
        raise PartitionError("dominant needs at least two classes")
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for c in classes:
        weights = np.array([p if classes[i % len(classes)] == c else (1.0 - p) / (len(classes) - 1)
                            for i in range(num_clients)])
        if weights.sum() == 0:  # p == 1 and no client is dominated by c
            weights = np.ones(num_clients)
        for i, piece in enumerate(_split_by_weights(np.asarray(pools[c], dtype=np.int64), weights)):
            parts[i].extend(piece.tolist())
    return _finish(parts)


def single_class(labels: np.ndarray, num_clients: int, seed: int) -> Partition:
    """Each client holds exactly one class (#C=1); clients sharing a class split it evenly."""
    _check(labels, num_clients)
    rng = np.random.default_rng(seed)
    pools = _class_pools(labels, rng)
    classes = sorted(pools)
    if num_clients < len(classes):
        raise PartitionError(
            f"single-class needs at least one client per class: {num_clients} clients < {len(classes)} classes"
        )
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for c in classes:
        owners = [i for i in range(num_clients) if i % len(classes) == classes.index(c)]
        for owner, chunk in zip(owners, np.array_split(np.asarray(pools[c]), len(owners)), strict=True):
            parts[owner].extend(chunk.tolist())
    return _finish(parts)


def shards(labels: np.ndarray, num_clients: int, seed: int, shards_per_client: int = 2) -> Partition:
    """Sort by label, cut into equal shards, deal `shards_per_client` random shards to each client."""
    _check(labels, num_clients)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    by_label = perm[np.argsort(labels[perm], kind="stable")]
    pieces = np.array_split(by_label, num_clients * shards_per_client)
    order = rng.permutation(len(pieces))
    return _finish(
        [np.concatenate([pieces[k] for k in order[i::num_clients]]) for i in range(num_clients)]
    )


def dirichlet(labels: np.ndarray, num_clients: int, seed: int, alpha: float = 0.5, min_size: int = 10) -> Partition:
    """Per class, split its samples over clients in proportions drawn from Dirichlet(alpha)."""
    _check(labels, num_clients)
    if alpha <= 0:
        raise PartitionError(f"dirichlet alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    pools = _class_pools(labels, rng)
    min_size = min(min_size, len(labels) // num_clients)
    for _attempt in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in sorted(pools):
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * len(pools[c])).astype(np.int64)
            for i, chunk in enumerate(np.split(np.asarray(pools[c]), cuts)):
                parts[i].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return _finish(parts)
    raise PartitionError(f"dirichlet(alpha={alpha}) could not give every client {min_size} samples")


@dataclass(frozen=True)
class PartitionSpec:
    """A partitioner by name with its parameters, e.g. PartitionSpec("dominant", {"p": 0.9})."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


PARTITIONERS: dict[str, Callable[..., Partition]] = {
    "iid": iid,
    "dominant": dominant,
    "single-class": single_class,
    "shards": shards,
    "dirichlet": dirichlet,
}


def partition(labels: np.ndarray, num_clients: int, seed: int, spec: PartitionSpec) -> Partition:
    try:
        fn = PARTITIONERS[spec.name]
    except KeyError:
        raise UnknownName(f"unknown partition {spec.name!r}; known: {', '.join(PARTITIONERS)}") from None
    try:
        return fn(np.asarray(labels), num_clients, seed, **spec.params)
    except TypeError as exc:
        raise PartitionError(f"bad parameters {spec.params} for partition {spec.name!r}: {exc}") from None


def train_val_split(indices: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's indices into its own train and validation sets."""
    if not 0.0 <= val_fraction < 1.0:
        raise PartitionError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(indices)
    n_val = int(round(len(indices) * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
