"""The round state machine: `step(state, event) -> (state, actions)`, pure (DESIGN.md, "The round protocol").

The shell (swarmnode/node/roundloop.py) turns what the chain says, work that finished and the passing of
time into events, and carries out the actions returned here; this module only decides. It does no I/O
and reads no clock (time arrives inside events), and its memory is bounded: per-action bookkeeping for
the current and the previous round only, and the newest KEEP_ROUNDS results.

Round r, as this node sees it:
  step 1  FetchModel(r, G_r) until the store holds G_r; nothing else happens without it.
  step 2  Train(r) -> Trained(call) -> SendTx(commit r), while the window may still take commits and we
          are an active participant with a data partition. The trained update is kept, so a lost commit
          is sent again without training again. A participant dropped from the expected set (it missed
          absent_rounds rounds) also sends SendTx(rejoin r), to be waited for again from the next round.
  secure aggregation (genesis [privacy]): a participant sets its share key once (SendTx(sharekey)),
          posts its round keys for r before r's first commit (SendTx(keys r)), and for r + 1 once it has
          committed to r; it trains only in a round whose key set it joined. A commit refused because the
          key set grew after its update was masked is masked again over the final set (Train again: the
          shell keeps the unmasked update). Once the window is closed it reveals its shares (SendTx(reveal
          r)) until the reveal deadline; Aggregate waits for enough of them.
  step 4  once the window is closed: Aggregate(r) (nothing, if the round was skipped) -> Aggregated(h)
          -> SendTx(attest r) for validators.
  step 5  RoundFinalized(r, h): Report whether our result agrees (MODEL_MISMATCH when it does not: the
          next round's base is the final hash, so step 1 fetches it), Score the final model, Prune what
          the node's retention settings no longer keep.
Failures are retried with exponential backoff while the action still makes sense; training gives up
after `max_train_attempts`. A transaction is sent once and then waited for: the sender reports it
included (done; a revert is reported) or lost (dropped from the pool, its nonce taken by another
transaction, the node restarted), and only then is it sent again, with a fresh nonce, if it still makes
sense. So a copy that may still be included is never raced by another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

Key = tuple[str, int]  # (what, round): fetch, train, commit, rejoin, aggregate, attest, score, prune
KEEP_ROUNDS = 8  # aggregates and final hashes remembered (mismatch checks for late aggregations)


# ---------------------------------------------------------------- what the chain says


@dataclass(frozen=True)
class CommitInfo:
    participant: bytes
    update_hash: bytes
    num_samples: int


@dataclass(frozen=True)
class RoundObservation:
    """SwarmRounds as of the committed head, from this node's point of view (views.RoundReader)."""

    height: int
    head_time: int  # the head block's timestamp (seconds)
    round: int  # currentRound: open, or closed and awaiting attestations
    base_hash: bytes  # G_r: the final hash of round r-1 (the genesis model hash for round 0)
    window_open: bool  # the next block may still accept commits
    skipped: bool  # closed with fewer commits than min_participants (under "skip", or a secagg key set frozen
    # below min_participants): nothing is aggregated
    commits: tuple[CommitInfo, ...]
    close_time: int  # the deadline (block-time seconds); the window may close earlier
    extended: bool  # held open past the deadline: fewer commits than min_participants ("extend")
    participant_count: int  # active participants when the round opened
    expected_count: int  # participants expected to commit in this round
    participant_index: int | None  # our stable index in the registry (None: never registered)
    active: bool  # registered and not left
    expected: bool  # expected to commit in this round
    dropped: bool  # active, but out of the expected set after missing absent_rounds rounds in a row
    committed: bool  # we committed to this round
    attested: bool  # we attested this round
    validator: bool  # we have stake
    # secure aggregation (all False/0 when the genesis has it off)
    secagg: bool = False
    share_key_set: bool = False  # our long-term share key is on chain
    keys_posted: bool = False  # we are in this round's key set
    next_keys_posted: bool = False  # ... and in the next round's
    key_count: int = 0  # keys posted for this round (frozen once it has a commit)
    revealed: bool = False  # we revealed our shares for this round
    reveal_open: bool = False  # the window is closed and the reveal deadline has not passed


