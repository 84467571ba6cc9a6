"""The learning task a swarm agrees on in its genesis file: typed, validated, with named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from eth_utils import keccak

from swarmnode.learning.errors import LearningError
from swarmnode.learning.models import MODELS, build_model
from swarmnode.learning.partition import PARTITIONERS, PartitionSpec
from swarmnode.learning.train import TrainConfig


@dataclass(frozen=True)
class Task:
    """Everything every node must agree on to train and aggregate the same way (the genesis [task] table)."""

    dataset: str = "fashion-mnist"
    model: str = "small-cnn"
    num_clients: int = 10
    partition: str = "dominant"
    partition_params: dict[str, Any] = field(default_factory=lambda: {"p": 0.9})
    val_fraction: float = 0.1
    samples_per_client: int = 0  # 0 = the client's whole share
    # robust: capped sample weights, updates bounded at the round's median norm, a sign gate against the
    # coordinate-wise median, centred clipping and server momentum (swarmnode/aggregation/rules.py); on the
    # clean seed experiment it stays within a point of fedavgm (README, "Hostile peers and participants")
    rule: str = "robust"
    rule_params: dict[str, Any] = field(default_factory=lambda: {"server_lr": 1.0, "momentum": 0.9})
    max_update_norm: float = 1000.0
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 32
    local_steps: int = 50
    local_epochs: int = 0
    prox_mu: float = 0.0
    logit_adjust: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise LearningError(f"task.model {self.model!r} unknown; known: {', '.join(MODELS)}")
        if self.partition not in PARTITIONERS:
            raise LearningError(f"task.partition {self.partition!r} unknown; known: {', '.join(PARTITIONERS)}")
        if self.num_clients < 1:
            raise LearningError(f"task.num_clients must be >= 1, got {self.num_clients}")
        self.train_config()  # validates the optimizer settings

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> Task:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise LearningError(f"unknown task keys {unknown}; known: {sorted(known)}")
        return cls(**table)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def train_config(self) -> TrainConfig:
        return TrainConfig(self.optimizer, self.lr, self.momentum, self.weight_decay, self.batch_size,
                           self.local_steps, self.local_epochs, self.prox_mu, self.logit_adjust)

    def partition_spec(self) -> PartitionSpec:
        return PartitionSpec(self.partition, dict(self.partition_params))


TASK_PRESETS: dict[str, dict[str, Any]] = {
    # The seed experiment: Fashion-MNIST, 10 clients each 90% one class.
    "seed": Task().to_dict(),
    # The local demo: 4 nodes, same skew, a subset so a round takes seconds.
    "demo": dataclasses.replace(Task(), num_clients=4, samples_per_client=3000, local_steps=20).to_dict(),
    # Tests: an MLP on a few hundred samples per client.
    "tiny": dataclasses.replace(Task(), model="mlp", num_clients=4, samples_per_client=300, local_steps=5,
                                batch_size=32, lr=0.05).to_dict(),
}


def training_seed(task_seed: int, round_: int, client_index: int) -> int:
    """The local-training seed of one client in one round: a pure function all parties can recompute."""
    digest = keccak(f"swarmnode-train:{task_seed}:{round_}:{client_index}".encode())
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def initial_params(task: Task) -> dict[str, Any]:
    return {n: t.detach().clone() for n, t in build_model(task.model, task.seed).state_dict().items()}


def genesis_model_hash(task: dict[str, Any] | Task) -> bytes:
    """keccak256 of the canonical bytes of the task's initial global model (no server state yet)."""
    from swarmnode.aggregation.codec import GlobalModel, model_hash

    t = task if isinstance(task, Task) else Task.from_dict(task)
    return model_hash(GlobalModel(initial_params(t)))
