"""The learning task a swarm agrees on in its genesis file: typed, validated, with named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import keccak

from swarmnode.aggregation.compress import Compression, CompressionError
from swarmnode.learning.data import NUM_CLASSES
from swarmnode.learning.errors import LearningError
from swarmnode.learning.models import (
    ModelSpec,
    ModelSpecError,
    apply_initial_weights,
    build_model,
    check_initial_hash,
    load_initial_weights,
)
from swarmnode.learning.partition import PARTITIONERS, PartitionSpec
from swarmnode.learning.schema import LOCAL_KINDS, Schema, schema_from_dict
from swarmnode.learning.train import TrainConfig

BENCHMARKS = ("fashion-mnist", "mnist")
_OPTIONAL_KEYS = ("model_args", "data", "initial_weights", "initial_weights_sha256", "compression")


@dataclass(frozen=True)
class Task:
    """Everything every node must agree on to train and aggregate the same way (the genesis [task] table)."""

    # "fashion-mnist" / "mnist": the benchmark datasets, partitioned over num_clients (simulation, benchmarks,
    # the demo); "tabular" / "image-folder": each node trains on its own data ([learning] data in its
    # config), which must match the schema pinned in `data` (swarmnode/learning/schema.py)
    dataset: str = "fashion-mnist"
    # a built-in ("small-cnn", "mlp", "federated-net"), "torchvision:<arch>" or "entrypoint:<module>:<factory>",
    # built with `model_args` (swarmnode/learning/models.py); the genesis model hash pins its initial weights
    model: str = "small-cnn"
    model_args: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # the local-data schema ([task.data])
    # optional initial weights: a safetensors file (relative to the genesis file) pinned by its SHA-256
    initial_weights: str = ""
    initial_weights_sha256: str = ""
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
    # how updates travel ([task.compression]: method none | quantize | topk, bits, fraction; see
    # swarmnode/aggregation/compress.py); empty: plain 24-bit fixed point
    compression: dict[str, Any] = field(default_factory=dict)
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
        if self.dataset not in BENCHMARKS + LOCAL_KINDS:
            raise LearningError(f"task.dataset {self.dataset!r} unknown; known: {', '.join(BENCHMARKS + LOCAL_KINDS)}")
        if self.is_local() != bool(self.data):
            raise LearningError(f"task.data: a [task.data] schema is needed with dataset = {self.dataset!r}"
                                if self.is_local() else
                                f"task.data: only for local data (dataset = {' or '.join(LOCAL_KINDS)})")
        try:
            self.model_spec()
        except ModelSpecError as exc:
            raise LearningError(f"task.model: {exc}") from None
        if bool(self.initial_weights) != bool(self.initial_weights_sha256):
            raise LearningError("task.initial_weights and task.initial_weights_sha256 go together: the file is "
                                "pinned by its hash")
        if self.partition not in PARTITIONERS:
            raise LearningError(f"task.partition {self.partition!r} unknown; known: {', '.join(PARTITIONERS)}")
        if self.num_clients < 1:
            raise LearningError(f"task.num_clients must be >= 1, got {self.num_clients}")
        self.train_config()  # validates the optimizer settings
        try:
            self.compression_spec()
        except CompressionError as exc:
            raise LearningError(str(exc)) from None

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> Task:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise LearningError(f"unknown task keys {unknown}; known: {sorted(known)}")
        return cls(**table)

    def to_dict(self) -> dict[str, Any]:
        """The [task] table. The local-data and model-file keys are left out at their defaults, so a
        benchmark task's table (and every genesis written before they existed) stays as it was."""
        table = dataclasses.asdict(self)
        for key in _OPTIONAL_KEYS:
            if not table[key]:
                del table[key]
        return table

    def train_config(self) -> TrainConfig:
        return TrainConfig(self.optimizer, self.lr, self.momentum, self.weight_decay, self.batch_size,
                           self.local_steps, self.local_epochs, self.prox_mu, self.logit_adjust)

    def compression_spec(self) -> Compression:
        return Compression.from_dict(self.compression)

    def partition_spec(self) -> PartitionSpec:
        return PartitionSpec(self.partition, dict(self.partition_params))

    def is_local(self) -> bool:
        """Each node trains on its own data (not a slice of a benchmark dataset)."""
        return self.dataset in LOCAL_KINDS

    def schema(self) -> Schema | None:
        return schema_from_dict(self.dataset, self.data) if self.is_local() else None

    @property
    def num_classes(self) -> int:
        schema = self.schema()
        return schema.num_classes if schema is not None else NUM_CLASSES

    @property
    def input_shape(self) -> tuple[int, ...]:
        schema = self.schema()
        return schema.input_shape if schema is not None else (1, 28, 28)

    def model_spec(self) -> ModelSpec:
        return ModelSpec.of(self.model, self.model_args or None, self.input_shape, self.num_classes)


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


def initial_params(task: Task, base_dir: Path | None = None) -> dict[str, Any]:
    """The initial global model: the model built from the task seed, or the task's pinned safetensors
    weights (`initial_weights`, relative to `base_dir`, the genesis file's directory)."""
    model = build_model(task.model_spec(), task.seed)
    if task.initial_weights:
        path = Path(task.initial_weights)
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        apply_initial_weights(model, load_initial_weights(path, task.initial_weights_sha256))
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def genesis_model_hash(task: dict[str, Any] | Task, base_dir: Path | None = None) -> bytes:
    """keccak256 of the canonical bytes of the task's initial global model (no server state yet)."""
    from swarmnode.aggregation.codec import GlobalModel, model_hash

    t = task if isinstance(task, Task) else Task.from_dict(task)
    return model_hash(GlobalModel(initial_params(t, base_dir)))


def checked_initial_params(task: Task, expected: bytes, base_dir: Path | None = None) -> dict[str, Any]:
    """initial_params, refused (ModelMismatch) unless it hashes to the genesis model hash `expected`: a
    node that would build other initial weights (another torch, other entry-point code, another weights
    file) must not join, or its every update would be computed from a model nobody else has."""
    params = initial_params(task, base_dir)
    check_initial_hash(params, expected)
    return params
