"""The consensus driver: a trio service that feeds the pure engine and carries out its outputs.

It authenticates network messages, runs the Application off the event loop (one worker thread),
signs votes only after the signing record is fsynced, schedules timeouts with trio, re-broadcasts its
own votes while a height is stuck, and catches up from peers by verifying commit certificates.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from consensus import engine as eng
from consensus.certificate import CommitCertificate, InvalidCertificate, verify_certificate
from consensus.errors import ConsensusError, InvalidSignature
from consensus.evidence import EvidencePool
from consensus.interfaces import Application, Network
from consensus.messages import (
    MAX_MESSAGE_BYTES,
    ProposalMessage,
    SyncRequest,
    SyncResponse,
    VoteMessage,
    decode,
    encode,
)
from consensus.signing_record import DoubleSignRefused, SigningRecord
from consensus.votes import STEP_PRECOMMIT, SignedVote, address_of, sign_vote, vote_signer
from consensus.wire import MalformedMessage

log = logging.getLogger(__name__)
_MARKS = ("proposal", "validated", "prevote", "precommit", "commit")


@dataclass(frozen=True)
class DriverConfig:
    chain_id: int
    timeouts: eng.TimeoutConfig = field(default_factory=eng.TimeoutConfig)
    # from one height's start to the next one's (never before the commit): a block every block_interval
    # while the network keeps up, the time consensus took included
    block_interval: float = 1.0
    # > block_interval: while the Application has no pending transaction and no peer has moved on, wait
    # up to this long after a height's start before starting the next (fewer empty blocks when idle)
    empty_block_interval: float = 0.0
    idle_poll: float = 0.1  # re-check for pending transactions this often while idle (besides notify_pending)
    rebroadcast_interval: float = 2.0  # re-send own messages while a height makes no progress
    sync_request_interval: float = 1.0
    sync_batch: int = 16  # heights served per sync request
    max_heights_ahead: int = 64  # further ahead is "far ahead": dropped without asking for sync
    future_buffer: int = 4096  # messages held for heights not reached yet (half at most beyond height + 1)
    max_message_bytes: int = MAX_MESSAGE_BYTES
    inbox_size: int = 64
    prepare_timeout: float = 3.0  # the longest prepare_block may delay a validation (see ConsensusDriver)
    # A proposer whose proposal this node did not see before its propose timeout `silent_after` turns in a
    # row (a dead or cut-off validator) gets `silent_propose_timeout` instead of the full timeout, until a
    # proposal of its arrives again (even a late one). Timeouts decide liveness only, never safety; this
    # keeps a dead validator from costing the full propose timeout every time its turn comes round (every
    # 4th height with 4 validators), at the price of missing one proposal of a validator that comes back.
    silent_after: int = 2
    silent_propose_timeout: float = 0.5
    # ...and in a round of such a proposer in which no proposal was seen, the precommit timeout (the wait
    # for late precommits of a value before the next round) is this short: there is no value to wait for.
    # With 4 validators a dead one's turn cost 0.5 + 1.0 s (the precommit timeout) + messages; now ~0.7 s.
    silent_precommit_timeout: float = 0.1
    dedupe_window: int = 8192  # recently received messages remembered to drop exact re-sends
    # Run the Application and fsync in worker threads. Tests under trio's MockClock set False: autojump
    # counts time spent in a worker thread as idle and would fire timeouts early, non-deterministically.
    offload_blocking: bool = True


@dataclass(frozen=True)
class DriverStatistics:
    height: int
    round: int
    step: int
    committed_height: int
    received: int
    dropped: dict[str, int]
    sign_refused: int
    evidence: int
    counters: dict[str, int]  # everything else: rebroadcasts, duplicates, sync_requests, synced_blocks...


@dataclass(frozen=True)
class _Authenticated:
    message: ProposalMessage | VoteMessage
    signer: bytes


@dataclass(frozen=True)
class _Built:
    height: int
    round: int
    block: bytes


@dataclass(frozen=True)
class _Synced:
    block: bytes
    certificate: CommitCertificate


@dataclass
class _Tally:
    """Who precommitted the block decided at `height` (metrics: missed votes)."""

    height: int
    round: int
    block_hash: bytes
    validators: tuple[bytes, ...]
    signers: set[bytes]


class ConsensusDriver:
    """One validator (or observer, with private_key=None) running Tendermint over `network`."""

    def __init__(
        self, config: DriverConfig, app: Application, network: Network,
        private_key: bytes | None, signing_record: SigningRecord,
        wall_clock: Callable[[], float] = time.time,
        app_runner: Callable[..., Awaitable[Any]] | None = None,
        prepare_block: Callable[[int, bytes], Awaitable[None]] | None = None,
    ) -> None:
        """`app_runner(fn, *args)`, when given, runs every Application call (e.g. on the node's chain
        executor, shared with RPC and sync); by default they run on a worker thread of the driver's own.
        `prepare_block(height, block)`, when given, is awaited on the event loop before a proposed block is
        validated, for at most `config.prepare_timeout` seconds: the place to wait for data the block
        refers to without holding the Application's thread (the data-availability check itself must then
        answer at once from what this node holds)."""
        self.config = config
        self._app_runner = app_runner
        self._prepare_block = prepare_block
        self.app = app
        self.network = network
        self._key = private_key
        self.address = address_of(private_key) if private_key is not None else None
        self.record = signing_record
        self._wall_clock = wall_clock
        self._state = eng.initial_state(config.chain_id, self.address, config.timeouts)
        self._app_limiter = trio.CapacityLimiter(1)
        self._disk_limiter = trio.CapacityLimiter(1)
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[Any](config.inbox_size)
        self._blocks: dict[bytes, bytes] = {}
        self._own: dict[tuple[int, int], bytes] = {}  # (round, step) -> encoded own message, this height
        self._seen: dict[bytes, None] = {}  # insertion-ordered set of recent messages' digests
        self._future: list[_Authenticated] = []  # messages of heights we have not reached, from validators
        self._future_keys: set[tuple[Any, ...]] = set()
        self._future_far = 0  # of which beyond the next height
        self._synced: dict[int, _Synced] = {}
        self._last_sync_request: dict[int, float] = {}
        self._last_sync_serve: dict[int, float] = {}
        self._committed_height = 0
        self._progress = trio.Event()
        self._evidence_added = trio.Event()
        self._work_arrived = trio.Event()
        self.counters: Counter[str] = Counter()
        self.evidence = EvidencePool()
        self.timeline: dict[int, dict[str, float]] = {}  # height -> proposal / commit times
        self._silent: Counter[bytes] = Counter()  # proposer -> own turns in a row with no proposal seen in time
        self._proposed: set[tuple[int, int]] = set()  # (height, round) with a proposal seen, this height
        self._nursery: trio.Nursery | None = None
        # metrics: validator -> heights decided here without its precommit for the block (_tally_missed), and
        # the highest height a validator's signed message was for (the validators have committed the one below)
        self.missed_votes: Counter[bytes] = Counter()
        self.highest_seen = 0
        self._tally: _Tally | None = None

    # ---- public API ----

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; `nursery.start(driver.run)` returns once the first height has started."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._committed_height = await self._app(self.app.latest_height)
            vset = await self._app(self.app.validator_set, self._committed_height + 1)
            await self._feed(self._start_input(self._committed_height + 1, vset))
            nursery.start_soon(self._receive_loop)
            nursery.start_soon(self._rebroadcast_loop)
            task_status.started()
            async for item in self._inbox_recv:
                await self._dispatch(item)

    @property
    def committed_height(self) -> int:
        return self._committed_height

    @property
    def state(self) -> eng.EngineState:
        return self._state

    async def wait_height(self, height: int) -> None:
        """Return once a block at `height` (or above) is committed on this node."""
        while self._committed_height < height:
            await self._progress.wait()

    async def wait_evidence(self, count: int = 1) -> None:
        """Return once at least `count` pieces of equivocation evidence are pooled."""
        while len(self.evidence) < count:
            await self._evidence_added.wait()

    def notify_pending(self) -> None:
        """A transaction entered the Application's pool: an idle validator starts the next height now."""
        self._work_arrived.set()
        self._work_arrived = trio.Event()

    def statistics(self) -> DriverStatistics:
        s = self._state
        dropped = {k[len("dropped."):]: v for k, v in self.counters.items() if k.startswith("dropped.")}
        return DriverStatistics(
            s.height, s.round, int(s.step), self._committed_height, self.counters["received"], dropped,
            self.counters["sign_refused"], len(self.evidence), dict(self.counters),
        )

    # ---- plumbing ----

    async def _app(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._app_runner is not None:
            return await self._app_runner(fn, *args)
        return await self._blocking(fn, *args, limiter=self._app_limiter)

    async def _blocking(self, fn: Callable[..., Any], *args: Any, limiter: trio.CapacityLimiter) -> Any:
        if not self.config.offload_blocking:
            await trio.lowlevel.checkpoint()
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter)

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is None:
            raise ConsensusError("driver is not running: use `nursery.start(driver.run)`")
        self._nursery.start_soon(fn, *args)

    def _drop(self, reason: str, detail: str = "") -> None:
        self.counters[f"dropped.{reason}"] += 1
        log.debug("%s dropped input: %s %s", self._who, reason, detail)

    @property
    def _who(self) -> str:
        return f"0x{self.address.hex()[:8]}" if self.address else "observer"

    async def _feed(self, inp: eng.Input) -> None:
        """Apply an input and every input its outputs loop back (our own proposals and votes)."""
        queue: deque[eng.Input] = deque([inp])
        while queue:
            self._state, outputs = eng.apply(self._state, queue.popleft())
            for out in outputs:
                looped = await self._execute(out)
                if looped is not None:
                    queue.append(looped)

    # ---- inbound ----

    def is_validator(self, address: bytes) -> bool:
        """True if `address` holds voting power at the height being decided (for the p2p layer's
        known-sender check: frames signed by anyone else are refused before they reach us). Before the
        first height starts nothing is known yet, and everyone passes."""
        if self._state.rotation is None:
            return True
        return self._state.validators.power_of(address) > 0

    def _is_duplicate(self, data: bytes) -> bool:
        """Exact re-sends (rebroadcasts, gossip echoes) skip decoding and signature recovery. Keyed by a
        digest: dedupe_window whole proposals would be gigabytes."""
        key = hashlib.blake2b(data, digest_size=16).digest()
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > self.config.dedupe_window:
            del self._seen[next(iter(self._seen))]
        return False

    async def _receive_loop(self) -> None:
        async for data in self.network.inbound:
            self.counters["received"] += 1
            if self._is_duplicate(data):
                self.counters["duplicates"] += 1
                continue
            try:
                msg = decode(data, self.config.max_message_bytes)
            except MalformedMessage as exc:
                self._drop("malformed", str(exc))
                continue
            if isinstance(msg, SyncRequest | SyncResponse):
                # asked and answered again on purpose (a lost or early copy must not block a node that
                # is catching up until its height changes); _serve_sync and _on_sync_response bound them
                self._seen.pop(hashlib.blake2b(data, digest_size=16).digest(), None)
            item: Any = msg
            if isinstance(msg, ProposalMessage | VoteMessage):
                try:
                    item = _Authenticated(msg, vote_signer(msg.vote))
                except InvalidSignature as exc:
                    self._drop("bad_signature", str(exc))
                    continue
            await self._inbox_send.send(item)

    async def _dispatch(self, item: Any) -> None:
        if isinstance(item, _Authenticated):
            await self._on_consensus_message(item)
        elif isinstance(item, _Built):
            if item.height == self._state.height:
                block_hash = self.app.block_hash(item.block)
                self._blocks[block_hash] = item.block
                await self._feed(eng.ValueReady(item.height, item.round, block_hash))
        elif isinstance(item, eng.StartHeight):
            await self._start_height(item)
        elif isinstance(item, eng.TimeoutInput):
            self._note_silent_proposer(item)
            await self._feed(item)
        elif isinstance(item, SyncRequest):
            await self._serve_sync(item.height)
        elif isinstance(item, SyncResponse):
            await self._on_sync_response(item)
        else:
            await self._feed(item)

    async def _on_consensus_message(self, item: _Authenticated) -> None:
        h, current = item.message.vote.height, self._state.height
        decided = self._state.step == eng.Step.COMMIT
        if h <= current + self.config.max_heights_ahead:  # a validator is there (bounded: a liar moves it little)
            self.highest_seen = max(self.highest_seen, h)
        if h == current and not decided:
            inp = self._engine_input(item)
            if inp is not None:
                await self._feed(inp)
        elif h == current:
            self.counters["late_for_decided_height"] += 1
            self._note_late_precommit(item)
        elif h == current + 1:
            self._buffer_future(item)
            if not decided:
                self._request_sync(current)  # peers moved on without us
        elif h < current:
            self._drop("stale_height", f"height {h} < {current}")
        elif h <= current + self.config.max_heights_ahead:
            # kept for when we get there (the network drops exact re-sends of what it delivered once: the
            # others' rebroadcasts of their votes for that height would never reach us again), and a sign
            # that we are behind: catch up
            self._buffer_future(item)
            self._request_sync(self._committed_height + 1)
        else:
            # far behind (a partition healed, a long pause): catch up from peers all the same, one batch
            # per request (rate-limited per height); the message itself is of no use to us
            self._drop("height_far_ahead", f"height {h}, at {current}")
            self._request_sync(self._committed_height + 1)

    def _engine_input(self, item: _Authenticated) -> eng.Input | None:
        """The engine input for an authenticated message; None (dropped) when a proposal's block bytes
        do not hash to what the proposer signed: a relay may have swapped them, so no verdict follows."""
        msg = item.message
        if not isinstance(msg, ProposalMessage):
            return eng.VoteInput(msg.vote, item.signer)
        try:
            block_hash = self.app.block_hash(msg.block)
        except ConsensusError:
            block_hash = b""
        if block_hash != msg.vote.block_hash:
            self._drop("block_mismatch", f"proposal at height {msg.vote.height} round {msg.vote.round}")
            return None
        self._blocks.setdefault(block_hash, msg.block)
        self._mark(msg.vote.height, "proposal")
        self._proposed.add((msg.vote.height, msg.vote.round))
        self._silent.pop(item.signer, None)  # alive: its next turn gets the full timeout again
        return eng.ProposalInput(msg.vote, msg.valid_round, item.signer)

    def _buffer_future(self, item: _Authenticated) -> None:
        v = item.message.vote
        key = (item.signer, v.height, v.round, v.step, v.block_hash)
        if key in self._future_keys:
            return
        if self._state.validators.power_of(item.signer) == 0:
            self._drop("non_validator", f"future vote from 0x{item.signer.hex()}")
        elif len(self._future) >= self.config.future_buffer:
            self._drop("future_buffer_full", f"height {v.height}")
        elif v.height > self._state.height + 1 and self._future_far >= self.config.future_buffer // 2:
            self._drop("future_buffer_full", f"height {v.height}")  # half the room stays for the next height
        else:
            self._future.append(item)
            self._future_keys.add(key)
            if v.height > self._state.height + 1:
                self._future_far += 1
            self.notify_pending()  # a peer has moved on: an idle wait for transactions ends

    # ---- outputs ----

    async def _execute(self, out: eng.Output) -> eng.Input | None:
        if isinstance(out, eng.BroadcastVote):
            return await self._broadcast_vote(out)
        if isinstance(out, eng.BroadcastProposal):
            return await self._broadcast_proposal(out)
        if isinstance(out, eng.ScheduleTimeout):
            deadline = trio.current_time() + self._timeout_for(out)
            self._spawn(self._fire_at, deadline, eng.TimeoutInput(out.height, out.round, out.step))
        elif isinstance(out, eng.RequestValue):
            self._spawn(self._build_value, out.height, out.round)
        elif isinstance(out, eng.ValidateBlock):
            self._spawn(self._validate, out.height, out.block_hash, self._blocks.get(out.block_hash))
        elif isinstance(out, eng.CommitBlock):
            await self._commit(out)
        elif isinstance(out, eng.EvidenceFound):
            if self.evidence.add(out.evidence):
                log.warning("%s evidence of equivocation by 0x%s", self._who, out.evidence.validator.hex())
                self._evidence_added.set()
                self._evidence_added = trio.Event()
        elif isinstance(out, eng.Dropped):
            if out.reason != "duplicate":
                self._drop(out.reason, out.detail)
        return None

    def _timeout_for(self, out: eng.ScheduleTimeout) -> float:
        """Timeouts decide liveness only, never safety: a silent proposer's round may end sooner."""
        if out.height != self._state.height or out.step == eng.Step.PREVOTE:
            return out.duration
        proposer = self._state.proposer(out.round)
        if proposer == self.address or self._silent[proposer] < self.config.silent_after:
            return out.duration
        if out.step == eng.Step.PROPOSE:
            self.counters["short_propose_timeouts"] += 1
            return min(out.duration, self.config.silent_propose_timeout)
        if (out.height, out.round) not in self._proposed:
            self.counters["short_precommit_timeouts"] += 1
            return min(out.duration, self.config.silent_precommit_timeout)
        return out.duration

    def _note_silent_proposer(self, timeout: eng.TimeoutInput) -> None:
        """A propose timeout fired at our height and round with no proposal seen: its proposer was silent."""
        s = self._state
        if (timeout.step != eng.Step.PROPOSE or timeout.height != s.height or timeout.round != s.round
                or s.step != eng.Step.PROPOSE or (timeout.height, timeout.round) in self._proposed):
            return
        proposer = s.proposer(timeout.round)
        if proposer != self.address:
            self._silent[proposer] += 1

    async def _sign(self, height: int, round_: int, step: int, block_hash: bytes) -> SignedVote | None:
        """Sign, then persist the signing record (fsync) before anyone can see the vote."""
        if self._key is None:
            return None
        vote = sign_vote(self._key, self.config.chain_id, height, round_, step, block_hash)
        try:
            await self._blocking(self.record.record, vote, limiter=self._disk_limiter)
        except DoubleSignRefused as exc:
            self.counters["sign_refused"] += 1
            log.warning("%s %s", self._who, exc)
            return None
        return vote

    async def _send_own(self, key: tuple[int, int], data: bytes) -> None:
        self._own[key] = data
        await self.network.broadcast(data)

    async def _broadcast_vote(self, out: eng.BroadcastVote) -> eng.Input | None:
        vote = await self._sign(out.height, out.round, int(out.step), out.block_hash)
        if vote is None:
            return None
        self._mark(out.height, "prevote" if out.step == eng.Step.PREVOTE else "precommit")
        await self._send_own((out.round, int(out.step)), encode(VoteMessage(vote)))
        return eng.VoteInput(vote, self.address)  # type: ignore[arg-type]

    async def _broadcast_proposal(self, out: eng.BroadcastProposal) -> eng.Input | None:
        block = self._blocks.get(out.block_hash)
        if block is None:
            raise ConsensusError(f"no block bytes for our own proposal 0x{out.block_hash.hex()}")
        vote = await self._sign(out.height, out.round, 0, out.block_hash)
        if vote is None:
            return None
        try:
            message = encode(ProposalMessage(vote, out.valid_round, block))
        except MalformedMessage as exc:  # e.g. a block too large for one message: the round times out
            log.error("%s event=proposal_not_sent height=%d round=%d reason=%r", self._who, out.height, out.round,
                      str(exc))
            self._drop("proposal_not_sent", str(exc))
            return None
        self._mark(out.height, "proposal")
        await self._send_own((out.round, 0), message)
        return eng.ProposalInput(vote, out.valid_round, self.address)  # type: ignore[arg-type]

    async def _fire_at(self, deadline: float, inp: eng.Input) -> None:
        await trio.sleep_until(deadline)
        await self._inbox_send.send(inp)

    async def _build_value(self, height: int, round_: int) -> None:
        block = await self._app(self.app.propose_block, height, round_, int(self._wall_clock()))
        await self._inbox_send.send(_Built(height, round_, block))

    async def _validate(self, height: int, block_hash: bytes, block: bytes | None) -> None:
        if block is None:
            verdict_ok = False
        else:
            if self._prepare_block is not None:
                with trio.move_on_after(self.config.prepare_timeout):
                    await self._prepare_block(height, block)
            verdict = await self._app(self.app.validate_block, height, block)
            self._mark(height, "validated")
            verdict_ok = verdict.valid
            if not verdict.valid:
                log.info("%s rejects block at height %d: %s", self._who, height, verdict.reason)
        await self._inbox_send.send(eng.BlockVerdict(height, block_hash, verdict_ok))

    async def _commit(self, out: eng.CommitBlock) -> None:
        block = self._blocks[out.block_hash]
        cert = CommitCertificate.from_precommits(out.precommits)
        self._open_tally(out)
        await self._app(self.app.commit_block, out.height, block, cert)
        now = trio.current_time()
        t = self.timeline.setdefault(out.height, {})
        t["commit"] = now
        t["round"] = out.round
        if "start" in t:
            log.info("%s event=committed height=%d round=%d ms=%s", self._who, out.height, out.round,
                     ",".join(f"{k}:{1000 * (t[k] - t['start']):.0f}" for k in _MARKS if k in t))
        self._committed_height = out.height
        self._prune(out.height)
        self._progress.set()
        self._progress = trio.Event()
        vset = await self._app(self.app.validator_set, out.height + 1)
        start = self._start_input(out.height + 1, vset)
        if out.height + 1 in self._synced or self._future:
            # peers are already at the next height (a certified block of it, or their votes for it are
            # buffered): we are the one behind, and waiting out the block interval would keep us exactly
            # one height behind for ever, deciding each height from their precommits without ever voting
            self._spawn(self._fire_at, now, start)
        else:
            self._spawn(self._start_when_due, t.get("start", now), start)

    # ---- missed votes (metrics) ----

    def _open_tally(self, out: eng.CommitBlock) -> None:
        """At a decision: who precommitted the block so far. A decision learnt from a synced certificate
        (its signers unknown without an ecrecover each) is not tallied."""
        votes = self._state.round_votes(out.round, STEP_PRECOMMIT).votes
        known = {v.signature for v in votes.values()}
        if not all(p.signature in known for p in out.precommits):
            self._tally = None
            return
        signers = {s for s, v in votes.items() if v.block_hash == out.block_hash}
        self._tally = _Tally(out.height, out.round, out.block_hash,
                             tuple(v.address for v in self._state.validators.validators), signers)

    def _note_late_precommit(self, item: _Authenticated) -> None:
        """A precommit for the decided block that came after the decision still counts as voted."""
        vote, tally = item.message.vote, self._tally
        if (tally is not None and vote.step == STEP_PRECOMMIT
                and (vote.height, vote.round, vote.block_hash) == (tally.height, tally.round, tally.block_hash)):
            tally.signers.add(item.signer)

    def _tally_missed(self) -> None:
        """When the next height starts (block_interval after the decided one started, so late precommits
        had time to arrive): each validator whose precommit for the decided block never came missed it."""
        tally, self._tally = self._tally, None
        if tally is None:
            return
        self.counters["heights_tallied"] += 1
        for address in tally.validators:
            if address not in tally.signers:
                self.missed_votes[address] += 1

    async def _start_when_due(self, started_at: float, start: eng.StartHeight) -> None:
        """Start the next height block_interval after the committed one started (at once if consensus took
        longer); with an empty_block_interval, keep waiting (up to that long after that start) while a block
        would be empty and no peer has moved on. Measured from the start rather than from the commit, the
        interval is the block time: waiting a full interval after each commit made blocks come interval +
        consensus latency apart (1.4 s instead of 1 s with ten loaded validators)."""
        await trio.sleep_until(started_at + self.config.block_interval)
        idle_until = started_at + self.config.empty_block_interval
        while trio.current_time() < idle_until and not self._worth_a_block(start.height):
            self.counters["idle_waits"] += 1
            with trio.move_on_at(min(idle_until, trio.current_time() + self.config.idle_poll)):
                await self._work_arrived.wait()
        await self._inbox_send.send(start)

    def _worth_a_block(self, height: int) -> bool:
        return (height in self._synced or self.app.has_pending_transactions()
                or any(item.message.vote.height == height for item in self._future))

    def _mark(self, height: int, what: str) -> None:
        """First time `what` happened at `height` (the timeline: start, proposal, validated, prevote,
        precommit, commit; commit and round are overwritten by _commit)."""
        self.timeline.setdefault(height, {}).setdefault(what, trio.current_time())

    def _prune(self, height: int, keep: int = 1024) -> None:
        """Bound the per-height bookkeeping."""
        self.timeline.pop(height - keep, None)
        for book in (self._last_sync_request, self._last_sync_serve):
            if len(book) > 1024:
                for h in sorted(book)[:512]:
                    del book[h]

    def _start_input(self, height: int, vset: Any) -> eng.StartHeight:
        """StartHeight, carrying the lock this validator signed at `height` before a restart, if any."""
        lock = self.record.lock_at(height)
        if lock is not None:
            self.counters["resumed_locks"] += 1
            log.info("%s event=resume_locked height=%d round=%d value=0x%s", self._who, height, lock[1],
                     lock[0].hex()[:16])
        return eng.StartHeight(height, vset, lock)

    async def _start_height(self, start: eng.StartHeight) -> None:
        self._tally_missed()
        self._mark(start.height, "start")
        self._proposed.clear()
        self._blocks.clear()
        self._own.clear()
        self._seen.clear()  # re-sends of messages dropped as "too far ahead" must get a second chance
        await self._feed(start)
        pending, self._future, self._future_keys, self._future_far = self._future, [], set(), 0
        for item in pending:
            await self._on_consensus_message(item)
        synced = self._synced.pop(start.height, None)
        for h in [h for h in self._synced if h < start.height]:
            del self._synced[h]
        if synced is not None:
            await self._apply_synced(synced)

    # ---- catch-up ----

    def _request_sync(self, height: int) -> None:
        now = trio.current_time()
        if now - self._last_sync_request.get(height, -1e9) < self.config.sync_request_interval:
            return
        self._last_sync_request[height] = now
        self.counters["sync_requests"] += 1
        self._spawn(self.network.broadcast, encode(SyncRequest(height)))

    async def _serve_sync(self, height: int) -> None:
        now = trio.current_time()
        if height > self._committed_height:
            return
        if now - self._last_sync_serve.get(height, -1e9) < self.config.sync_request_interval:
            return
        self._last_sync_serve[height] = now
        last = min(self._committed_height, height + self.config.sync_batch - 1)
        for h in range(height, last + 1):
            found = await self._app(self.app.committed_block, h)
            if found is not None:
                await self.network.broadcast(encode(SyncResponse(found[0], found[1]), self.config.max_message_bytes))

    async def _on_sync_response(self, msg: SyncResponse) -> None:
        h = msg.certificate.height
        if h < self._state.height or (h == self._state.height and self._state.step == eng.Step.COMMIT):
            return  # already have it
        if h > self._state.height + self.config.sync_batch:
            self._drop("sync_far_ahead", f"certificate for height {h}")
            return
        if h > self._state.height or self._state.step == eng.Step.COMMIT:
            self._synced[h] = _Synced(msg.block, msg.certificate)
            return
        await self._apply_synced(_Synced(msg.block, msg.certificate))

    async def _apply_synced(self, synced: _Synced) -> None:
        cert = synced.certificate
        try:
            if self.app.block_hash(synced.block) != cert.block_hash:
                raise InvalidCertificate(f"block does not match the certificate at height {cert.height}")
            verify_certificate(cert, self._state.validators, self.config.chain_id)
        except ConsensusError as exc:
            self._drop("bad_certificate", str(exc))
            return
        verdict = await self._app(self.app.validate_certified_block, cert.height, synced.block)
        if not verdict.valid:
            self._drop("bad_synced_block", verdict.reason)
            return
        self._blocks[cert.block_hash] = synced.block
        self.counters["synced_blocks"] += 1
        await self._feed(eng.CertifiedCommit(cert.height, cert.round, cert.block_hash, cert.precommits))

    async def _rebroadcast_loop(self) -> None:
        """Gossip is lossy: while stuck at a (height, round), re-send our own messages of this height,
        backing off (x2 per stuck interval, up to x8) so an overloaded network is not flooded further.
        A stuck node also asks for the next height: if the others have moved on, it is behind, and the
        one request its first sight of their votes triggered may have been lost (or its answer was); their
        re-sends are exact copies, dropped as duplicates before decoding, so they never ask again for it."""
        last_seen, stuck = (-1, -1), 0
        while True:
            await trio.sleep(self.config.rebroadcast_interval * min(2**stuck, 8))
            now_at = (self._committed_height, self._state.round)
            if now_at == last_seen and self._state.step != eng.Step.COMMIT:
                for data in list(self._own.values()):
                    await self.network.broadcast(data)
                self.counters["rebroadcasts"] += 1
                self._request_sync(self._committed_height + 1)
                stuck += 1
            else:
                stuck = 0
            last_seen = now_at