@dataclass(frozen=True)
class CommitCall:
    """SwarmRounds.commitUpdate's arguments (losses and accuracies in the contract's fixed point, x 1e6).
    The held-out fields score the round's base model on this node's held-out split; count 0: not scored.
    epsilon_spent: micro-epsilon spent after this commit (0 without a privacy budget); key_count: the size
    of the key set the update was masked over (0 without secure aggregation)."""

    round: int
    update_hash: bytes
    num_samples: int
    local_loss: int
    local_accuracy: int
    held_out_loss: int = 0
    held_out_accuracy: int = 0
    held_out_count: int = 0
    epsilon_spent: int = 0
    key_count: int = 0


@dataclass(frozen=True)
class ShareKeyCall:
    """SwarmRounds.setShareKey(our long-term X25519 share key), sent once (in round `round`)."""

    round: int


@dataclass(frozen=True)
class MaskKeysCall:
    """SwarmRounds.postMaskKeys for round `round`: the shell deals the keys and shares when it sends it."""

    round: int


@dataclass(frozen=True)
class RevealCall:
    """SwarmRounds.revealShares for round `round`: the shell opens the shares dealt to us when it sends it."""

    round: int


@dataclass(frozen=True)
class AttestCall:
    """SwarmRounds.attestAggregate's arguments. `full_gas`: declare txs.ATTEST_GAS, what finalizing needs
    at the contracts' limits, not the gas sized to the chain as it is (sent after that one ran out)."""

    round: int
    model_hash: bytes
    full_gas: bool = False


@dataclass(frozen=True)
class RejoinCall:
    """SwarmRounds.rejoin(): back in the expected set from the next round (sent in round `round`)."""

    round: int


# ---------------------------------------------------------------- actions (what the shell must do)


@dataclass(frozen=True)
class FetchModel:
    round: int
    model_hash: bytes

    @property
    def key(self) -> Key:
        return ("fetch", self.round)


@dataclass(frozen=True)
class Train:
    round: int
    base_hash: bytes
    client_index: int

    @property
    def key(self) -> Key:
        return ("train", self.round)


@dataclass(frozen=True)
class SendTx:
    what: str  # "commit", "attest", "rejoin", "sharekey", "keys", "reveal"
    call: CommitCall | AttestCall | RejoinCall | ShareKeyCall | MaskKeysCall | RevealCall

    @property
    def round(self) -> int:
        return self.call.round

    @property
    def key(self) -> Key:
        return (self.what, self.call.round)


@dataclass(frozen=True)
class Aggregate:
    round: int
    base_hash: bytes
    commits: tuple[CommitInfo, ...]  # empty for a skipped round: the result is the base model

    @property
    def key(self) -> Key:
        return ("aggregate", self.round)


@dataclass(frozen=True)
class Score:
    round: int
    model_hash: bytes

    @property
    def key(self) -> Key:
        return ("score", self.round)


@dataclass(frozen=True)
class Prune:
    """Round `final_round` just finalized: delete what the node's retention settings no longer keep."""

    final_round: int

    @property
    def key(self) -> Key:
        return ("prune", self.final_round)


@dataclass(frozen=True)
class Report:
    """Something to tell the operator (the shell logs it): round_final, MODEL_MISMATCH, gave_up, tx_reverted."""

    event: str
    round: int
    detail: tuple[tuple[str, Any], ...] = ()

    def get(self, name: str) -> Any:
        return dict(self.detail).get(name)


Action = FetchModel | Train | SendTx | Aggregate | Score | Prune | Report


# ---------------------------------------------------------------- results and events


@dataclass(frozen=True)
class ModelReady:
    model_hash: bytes


@dataclass(frozen=True)
class Trained:
    call: CommitCall


@dataclass(frozen=True)
class Aggregated:
    model_hash: bytes


@dataclass(frozen=True)
class TxSubmitted:
    tx_hash: bytes


@dataclass(frozen=True)
class Finished:
    """A result with nothing to remember (scored, pruned)."""


Result = ModelReady | Trained | Aggregated | TxSubmitted | Finished


