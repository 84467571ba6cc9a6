"""Chain sync on /swarmnode/sync/1: blocks with their commit certificates, by height range.

    request : envelope SYNC_REQUEST [first_height, count]
    response: envelope SYNC_HEADER [head_height, n], then n frames envelope SYNC_BLOCK [height, block, cert]

The client verifies each certificate against the validator set in force at its height
(consensus.certificate.verify_certificate), then the block itself (Application.validate_certified_block), and
only then commits it. A peer that serves anything invalid is skipped for the rest of the catch-up.
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
from swarmnode.p2p.errors import P2PError, SyncError

log = logging.getLogger(__name__)

SYNC_PROTOCOL = TProtocol("/swarmnode/sync/1")
MAX_SYNC_FRAME = 16 * 1024 * 1024 + 512 * 1024  # a block (<= 16 MiB RLP) plus its certificate


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
                 runner: Callable[..., Awaitable[Any]] | None = None) -> None:
        self._host = host
        self.app = app
        self.config = config
        self._runner = runner
        self.limiter = trio.CapacityLimiter(1)
        self._serve_limiter = trio.CapacityLimiter(config.max_concurrent_serves)
        self.counters: Counter[str] = Counter()

    def attach(self) -> None:
        self._host.set_stream_handler(SYNC_PROTOCOL, self._serve)

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
                        head = await self._sync_batch(peer, ours + 1)
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

    async def _sync_batch(self, peer: ID, first: int) -> int:
        """Fetch, verify and commit up to sync_batch blocks from `first`; returns the peer's head."""
        stream = await self._host.new_stream(peer, [SYNC_PROTOCOL])
        try:
            request = wire.Envelope(self.config.chain_id, wire.SYNC_REQUEST, [first, self.config.sync_batch])
            await wire.write_envelope(stream, request)
            env = await wire.read_envelope(stream, self.config.chain_id, frozenset({wire.SYNC_HEADER}))
            fields = wire.as_list(env.body, 2, "sync header")
            head = wire.as_int(fields[0], "head height")
            count = wire.as_int(fields[1], "block count", maximum=self.config.sync_batch)
            for height in range(first, first + count):
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
        try:
            async with self._serve_limiter:
                with trio.fail_after(self.config.sync_timeout):
                    await self._serve_one(stream)
        except (P2PError, trio.TooSlowError, Exception) as exc:  # a peer's bad request must not kill us
            self.counters["serve_failed"] += 1
            log.info("sync serving %s failed: %r", stream.muxed_conn.peer_id, exc)
        finally:
            await wire.close_quietly(stream, "sync")

    async def _serve_one(self, stream: INetStream) -> None:
        env = await wire.read_envelope(stream, self.config.chain_id, frozenset({wire.SYNC_REQUEST}))
        fields = wire.as_list(env.body, 2, "sync request")
        first = wire.as_int(fields[0], "first height", minimum=1)
        count = min(wire.as_int(fields[1], "count"), self.config.sync_batch)
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
