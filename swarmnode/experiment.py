"""In-process swarm simulation: the same training, codec and aggregation code the daemon runs, no network.

`Swarm` holds the clients' data and the global model; `run_round` does one learning round exactly as the
round protocol does (train, quantize, encode, hash, validate, aggregate). The daemon reuses `local_update`.

With an `Adversary` (swarmnode.adversary) some clients are Byzantine: they may train on transformed
labels, and each round their attack decides the hash they commit, the samples they report and the bytes
they serve. The round then goes through a model of the protocol's checks (`include_commits`): the
contract refuses a hash already committed in the round and a zero sample count, and data availability
keeps a commit whose blob nobody can fetch out of every block; included blobs go through the same decode
and validation as in the daemon, so malformed, wrong-shape or absurd-norm updates are excluded with a reason.

With a `PrivacyConfig` whose dp is on, every client applies differential privacy as a daemon does
(`local_update`, swarmnode.privacy.dp): participant mode clips and noises the delta before quantization,
example mode trains with DP-SGD; the noise comes from a private generator, so such runs do not repeat.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from swarmnode.aggregation.codec import (
    GlobalModel,
    content_id,
    encode_update,
    model_hash,
    quantize_delta,
)
from swarmnode.aggregation.compress import Compression, compress_delta, compression_seed, decode_for
from swarmnode.aggregation.errors import AggregationError, NonFiniteValue
from swarmnode.aggregation.rules import Contribution, RuleSpec, aggregate
from swarmnode.aggregation.validate import validate_update
from swarmnode.learning.data import Dataset, Split, inputs
from swarmnode.learning.evaluate import EvalResult, evaluate, evaluate_module
from swarmnode.learning.models import build_model
from swarmnode.learning.optim import local_optimizer
from swarmnode.learning.partition import partition, train_val_split
from swarmnode.learning.tasks import Task, initial_params, training_seed
from swarmnode.learning.train import LocalResult, batches, train_local
from swarmnode.privacy.config import PrivacyConfig
from swarmnode.privacy.dp import DPNoise, NonFiniteUpdate, clip_and_noise, dp_noise_for, private_generator

if TYPE_CHECKING:
    from consensus.genesis import Genesis
    from swarmnode.adversary.attacks import Adversary, Submission

MAX_REPORTED = (1 << 64) - 1  # SwarmRounds.commitUpdate refuses zero and numSamples above the genesis max_samples


@dataclass(frozen=True)
class ClientData:
    index: int
    train: Split
    val: Split


@dataclass(frozen=True)
class LocalUpdate:
    """A client's round output: the training result and its canonical encoded update with id; with DP on,
    the noise applied and (participant mode) the pre-clip norm, which is private and never published."""

    result: LocalResult
    blob: bytes
    update_id: bytes
    dp: DPNoise | None = None
    pre_clip_norm: float | None = None
    # top-k compression: what this update left unsent, added to the client's next one (error feedback)
    residual: dict[str, torch.Tensor] | None = None


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
    update_bytes: tuple[int, ...] = ()  # the size of each update blob trained this round (what a node sends)


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


def local_update(task: Task, params: Mapping[str, torch.Tensor], data: Split, round_: int, client_index: int,
                 device: str = "cpu", privacy: PrivacyConfig | None = None, generator: torch.Generator | None = None,
                 min_participants: int | None = None,
                 residual: Mapping[str, torch.Tensor] | None = None) -> LocalUpdate:
    """Train one client for one round and encode its delta canonically (what it announces and commits).

    With `privacy` on, the update is differentially private (dp_noise_for(privacy, task, len(data),
    min_participants=...)): participant mode clips and noises the delta before quantization, example mode
    trains with DP-SGD. `generator` is the node's private_generator() (a fresh one when None), never seeded
    from the task or the chain. A diverged update raises NonFiniteValue in every mode. With the task's
    compression on, the blob is compressed; `residual` is the client's error feedback from its last top-k
    update (LocalUpdate.residual)."""
    if privacy is None or not privacy.dp_on:
        result = train_local(task.model_spec(), params, data, task.train_config(),
                             training_seed(task.seed, round_, client_index), device)
        blob, left = encode_delta(task, result.delta, round_, client_index, residual)
        return LocalUpdate(result, blob, content_id(blob), residual=left)
    noise = dp_noise_for(privacy, task, len(data), min_participants=min_participants)
    gen = generator if generator is not None else private_generator()
    seed, pre_clip = training_seed(task.seed, round_, client_index), None
    try:
        if noise.mode == "example":
            result = train_local(task.model_spec(), params, data, task.train_config(), seed, device, noise.dpsgd(gen))
        else:
            result = train_local(task.model_spec(), params, data, task.train_config(), seed, device)
            delta, pre_clip = clip_and_noise(result.delta, noise.clip_norm, noise.noise_std, gen)
            result = dataclasses.replace(result, delta=delta)
    except NonFiniteUpdate as exc:
        raise NonFiniteValue(str(exc)) from exc
    blob, left = encode_delta(task, result.delta, round_, client_index, residual)
    return LocalUpdate(result, blob, content_id(blob), noise, pre_clip, left)


def encode_delta(task: Task, delta: Mapping[str, torch.Tensor], round_: int, client_index: int,
                 residual: Mapping[str, torch.Tensor] | None = None) -> tuple[bytes, dict[str, torch.Tensor] | None]:
    """A delta as the update blob the task's genesis asks for, and (top-k) the new error-feedback residual."""
    spec = task.compression_spec()
    if not spec.on:
        return encode_update(quantize_delta(delta)), None
    packed = compress_delta(delta, spec, compression_seed(task.seed, round_, client_index), residual)
    return packed.blob, packed.residual