@dataclass(frozen=True)
class BlockObserved:
    obs: RoundObservation
    has_base: bool  # the store holds obs.base_hash
    now: float


@dataclass(frozen=True)
class RoundFinalized:
    round: int
    final_hash: bytes
    now: float


@dataclass(frozen=True)
class ActionDone:
    key: Key
    result: Result
    now: float


@dataclass(frozen=True)
class ActionFailed:
    key: Key
    error: str
    retry: bool  # False: this input cannot work (the action is not tried again this round)
    now: float


@dataclass(frozen=True)
class TxIncluded:
    key: Key
    success: bool  # False: included but reverted
    detail: str
    now: float
    out_of_gas: bool = False  # reverted having spent all the gas it declared


@dataclass(frozen=True)
class TxLost:
    key: Key
    reason: str  # dropped from the pool, nonce taken by another transaction, ...
    now: float


@dataclass(frozen=True)
class DeadlinePassed:
    """A deadline the machine asked for (next_wakeup) has passed: a retry may be due."""

    now: float


Event = BlockObserved | RoundFinalized | ActionDone | ActionFailed | TxIncluded | TxLost | DeadlinePassed


# ---------------------------------------------------------------- state


@dataclass(frozen=True)
class MachineConfig:
    num_clients: int  # data partitions: a participant whose index is beyond them has nothing to train on
    retry_base: float = 0.5  # seconds before the first retry; doubles per failure
    retry_cap: float = 10.0
    max_train_attempts: int = 5


@dataclass(frozen=True)
class Retry:
    attempts: int
    not_before: float
    error: str


@dataclass(frozen=True)
class RoundState:
    config: MachineConfig
    obs: RoundObservation | None = None
    has_base: bool = False
    now: float = 0.0
    running: frozenset[Key] = frozenset()  # started, not finished
    sent: frozenset[Key] = frozenset()  # transactions submitted, not yet included or lost
    done: frozenset[Key] = frozenset()  # finished for good
    retries: Mapping[Key, Retry] = field(default_factory=dict)  # failed; may start again at not_before
    trained: Mapping[int, CommitCall] = field(default_factory=dict)  # our update per round
    aggregates: Mapping[int, bytes] = field(default_factory=dict)  # our results, newest KEEP_ROUNDS
    finals: Mapping[int, bytes] = field(default_factory=dict)  # final hashes, newest KEEP_ROUNDS
    full_gas: frozenset[int] = frozenset()  # rounds whose attestation ran out of gas while the round was open

    @property
    def round(self) -> int | None:
        return self.obs.round if self.obs is not None else None

    def status(self, key: Key) -> str:
        """idle | running | sent | waiting (retry not due) | done."""
        if key in self.done:
            return "done"
        if key in self.running:
            return "running"
        if key in self.sent:
            return "sent"
        retry = self.retries.get(key)
        if retry is not None and retry.not_before > self.now:
            return "waiting"
        return "idle"

    def next_wakeup(self) -> float | None:
        """The earliest time a waiting retry becomes due (the shell sends a DeadlinePassed then)."""
        due = [r.not_before for k, r in self.retries.items()
               if r.not_before > self.now and k not in self.done and k not in self.running]
        return min(due) if due else None


def initial_state(config: MachineConfig) -> RoundState:
    return RoundState(config)


# ---------------------------------------------------------------- the transition function


def step(state: RoundState, event: Event) -> tuple[RoundState, list[Action]]:
    """One event in, the new state and the actions to start out."""
    state = replace(state, now=max(state.now, event.now))
    reports: list[Action] = []
    if isinstance(event, BlockObserved):
        state = _observe(state, event)
    elif isinstance(event, RoundFinalized):
        state, reports = _finalized(state, event)
    elif isinstance(event, ActionDone):
        state, reports = _done(state, event)
    elif isinstance(event, ActionFailed):
        state, reports = _failed(state, event)
    elif isinstance(event, TxIncluded):
        state, reports = _included(state, event)
    elif isinstance(event, TxLost):
        state = replace(state, sent=state.sent - {event.key})
    state, actions = _start(state)
    return state, reports + actions


