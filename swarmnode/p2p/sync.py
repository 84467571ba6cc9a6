"""Chain sync on /swarmnode/sync/1: blocks with their commit certificates, by height range.

    request : envelope SYNC_REQUEST [first_height, count]
    response: envelope SYNC_HEADER [head_height, n], then n frames envelope SYNC_BLOCK [height, block, cert]
       or   : envelope SYNC_REFUSED [reason, limit]: nothing served, because
              1 range: count > limit (the most blocks served per request): ask again for fewer,
              2 busy: this peer already has `limit` requests being served,
              3 rate: this peer sent too many requests lately (`limit`: milliseconds to wait)

The client verifies each certificate against the validator set in force at its height
(consensus.certificate.verify_certificate), then the block itself (Application.validate_certified_block), and
only then commits it. A peer that serves anything invalid is skipped for the rest of the catch-up; one
that refuses is skipped without blame (a range refusal is retried once with its limit).

The server holds each peer to config.Limits: max_sync_blocks per request, max_sync_serves_per_peer at
once, sync_requests per second (token bucket; past it the peer also collects penalty points), and
max_streams_per_protocol open streams (more are reset unread).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from consensus.certificate import CommitCertificate, verify_certificate
from consensus.errors import ConsensusError
from consensus.interfaces import Application
from swarmnode.p2p import wire
from swarmnode.p2p.config import P2PConfig
from swarmnode.p2p.errors import P2PError, SyncError, WireError
from swarmnode.p2p.host import PeerGuard

log = logging.getLogger(__name__)

SYNC_PROTOCOL = TProtocol("/swarmnode/sync/1")
MAX_SYNC_FRAME = 16 * 1024 * 1024 + 512 * 1024  # a block (<= 16 MiB RLP) plus its certificate
SYNC_REFUSED = 33  # envelope kind of a refusal (next to wire.SYNC_REQUEST/HEADER/BLOCK = 30/31/32)
REFUSED_RANGE, REFUSED_BUSY, REFUSED_RATE = 1, 2, 3
REFUSAL_NAMES = {REFUSED_RANGE: "range", REFUSED_BUSY: "busy", REFUSED_RATE: "rate"}
REQUEST_TIMEOUT = 5.0  # seconds a peer gets to send its request once its stream is open


class SyncRefused(SyncError):
    """The peer refused a sync request (typed: `reason` is REFUSED_*, `limit` what it allows)."""

    def __init__(self, reason: int, limit: int) -> None:
        super().__init__(f"sync request refused: {REFUSAL_NAMES.get(reason, reason)} (limit {limit})")
        self.reason, self.limit = reason, limit


def apply_certified(app: Application, chain_id: int, height: int, block: bytes, cert: CommitCertificate) -> None:
    """Verify and commit one synced block (blocking: run on the application's worker)."""
    if cert.height != height:
        raise SyncError(f"certificate for height {cert.height} sent as height {height}")
    if app.block_hash(block) != cert.block_hash:
        raise SyncError(f"block at height {height} does not match its certificate")
    verify_certificate(cert, app.validator_set(height), chain_id)
    verdict = app.validate_certified_block(height, block)
    if not verdict.valid:
        raise SyncError(f"certified block at height {height} is invalid: {verdict.reason}")
    app.commit_block(height, block, cert)


class ChainSync:
    """Serves committed blocks to peers and catches `app` up from them.

    Every call into `app` goes through `runner(fn, *args)` (the node's chain executor, which serialises
    them with every other chain call: py-evm is not thread-safe), or a worker thread of its own."""

    def __init__(self, host: IHost, app: Application, config: P2PConfig,
                 runner: Callable[..., Awaitable[Any]] | None = None, guard: PeerGuard | None = None) -> None:
        self._host = host
        self.app = app
        self.config = config
        self._runner = runner
        self._guard = guard
        self.limiter = trio.CapacityLimiter(1)
        self._serve_limiter = trio.CapacityLimiter(config.max_concurrent_serves)
        self._serving: Counter[ID] = Counter()  # requests being served, per peer
        self.counters: Counter[str] = Counter()
        self.peer_head = 0  # the highest head a peer stated in a sync header (a claim: shown, never trusted)

    def attach(self) -> None:
        handler = self._serve if self._guard is None else self._guard.wrap(SYNC_PROTOCOL, self._serve)
        self._host.set_stream_handler(SYNC_PROTOCOL, handler)

    async def _app(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._runner is not None:
            return await self._runner(fn, *args)
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # ---- client ----

    async def catch_up(self, peers: list[ID]) -> int:
        """Sync from `peers` until we reach the head a peer reported; returns our height.

        Unhelpful or faulty peers are skipped (the height tells how far it got). The chain keeps growing
        meanwhile: the last block or two arrive through the consensus driver's own catch-up."""
        bad: set[ID] = set()
        while True:
            ours = await self._app(self.app.latest_height)
            progressed = False
            for peer in [p for p in peers if p not in bad]:
                try:
                    with trio.fail_after(self.config.sync_timeout):
                        head = await self._sync_batch(peer, ours + 1, self.config.sync_batch)
                except SyncRefused as exc:  # not a fault: the peer holds us to its limits
                    bad.add(peer)
                    self.counters["refused"] += 1
                    log.info("sync from %s at height %d: %s", peer, ours + 1, exc)
                    head = None
                except (P2PError, ConsensusError, trio.TooSlowError, Exception) as exc:  # any peer fault
                    bad.add(peer)
                    self.counters["peer_failed"] += 1
                    log.warning("sync from %s failed at height %d: %s", peer, ours + 1, exc)
                    head = None
                now = await self._app(self.app.latest_height)
                if head is not None and now >= head:
                    return now  # caught up with this peer's head
                if now > ours:
                    progressed = True
                    break
            if not progressed:
                return ours

    async def _sync_batch(self, peer: ID, first: int, count: int) -> int:
        """Fetch, verify and commit up to `count` blocks from `first`; returns the peer's head. A range
        refusal is retried once with the peer's limit; other refusals raise SyncRefused."""
        try:
            return await self._request(peer, first, count)
        except SyncRefused as exc:
            if exc.reason != REFUSED_RANGE or not 0 < exc.limit < count:
                raise
            self.counters["range_retried"] += 1
            return await self._request(peer, first, exc.limit)

    async def _request(self, peer: ID, first: int, count: int) -> int:
        stream = await self._host.new_stream(peer, [SYNC_PROTOCOL])
        try:
            request = wire.Envelope(self.config.chain_id, wire.SYNC_REQUEST, [first, count])
            await wire.write_envelope(stream, request)
            env = await wire.read_envelope(stream, self.config.chain_id, frozenset({wire.SYNC_HEADER, SYNC_REFUSED}))
            fields = wire.as_list(env.body, 2, "sync header")
            if env.kind == SYNC_REFUSED:
                raise SyncRefused(wire.as_int(fields[0], "refusal reason"), wire.as_int(fields[1], "refusal limit"))
            head = wire.as_int(fields[0], "head height")
            self.peer_head = max(self.peer_head, head)
            n = wire.as_int(fields[1], "block count", maximum=count)
            for height in range(first, first + n):
                block, cert = await self._read_block(stream, height)
                await self._app(apply_certified, self.app, self.config.chain_id, height, block, cert)
                self.counters["verified_certificates"] += 1
        finally:
            await wire.reset_quietly(stream, "sync")
        return head

    async def _read_block(self, stream: INetStream, height: int) -> tuple[bytes, CommitCertificate]:
        env = await wire.read_envelope(stream, self.config.chain_id, frozenset({wire.SYNC_BLOCK}), MAX_SYNC_FRAME)
        fields = wire.as_list(env.body, 3, "synced block")
        got = wire.as_int(fields[0], "height")
        if got != height:
            raise SyncError(f"peer sent height {got}, expected {height}")
        try:
            cert = CommitCertificate.decode(wire.as_bytes(fields[2], "certificate"))
        except ConsensusError as exc:
            raise SyncError(f"malformed certificate at height {height}: {exc}") from exc
        return wire.as_bytes(fields[1], "block"), cert

    # ---- server ----

    async def _serve(self, stream: INetStream) -> None:
        peer_id = stream.muxed_conn.peer_id
        self._serving[peer_id] += 1
        try:
            with trio.fail_after(REQUEST_TIMEOUT):  # before taking a serving slot: a silent peer holds none
                first, count = await self._read_request(stream)
                refusal = self._refusal(peer_id, count)
                if refusal is not None:
                    self.counters[f"refused.{REFUSAL_NAMES[refusal[0]]}"] += 1
                    await wire.write_envelope(stream, wire.Envelope(self.config.chain_id, SYNC_REFUSED, list(refusal)))
                    return
            async with self._serve_limiter:
                with trio.fail_after(self.config.sync_timeout):
                    await self._serve_range(stream, first, count)
        except WireError as exc:  # a malformed request
            self.counters["serve_failed"] += 1
            if self._guard is not None:
                self._guard.penalize(peer_id, self._guard.limits.invalid_points, f"bad sync request: {exc}")
            log.info("sync serving %s failed: %r", peer_id, exc)
        except (P2PError, trio.TooSlowError, Exception) as exc:  # a peer's bad request must not kill us
            self.counters["serve_failed"] += 1
            log.info("sync serving %s failed: %r", peer_id, exc)
        finally:
            self._serving[peer_id] -= 1
            if not self._serving[peer_id]:
                del self._serving[peer_id]
            await wire.close_quietly(stream, "sync")

    def _refusal(self, peer_id: ID, count: int) -> tuple[int, int] | None:
        """(reason, limit) when a request of `count` blocks from `peer_id` is refused; None to serve it."""
        if self._guard is None:
            return (REFUSED_RANGE, self.config.sync_batch) if count > self.config.sync_batch else None
        limits = self._guard.limits
        if count > limits.max_sync_blocks:
            return REFUSED_RANGE, limits.max_sync_blocks
        if self._serving[peer_id] > limits.max_sync_serves_per_peer:  # this request is counted already
            return REFUSED_BUSY, limits.max_sync_serves_per_peer
        if not self._guard.allow(peer_id, "sync requests", limits.sync_requests):
            return REFUSED_RATE, int(1000 / limits.sync_requests.per_second) + 1
        return None

    async def _read_request(self, stream: INetStream) -> tuple[int, int]:
        env = await wire.read_envelope(stream, self.config.chain_id, frozenset({wire.SYNC_REQUEST}))
        fields = wire.as_list(env.body, 2, "sync request")
        return wire.as_int(fields[0], "first height", minimum=1), wire.as_int(fields[1], "count")

    async def _serve_range(self, stream: INetStream, first: int, count: int) -> None:
        head = await self._app(self.app.latest_height)
        found = []
        for height in range(first, min(head, first + count - 1) + 1):
            item = await self._app(self.app.committed_block, height)
            if item is None:
                break
            found.append((height, *item))
        header = wire.Envelope(self.config.chain_id, wire.SYNC_HEADER, [head, len(found)])
        await wire.write_envelope(stream, header)
        for height, block, cert in found:
            body = wire.Envelope(self.config.chain_id, wire.SYNC_BLOCK, [height, block, cert.encode()])
            await wire.write_envelope(stream, body, MAX_SYNC_FRAME)
        self.counters["served_blocks"] += len(found)

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)