def contribution_from_blob(blob: bytes, num_samples: int, params: Mapping[str, torch.Tensor], max_norm: float,
                           update_id: bytes | None = None, compression: Compression | None = None) -> Contribution:
    """Decode and validate an update blob received from anywhere; raises UpdateRejected or MalformedBlob.
    `update_id`: the blob's content id when the caller has already verified the bytes against it;
    `compression`: the genesis's method, which the blob must use (None: plain updates only)."""
    update = decode_for(blob, compression or Compression())
    validate_update(update, params, Fraction(str(max_norm)))
    return Contribution(update_id if update_id is not None else content_id(blob), num_samples, update)


@dataclass(frozen=True)
class Commit:
    """One participant's commit in a round: the hash on chain, the reported samples, the bytes it serves."""

    client: int
    committed_hash: bytes
    num_samples: int
    served: bytes | None


def include_commits(commits: list[Commit], max_samples: int = MAX_REPORTED
                    ) -> tuple[list[Commit], list[tuple[str, str]]]:
    """Which commits end up in a finalized block, in commit order, and why the others do not.

    Models SwarmRounds.commitUpdate (one commit per participant; a hash already committed in the round is
    refused; numSamples must be in 1..max_samples, the genesis bound) and the data-availability rule
    (validators prevote a block only when they hold a blob that verifies against every commit's hash: a
    commit whose blob is never served, or served with other bytes, is never included).
    """
    seen: set[bytes] = set()
    included: list[Commit] = []
    refused: list[tuple[str, str]] = []
    for c in commits:
        if c.committed_hash in seen:
            refused.append((c.committed_hash.hex(), "duplicate-hash"))
        elif not 0 < c.num_samples <= max_samples:
            refused.append((c.committed_hash.hex(), "bad-num-samples"))
        elif c.served is None:
            refused.append((c.committed_hash.hex(), "unavailable:withheld"))
        elif content_id(c.served) != c.committed_hash:
            refused.append((c.committed_hash.hex(), "unavailable:hash-mismatch"))
        else:
            seen.add(c.committed_hash)
            included.append(c)
    return included, refused