def _observe(state: RoundState, ev: BlockObserved) -> RoundState:
    obs, r = ev.obs, ev.obs.round
    if state.obs is not None and r < state.obs.round:
        return state  # an older head (a reader behind the driver): ignore
    keep = r - 1  # bookkeeping only for this round and the one before

    def recent(keys: frozenset[Key]) -> frozenset[Key]:
        return frozenset(k for k in keys if k[1] >= keep)

    done, sent = recent(state.done), recent(state.sent)
    if obs.committed:  # the chain has our commit: whatever copy got in, the commit is done
        done |= {("train", r), ("commit", r)}
        sent -= {("commit", r)}
    if obs.attested:
        done |= {("attest", r)}
        sent -= {("attest", r)}
    if obs.keys_posted:
        done |= {("keys", r)}
        sent -= {("keys", r)}
    if obs.next_keys_posted:
        done |= {("keys", r + 1)}
        sent -= {("keys", r + 1)}
    if obs.revealed:
        done |= {("reveal", r)}
        sent -= {("reveal", r)}
    if not ev.has_base:  # fetched once, but the store no longer has it (damaged, quarantined): fetch again
        done -= {("fetch", r)}
    return replace(
        state, obs=obs, has_base=ev.has_base, done=done, sent=sent, running=recent(state.running),
        retries={k: v for k, v in state.retries.items() if k[1] >= keep},
        trained={q: c for q, c in state.trained.items() if q >= keep},
        full_gas=frozenset(q for q in state.full_gas if q >= keep),
    )


def _finalized(state: RoundState, ev: RoundFinalized) -> tuple[RoundState, list[Action]]:
    r = ev.round
    state = replace(state, finals=_newest({**state.finals, r: ev.final_hash}))
    return state, [*_verdict(state, r), Prune(r)]


def _verdict(state: RoundState, r: int) -> list[Action]:
    """Once both our result and the final hash of round r are known: agree (and score) or mismatch."""
    final, ours = state.finals.get(r), state.aggregates.get(r)
    if final is None:
        return []
    if ours is None:
        return [Report("round_final", r, (("final", final), ("agrees", None)))]
    if ours != final:
        return [Report("MODEL_MISMATCH", r, (("ours", ours), ("final", final)))]
    return [Report("round_final", r, (("final", final), ("agrees", True))), Score(r, final)]


HOUSEKEEPING = ("score", "prune")  # started on a verdict, never retried, nothing to remember


def _done(state: RoundState, ev: ActionDone) -> tuple[RoundState, list[Action]]:
    key, res = ev.key, ev.result
    if key[0] in HOUSEKEEPING:
        return state, []
    r = key[1]
    running = state.running - {key}
    retries = {k: v for k, v in state.retries.items() if k != key}
    state = replace(state, running=running, retries=retries)
    if isinstance(res, TxSubmitted):
        if key in state.done:  # its inclusion was reported first: nothing left to wait for
            return state, []
        return replace(state, sent=state.sent | {key}), []
    state = replace(state, done=state.done | {key})
    if isinstance(res, ModelReady):
        if state.obs is not None and res.model_hash == state.obs.base_hash:
            state = replace(state, has_base=True)
        return state, []
    if isinstance(res, Trained):
        return replace(state, trained={**state.trained, r: res.call}), []
    if isinstance(res, Aggregated):
        state = replace(state, aggregates=_newest({**state.aggregates, r: res.model_hash}))
        return state, _verdict(state, r)
    return state, []


def _failed(state: RoundState, ev: ActionFailed) -> tuple[RoundState, list[Action]]:
    key = ev.key
    if key[0] in HOUSEKEEPING:
        return state, []
    state = replace(state, running=state.running - {key})
    previous = state.retries.get(key)
    attempts = (previous.attempts if previous else 0) + 1
    gave_up = not ev.retry or (key[0] == "train" and attempts >= state.config.max_train_attempts)
    if gave_up:
        report = Report("gave_up", key[1], (("action", key[0]), ("attempts", attempts), ("error", ev.error)))
        retries = {k: v for k, v in state.retries.items() if k != key}
        return replace(state, done=state.done | {key}, retries=retries), [report]
    delay = min(state.config.retry_cap, state.config.retry_base * 2 ** (attempts - 1))
    retries = {**state.retries, key: Retry(attempts, ev.now + delay, ev.error)}
    return replace(state, retries=retries), []


