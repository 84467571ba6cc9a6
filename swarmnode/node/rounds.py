"""The round protocol's decisions: a pure function from what the chain says and what this node holds
to the actions the daemon must start (DESIGN.md, "The round protocol", steps 1-5)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CommitInfo:
    participant: bytes
    update_hash: bytes
    num_samples: int


@dataclass(frozen=True)
class RoundObservation:
    """SwarmRounds as of the committed head, seen by this node."""

    height: int
    round: int  # currentRound: open, or closed and awaiting attestations
    base_hash: bytes  # G_r: the final hash of round r-1 (the genesis model hash for round 0)
    window_open: bool  # commits still accepted in the next block
    commits: tuple[CommitInfo, ...]
    participant_count: int  # participants registered when the round opened
    participant_index: int | None  # our position in the registry (None: not registered)
    committed: bool  # we committed to this round
    attested: bool  # we attested this round
    validator: bool  # we have stake


@dataclass(frozen=True)
class LocalView:
    """What the daemon holds and does: model availability and actions started or finished (by key)."""

    has_base: bool
    num_clients: int  # data partitions in the task: participants beyond it have no data to train on
    busy: frozenset[tuple[str, int]] = frozenset()
    done: frozenset[tuple[str, int]] = frozenset()
    aggregates: tuple[tuple[int, bytes], ...] = ()  # (round, our result hash)

    def started(self, key: tuple[str, int]) -> bool:
        return key in self.busy or key in self.done

    def aggregate_of(self, round_: int) -> bytes | None:
        return dict(self.aggregates).get(round_)


@dataclass(frozen=True)
class FetchModel:
    """Step 1/5: obtain G_r by hash (from the store, by recomputation, or from peers)."""

    round: int
    model_hash: bytes

    key = property(lambda self: ("fetch", self.round))


@dataclass(frozen=True)
class Train:
    """Step 2: train on G_r, store + announce the update, commit its hash."""

    round: int
    base_hash: bytes
    client_index: int

    key = property(lambda self: ("train", self.round))


@dataclass(frozen=True)
class Aggregate:
    """Step 4: fetch every included update, apply the genesis rule to G_r."""

    round: int
    base_hash: bytes
    commits: tuple[CommitInfo, ...]

    key = property(lambda self: ("aggregate", self.round))


@dataclass(frozen=True)
class Attest:
    """Step 4 (validators): attest keccak(G_{r+1})."""

    round: int
    model_hash: bytes

    key = property(lambda self: ("attest", self.round))


Action = FetchModel | Train | Aggregate | Attest


def can_train(obs: RoundObservation, local: LocalView) -> bool:
    return (obs.participant_index is not None and obs.participant_index < local.num_clients
            and obs.window_open and not obs.committed)


def decide(obs: RoundObservation, local: LocalView) -> list[Action]:
    """The actions to start now; the daemon calls this on every new committed block."""
    r = obs.round
    if not local.has_base:
        fetch = FetchModel(r, obs.base_hash)
        return [] if local.started(fetch.key) else [fetch]  # nothing else can happen without G_r
    actions: list[Action] = []
    if can_train(obs, local) and obs.participant_index is not None:
        train = Train(r, obs.base_hash, obs.participant_index)
        if not local.started(train.key):
            actions.append(train)
    if not obs.window_open:
        agg = Aggregate(r, obs.base_hash, obs.commits)
        if not local.started(agg.key):
            actions.append(agg)
        ours = local.aggregate_of(r)
        if obs.validator and not obs.attested and ours is not None:
            attest = Attest(r, ours)
            if not local.started(attest.key):
                actions.append(attest)
    return actions


def mismatch(local: LocalView, round_: int, final_hash: bytes) -> bytes | None:
    """Our own result for `round_` when it differs from the finalized hash (step 5), else None."""
    ours = local.aggregate_of(round_)
    return ours if ours is not None and ours != final_hash else None