class Swarm:
    """N simulated clients sharing one global model, run round by round in this process."""

    def __init__(self, task: Task, dataset: Dataset, adversary: Adversary | None = None,
                 max_samples: int = MAX_REPORTED, privacy: PrivacyConfig | None = None) -> None:
        self.task = task
        self.dataset = dataset
        self.clients = build_clients(task, dataset)
        self.model = GlobalModel(initial_params(task))
        self.round = 0
        self.adversary = adversary
        self.committed: dict[int, list[bytes]] = {}  # attackers' earlier commits (what they can replay)
        self.max_samples = max_samples  # the contract's bound on a commit's numSamples (genesis max_samples)
        # differential privacy: one private generator for the whole simulation, as a daemon has one per node
        self.privacy = privacy if privacy is not None and privacy.dp_on else None
        self.dp_generator = private_generator() if self.privacy is not None else None
        self.dp_noise: dict[int, DPNoise] = {}  # each client's noise, from its last update
        self.dp_releases: dict[int, int] = {}  # updates each client has published (what its epsilon counts)
        self.residuals: dict[int, dict[str, torch.Tensor]] = {}  # top-k error feedback, kept by each client

    @classmethod
    def for_genesis(cls, genesis: Genesis, dataset: Dataset, adversary: Adversary | None = None,
                    privacy: PrivacyConfig | None = None) -> Swarm:
        """The swarm a genesis describes: its task and its max_samples bound, so that its rounds give the
        model hashes the genesis's daemons finalize, provided both train with the same torch thread count
        (local training's floating point depends on it; a node's learning.torch_threads defaults to 1)."""
        return cls(Task.from_dict(genesis.task), dataset, adversary, max_samples=genesis.rounds.max_samples,
                   privacy=privacy)

    def epsilon_spent(self) -> dict[int, float]:
        """Each DP client's epsilon so far: its noise's accountant over the updates it has published."""
        return {i: self.dp_noise[i].epsilon_after(k) for i, k in sorted(self.dp_releases.items())}

    def _train_data(self, c: ClientData) -> Split:
        adv = self.adversary
        if adv is None or c.index not in adv.attackers or adv.attack.label_map is None:
            return c.train
        return dataclasses.replace(c.train, labels=adv.attack.labels(c.train.labels))

    def run_round(self, tamper: Mapping[int, float] | None = None, *, score_clients: bool = True,
                  score_test: bool = True) -> RoundReport:
        """One round; `tamper` maps a client index to a factor its delta is multiplied by (attack studies).
        `score_clients` / `score_test` off skip the clients' validation scores / the global test score
        (reported as NaN), which cost more than training for small models."""
        t0 = time.perf_counter()
        trained: list[tuple[ClientData, LocalUpdate]] = []
        results, vals, diverged = [], [], []
        for c in self.clients:
            try:
                upd = local_update(self.task, self.model.params, self._train_data(c), self.round, c.index, "cpu",
                                   self.privacy, self.dp_generator, len(self.clients), self.residuals.get(c.index))
            except NonFiniteValue:  # training diverged: like a daemon, the client has nothing to commit
                diverged.append((f"client-{c.index}", "training-diverged"))
                continue
            if upd.residual is not None:
                self.residuals[c.index] = upd.residual
            if upd.dp is not None:
                self.dp_noise[c.index] = upd.dp
                self.dp_releases[c.index] = self.dp_releases.get(c.index, 0) + 1
            if tamper and c.index in tamper:
                scaled = {n: d * tamper[c.index] for n, d in upd.result.delta.items()}
                blob, _ = encode_delta(self.task, scaled, self.round, c.index)
                upd = dataclasses.replace(upd, blob=blob, update_id=content_id(blob))
            trained.append((c, upd))
            results.append(upd.result)
            if score_clients and len(c.val):
                local = {n: self.model.params[n] + upd.result.delta[n] for n in self.model.params}
                vals.append(evaluate(self.task.model_spec(), local, c.val))
        train_seconds = (time.perf_counter() - t0) / max(1, len(self.clients))
        included, excluded = include_commits(self._commits(trained), self.max_samples)
        excluded = diverged + excluded
        contribs = []
        for commit in included:
            assert commit.served is not None
            try:
                contribs.append(contribution_from_blob(commit.served, commit.num_samples, self.model.params,
                                                       self.task.max_update_norm, update_id=commit.committed_hash,
                                                       compression=self.task.compression_spec()))
            except AggregationError as exc:
                excluded.append((commit.committed_hash.hex(), getattr(exc, "reason", "malformed")))
        self.model, agg = aggregate(RuleSpec(self.task.rule, dict(self.task.rule_params)), self.model, contribs)
        excluded += [(uid.hex(), why) for uid, why in agg.excluded]
        test = (evaluate(self.task.model_spec(), self.model.params, self.dataset.test) if score_test
                else EvalResult(float("nan"), float("nan"), (), (), (), ()))
        report = RoundReport(
            self.round, float(np.mean([r.loss for r in results])) if results else float("nan"),
            float(np.mean([r.accuracy for r in results])) if results else float("nan"),
            float(np.mean([v.loss for v in vals])) if vals else float("nan"),
            float(np.mean([v.accuracy for v in vals])) if vals else float("nan"), test, model_hash(self.model), len(agg.used), excluded,
            time.perf_counter() - t0, train_seconds, self._dp_figures(trained), tuple(len(u.blob) for _, u in trained),
        )
        self.round += 1
        return report

    def _dp_figures(self, trained: list[tuple[ClientData, LocalUpdate]]) -> dict[str, float]:
        """RoundReport.extra with DP on: the mean z, the largest epsilon any client has spent, and in
        participant mode the clients' mean pre-clip norm and the fraction clipped (empty with DP off)."""
        if self.privacy is None or not self.dp_noise:
            return {}
        figures = {"dp_noise_multiplier": float(np.mean([n.noise_multiplier for n in self.dp_noise.values()])),
                   "dp_epsilon": max(self.epsilon_spent().values())}
        norms = [u.pre_clip_norm for _, u in trained if u.pre_clip_norm is not None]
        if norms:
            figures["dp_pre_clip_norm"] = float(np.mean(norms))
            figures["dp_clipped_fraction"] = float(np.mean([x > self.privacy.clip_norm for x in norms]))
        return figures

    def _commits(self, trained: list[tuple[ClientData, LocalUpdate]]) -> list[Commit]:
        """Honest clients commit first, in index order (they hold their bytes first); attackers, who see the
        round's announcements, commit after them. An honest client reports its training split's size capped
        at max_samples, as a daemon does (RoundWork.train): a larger share is committed at the cap, not
        refused."""
        adv = self.adversary
        bad = adv.attackers if adv is not None else frozenset()
        honest = [Commit(c.index, u.update_id, min(u.result.num_samples, self.max_samples), u.blob)
                  for c, u in trained if c.index not in bad]
        if adv is None:
            return honest
        return honest + [self._attacker_commit(adv, c, u, trained) for c, u in trained if c.index in bad]

    def _attacker_commit(self, adv: Adversary, c: ClientData, upd: LocalUpdate,
                         trained: list[tuple[ClientData, LocalUpdate]]) -> Commit:
        from swarmnode.adversary.attacks import RoundContext

        honest_deltas = [u.result.delta for cl, u in trained if cl.index not in adv.attackers]
        peers = [u.blob for cl, u in trained if cl.index not in adv.attackers]
        ctx = RoundContext(self.round, c.index, upd.result.delta, upd.blob, upd.result.num_samples, honest_deltas,
                           len(self.clients), len(adv.attackers), tuple(self.committed.get(c.index, ())), peers,
                           adv.seed)
        sub: Submission = adv.attack.craft(ctx)
        if sub.available():
            assert sub.served is not None
            self.committed.setdefault(c.index, []).append(sub.served)
        return Commit(c.index, sub.committed_hash, sub.num_samples, sub.served)


class Centralized:
    """The baseline: the same model and optimizer trained on the union of the clients' training data."""

    def __init__(self, task: Task, clients: list[ClientData]) -> None:
        self.task = task
        first = clients[0].train
        self.data = Split(torch.cat([c.train.images for c in clients]), torch.cat([c.train.labels for c in clients]),
                          first.mean, first.std)
        self.model = build_model(task.model_spec(), task.seed)
        cfg = task.train_config()
        self.opt = local_optimizer(cfg.optimizer, self.model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(task.seed)
        self.steps_done = 0

    def train_steps(self, steps: int) -> None:
        self.model.train()
        for idx in batches(len(self.data), self.task.batch_size, steps, self.gen):
            loss = nn.functional.cross_entropy(self.model(inputs(self.data, idx)), self.data.labels[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.steps_done += steps

    def evaluate(self, split: Split) -> EvalResult:
        return evaluate_module(self.model, split, self.task.num_classes)
