"""The benchmark workload as the Flower side runs it: swarmnode's own task, data, partition, local training
and evaluation code (imported through PYTHONPATH), so that Flower trains exactly what the swarm trains.

The workload file is written by scripts/bench_vs_flower.py from the same genesis the swarm's daemons run:
its `task` table, its `max_samples` bound and its genesis model hash. Everything here is cached per
process: a Flower simulation keeps its client processes (Ray actors) for the whole run and loads the data
once in each; Flower's deployment mode starts a new ClientApp process for every message, which then
loads it again (that cost is Flower's, and part of what the benchmark measures).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from swarmnode.aggregation.codec import model_hash
from swarmnode.experiment import ClientData, build_clients
from swarmnode.learning.data import Dataset, load_dataset
from swarmnode.learning.evaluate import evaluate
from swarmnode.learning.tasks import Task, initial_params, training_seed
from swarmnode.learning.train import train_local


class WorkloadError(Exception):
    """The workload file is missing, malformed, or describes another model than the genesis pins."""


@dataclass(frozen=True)
class Workload:
    task: Task
    participants: int
    rounds: int
    max_samples: int
    genesis_model_hash: str  # 0x-hex: the swarm's round-0 model, which the Flower side must start from
    torch_threads: int
    dataset_dir: str | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Workload:
        try:
            task = Task.from_dict(dict(d["task"]))
            return cls(task, int(d["participants"]), int(d["rounds"]), int(d["max_samples"]),
                       str(d["genesis_model_hash"]), int(d.get("torch_threads", 1)), d.get("dataset_dir"))
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkloadError(f"workload: {type(exc).__name__}: {exc}") from None


@functools.cache
def load(path: str) -> Workload:
    """The workload at `path`, with torch set to its thread count (a swarmnode daemon trains on one)."""
    if not path:
        raise WorkloadError("the run config has no `workload` path (bench_vs_flower.py passes it)")
    try:
        w = Workload.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        raise WorkloadError(f"cannot read the workload {path}: {exc}") from None
    torch.set_num_threads(w.torch_threads)
    return w


@functools.cache
def _dataset(name: str, data_dir: str | None) -> Dataset:
    return load_dataset(name, data_dir or os.environ.get("SWARMNODE_DATA"))


@functools.cache
def clients(path: str) -> tuple[ClientData, ...]:
    """Every participant's train and held-out split: swarmnode's partition of the training set, as each
    daemon builds it (swarmnode/node/node.py: build_clients over the whole dataset)."""
    w = load(path)
    return tuple(build_clients(w.task, _dataset(w.task.dataset, w.dataset_dir)))


def initial_model(path: str) -> dict[str, torch.Tensor]:
    """The task's initial global model, checked against the genesis model hash the swarm starts from."""
    w = load(path)
    params = initial_params(w.task)
    got = "0x" + model_hash(params).hex()
    if got != w.genesis_model_hash:
        raise WorkloadError(f"the initial model hashes to {got}, the genesis pins {w.genesis_model_hash}: "
                            "the two sides would not start from the same model")
    return params


@dataclass(frozen=True)
class ClientRound:
    """What one participant reports after a round: its new local model and the figures a daemon commits."""

    local: dict[str, torch.Tensor]
    num_samples: int
    train_loss: float
    train_accuracy: float
    held_out_accuracy: float


def client_round(path: str, index: int, round_: int, params: dict[str, torch.Tensor]) -> ClientRound:
    """One participant's round (`round_` counts from 0, as the swarm's do), exactly as a daemon does it:
    score the base model on its held-out rows, train with the seed swarmnode derives for (round, client),
    and report its training split's size capped at the genesis max_samples."""
    w = load(path)
    data = clients(path)[index]
    held = evaluate(w.task.model_spec(), params, data.val)
    res = train_local(w.task.model_spec(), params, data.train, w.task.train_config(),
                      training_seed(w.task.seed, round_, index))
    local = {n: params[n] + res.delta[n] for n in params}
    return ClientRound(local, min(res.num_samples, w.max_samples), res.loss, res.accuracy, held.accuracy)