def _included(state: RoundState, ev: TxIncluded) -> tuple[RoundState, list[Action]]:
    state = replace(state, sent=state.sent - {ev.key}, done=state.done | {ev.key})
    if ev.success:
        return state, []
    what, r = ev.key
    obs, ours = state.obs, state.trained.get(r)
    if (what == "commit" and obs is not None and obs.secagg and obs.round == r and ours is not None
            and ours.key_count != obs.key_count and obs.window_open and obs.keys_posted):
        # masked over a key set that grew before the commit got in: mask again over the set as it is now
        trained = {q: c for q, c in state.trained.items() if q != r}
        state = replace(state, trained=trained, done=state.done - {("train", r), ("commit", r)})
        return state, [Report("remask", r, (("masked_over", ours.key_count), ("key_set", obs.key_count)))]
    if what == "sharekey":  # e.g. the genesis turned secure aggregation on after a restart: try again later
        state = replace(state, done=state.done - {ev.key})
    if (what == "attest" and ev.out_of_gas and obs is not None and obs.round == r and not obs.attested
            and obs.validator and r not in state.full_gas):
        # it ran out of the gas sized to the chain when it was sent (the registry or the round's attestations
        # grew before it got in, perhaps put in front of it on purpose), and the round is still open. A
        # reverted call changes nothing: send it once more at ATTEST_GAS.
        state = replace(state, done=state.done - {ev.key}, full_gas=state.full_gas | {r})
        return state, [Report("attest_full_gas", r, (("reason", ev.detail),))]
    return state, [Report("tx_reverted", ev.key[1], (("what", ev.key[0]), ("reason", ev.detail)))]


# ---------------------------------------------------------------- what to start now


def wanted(state: RoundState) -> list[Action]:
    """Every action the current observation calls for, started or not (see `_start`)."""
    obs = state.obs
    if obs is None:
        return []
    r = obs.round
    if not state.has_base:
        return [FetchModel(r, obs.base_hash)]  # nothing else can happen without G_r
    out: list[Action] = []
    index = obs.participant_index
    can_contribute = index is not None and obs.active and index < state.config.num_clients
    if obs.secagg and index is not None and obs.active:
        if not obs.share_key_set:
            out.append(SendTx("sharekey", ShareKeyCall(r)))
        elif can_contribute:
            if obs.window_open and not obs.keys_posted and not obs.commits and not obs.committed:
                out.append(SendTx("keys", MaskKeysCall(r)))
            if not obs.next_keys_posted and (obs.committed or obs.commits or not obs.window_open):
                out.append(SendTx("keys", MaskKeysCall(r + 1)))  # this round's set is done: join the next
        if (not obs.window_open and not obs.skipped and obs.reveal_open and not obs.revealed and obs.share_key_set
                and obs.key_count):
            out.append(SendTx("reveal", RevealCall(r)))
    may_train = not obs.secagg or obs.keys_posted
    if can_contribute and obs.window_open and not obs.committed and may_train:
        trained = state.trained.get(r)
        out.append(Train(r, obs.base_hash, index) if trained is None else SendTx("commit", trained))
    if can_contribute and obs.dropped:
        # our commits alone may never get in again: the window closes early once the expected committed
        out.append(SendTx("rejoin", RejoinCall(r)))
    if not obs.window_open:
        ours = state.aggregates.get(r)
        if ours is None:
            out.append(Aggregate(r, obs.base_hash, () if obs.skipped else obs.commits))
        elif obs.validator and not obs.attested:
            out.append(SendTx("attest", AttestCall(r, ours, full_gas=r in state.full_gas)))
    return out


def _start(state: RoundState) -> tuple[RoundState, list[Action]]:
    starting = [a for a in wanted(state) if state.status(a.key) == "idle"]
    return replace(state, running=state.running | {a.key for a in starting}), list(starting)


def _newest(table: Mapping[int, bytes]) -> dict[int, bytes]:
    return {r: table[r] for r in sorted(table)[-KEEP_ROUNDS:]}
