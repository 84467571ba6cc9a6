"""In-process swarm simulation: the same training, codec and aggregation code the daemon runs, no network.

`Swarm` holds the clients' data and the global model; `run_round` does one learning round exactly as the
round protocol does (train, quantize, encode, hash, validate, aggregate). The daemon reuses `local_update`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from swarmnode.aggregation.codec import (
    GlobalModel,
    content_id,
    decode_update,
    encode_update,
    model_hash,
    quantize_delta,
)
from swarmnode.aggregation.errors import UpdateRejected
from swarmnode.aggregation.rules import Contribution, RuleSpec, aggregate
from swarmnode.aggregation.validate import validate_update
from swarmnode.learning.data import Dataset, Split, to_float
from swarmnode.learning.evaluate import EvalResult, evaluate, evaluate_module
from swarmnode.learning.models import build_model
from swarmnode.learning.partition import partition, train_val_split
from swarmnode.learning.tasks import Task, initial_params, training_seed
from swarmnode.learning.train import LocalResult, batches, train_local


@dataclass(frozen=True)
class ClientData:
    index: int
    train: Split
    val: Split


@dataclass(frozen=True)
class LocalUpdate:
    """A client's round output: the training result and its canonical encoded update with id."""

    result: LocalResult
    blob: bytes
    update_id: bytes


@dataclass(frozen=True)
class RoundReport:
    round: int
    client_loss: float  # mean over clients of the local training loss (the seed's Table 3)
    client_accuracy: float  # mean over clients of the local training accuracy
    client_val_loss: float  # mean over clients of their local model on their own validation split
    client_val_accuracy: float
    global_test: EvalResult
    model_hash: bytes
    used: int
    excluded: list[tuple[str, str]]
    seconds: float
    train_seconds_per_client: float
    extra: dict[str, float] = field(default_factory=dict)


def build_clients(task: Task, dataset: Dataset) -> list[ClientData]:
    """Partition the training set over `task.num_clients` clients, each with its own train/val split."""
    labels = dataset.train.labels.numpy()
    parts = partition(labels, task.num_clients, task.seed, task.partition_spec())
    clients = []
    for i, idx in enumerate(parts):
        if task.samples_per_client:
            idx = np.sort(np.random.default_rng(task.seed + 1000 + i).permutation(idx)[: task.samples_per_client])
        tr, va = train_val_split(idx, task.val_fraction, task.seed + i)
        clients.append(ClientData(i, dataset.train.subset(torch.from_numpy(tr)), dataset.train.subset(torch.from_numpy(va))))
    return clients


def local_update(task: Task, params: Mapping[str, torch.Tensor], data: Split, round_: int, client_index: int) -> LocalUpdate:
    """Train one client for one round and encode its delta canonically (what it announces and commits)."""
    result = train_local(task.model, params, data, task.train_config(), training_seed(task.seed, round_, client_index))
    blob = encode_update(quantize_delta(result.delta))
    return LocalUpdate(result, blob, content_id(blob))


def contribution_from_blob(blob: bytes, num_samples: int, params: Mapping[str, torch.Tensor], max_norm: float,
                           update_id: bytes | None = None) -> Contribution:
    """Decode and validate an update blob received from anywhere; raises UpdateRejected or MalformedBlob.
    `update_id`: the blob's content id when the caller has already verified the bytes against it."""
    update = decode_update(blob)
    validate_update(update, params, Fraction(str(max_norm)))
    return Contribution(update_id if update_id is not None else content_id(blob), num_samples, update)


class Swarm:
    """N simulated clients sharing one global model, run round by round in this process."""

    def __init__(self, task: Task, dataset: Dataset) -> None:
        self.task = task
        self.dataset = dataset
        self.clients = build_clients(task, dataset)
        self.model = GlobalModel(initial_params(task))
        self.round = 0

    def run_round(self, tamper: Mapping[int, float] | None = None) -> RoundReport:
        """One round; `tamper` maps a client index to a factor its delta is multiplied by (attack studies)."""
        t0 = time.perf_counter()
        contribs, results, vals, excluded = [], [], [], []
        for c in self.clients:
            upd = local_update(self.task, self.model.params, c.train, self.round, c.index)
            if tamper and c.index in tamper:
                scaled = {n: d * tamper[c.index] for n, d in upd.result.delta.items()}
                blob = encode_update(quantize_delta(scaled))
                upd = LocalUpdate(upd.result, blob, content_id(blob))
            results.append(upd.result)
            local = {n: self.model.params[n] + upd.result.delta[n] for n in self.model.params}
            if len(c.val):
                vals.append(evaluate(self.task.model, local, c.val))
            try:
                contribs.append(contribution_from_blob(upd.blob, upd.result.num_samples, self.model.params,
                                                       self.task.max_update_norm))
            except UpdateRejected as exc:
                excluded.append((upd.update_id.hex(), exc.reason))
        train_seconds = (time.perf_counter() - t0) / max(1, len(self.clients))
        self.model, agg = aggregate(RuleSpec(self.task.rule, dict(self.task.rule_params)), self.model, contribs)
        excluded += [(uid.hex(), why) for uid, why in agg.excluded]
        test = evaluate(self.task.model, self.model.params, self.dataset.test)
        report = RoundReport(
            self.round, float(np.mean([r.loss for r in results])), float(np.mean([r.accuracy for r in results])),
            float(np.mean([v.loss for v in vals])) if vals else float("nan"),
            float(np.mean([v.accuracy for v in vals])) if vals else float("nan"), test, model_hash(self.model), len(agg.used), excluded,
            time.perf_counter() - t0, train_seconds,
        )
        self.round += 1
        return report


class Centralized:
    """The baseline: the same model and optimizer trained on the union of the clients' training data."""

    def __init__(self, task: Task, clients: list[ClientData]) -> None:
        self.task = task
        self.data = Split(torch.cat([c.train.images for c in clients]), torch.cat([c.train.labels for c in clients]))
        self.model = build_model(task.model, task.seed)
        cfg = task.train_config()
        self.opt: torch.optim.Optimizer = (
            torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.optimizer == "adam"
            else torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        )
        self.gen = torch.Generator().manual_seed(task.seed)
        self.steps_done = 0

    def train_steps(self, steps: int) -> None:
        self.model.train()
        for idx in batches(len(self.data), self.task.batch_size, steps, self.gen):
            loss = nn.functional.cross_entropy(self.model(to_float(self.data.images[idx])), self.data.labels[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.steps_done += steps

    def evaluate(self, split: Split) -> EvalResult:
        return evaluate_module(self.model, split)
