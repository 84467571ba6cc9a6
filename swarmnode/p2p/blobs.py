"""Blob exchange on /swarmnode/blob/1: fetch by content id over raw streams, in chunks, verified.

    request  frame: envelope BLOB_REQUEST [content_id]
    response frame: envelope BLOB_HEADER [status, size], then `size` bytes in frames of <= chunk bytes
    status: 0 ok, 1 missing, 2 busy (this peer has too many requests running or sent too many lately:
            ask someone else)

Providers are the peers that announced a blob; a provider that fails or serves bytes that do not hash
to the id is dropped for that blob and the next one is tried. Concurrent transfers are bounded both ways:
in all (max_concurrent_serves / max_concurrent_fetches) and per requesting peer (Limits:
max_blob_serves_per_peer, blob_requests per second, max_streams_per_protocol open streams).

Provider records (who announced which blob, for which learning round) are bounded: at most
MAX_TRACKED_BLOBS blobs, MAX_PROVIDERS_PER_BLOB providers each, MAX_ANNOUNCED_PER_ROUND blobs per
announcer and round, and only the newest KEEP_PROVIDER_ROUNDS rounds (`prune_providers` drops older ones
when rounds finalize; a newer round's announcement does too).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import trio
from eth_hash.auto import keccak
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from swarmnode.p2p import wire
from swarmnode.p2p.blobstore import BlobStore
from swarmnode.p2p.config import P2PConfig
from swarmnode.p2p.errors import BlobCorrupted, BlobError, BlobNotFound, BlobTooLarge, P2PError, WireError
from swarmnode.p2p.host import PeerGuard

log = logging.getLogger(__name__)

BLOB_PROTOCOL = TProtocol("/swarmnode/blob/1")
STATUS_OK, STATUS_MISSING, STATUS_BUSY = 0, 1, 2
MAX_PROVIDERS_PER_BLOB = 64
MAX_TRACKED_BLOBS = 4096  # blobs whose announced providers are remembered
MAX_ANNOUNCED_PER_ROUND = 4  # distinct blobs one announcer is remembered for in one round (an honest one: 1)
KEEP_PROVIDER_ROUNDS = 3  # the newest announced round and the two before it
REQUEST_TIMEOUT = 5.0  # seconds a peer gets to send its request once its stream is open


class BlobBusy(BlobError):
    """The provider refused the request for now (too many requests from us): ask another one."""


@dataclass
class _Providers:
    round: int | None  # the learning round it was announced for (None: not announced, e.g. added by hand)
    peers: list[ID] = field(default_factory=list)


class BlobExchange:
    """Serves `store` to peers and fetches missing blobs from providers into it."""

    def __init__(self, host: IHost, store: BlobStore, config: P2PConfig, guard: PeerGuard | None = None) -> None:
        self._host = host
        self.store = store
        self.config = config
        self._guard = guard
        # announced providers of recent blobs, oldest first: bounded (a node runs for weeks and sees several
        # announcements per round); a blob whose announcement was forgotten is asked of every peer
        self._providers: OrderedDict[bytes, _Providers] = OrderedDict()
        self._announced: Counter[tuple[ID, int]] = Counter()  # (announcer, round) -> blobs remembered
        self._newest_round = -1
        self._fetch_limiter = trio.CapacityLimiter(config.max_concurrent_fetches)
        self._serve_limiter = trio.CapacityLimiter(config.max_concurrent_serves)
        self._serving: Counter[ID] = Counter()  # requests being served, per peer
        self._hash_limiter = trio.CapacityLimiter(1)
        self._inflight: dict[bytes, trio.Event] = {}
        self.counters: Counter[str] = Counter()

    def attach(self) -> None:
        """Start serving: register the stream handler on the host."""
        handler = self._serve if self._guard is None else self._guard.wrap(BLOB_PROTOCOL, self._serve)
        self._host.set_stream_handler(BLOB_PROTOCOL, handler)

    # ---- providers ----

    def add_provider(self, cid: bytes, peer_id: ID, round_: int | None = None) -> bool:
        """Remember `peer_id` as a provider of `cid` (announced for learning round `round_`); False when
        the record is refused: a round older than the ones kept, or an announcer past its quota."""
        if round_ is not None:
            if round_ < self._newest_round - KEEP_PROVIDER_ROUNDS + 1:
                self.counters["announcement_stale"] += 1
                return False
            if round_ > self._newest_round:
                self._newest_round = round_
                self.prune_providers(round_ - KEEP_PROVIDER_ROUNDS + 1)
        record = self._providers.get(cid)
        if record is not None and peer_id in record.peers:
            return True
        if round_ is not None:
            key = (peer_id, round_)
            if self._announced[key] >= MAX_ANNOUNCED_PER_ROUND or (
                    key not in self._announced and len(self._announced) >= MAX_TRACKED_BLOBS):
                self.counters["announcement_quota"] += 1
                return False
            self._announced[key] += 1
        if record is None:
            record = self._providers[cid] = _Providers(round_)
            while len(self._providers) > MAX_TRACKED_BLOBS:
                self._providers.popitem(last=False)
        providers = record.peers
        if peer_id != self._host.get_id() and len(providers) < MAX_PROVIDERS_PER_BLOB:
            providers.append(peer_id)
        return True

    def providers(self, cid: bytes) -> list[ID]:
        record = self._providers.get(cid)
        return list(record.peers) if record is not None else []

    def prune_providers(self, below_round: int) -> int:
        """Forget the provider records of rounds before `below_round` (those rounds are final); returns
        how many blobs were forgotten. Records without a round are kept (bounded by MAX_TRACKED_BLOBS)."""
        old = [cid for cid, record in self._providers.items() if record.round is not None and record.round < below_round]
        for cid in old:
            del self._providers[cid]
        for key in [k for k in self._announced if k[1] < below_round]:
            del self._announced[key]
        self.counters["providers_pruned"] += len(old)
        return len(old)

    def tracked(self) -> dict[str, int]:
        """Sizes of the provider tables (for tests and statistics)."""
        return {"blobs": len(self._providers), "providers": sum(len(r.peers) for r in self._providers.values()),
                "announcers": len(self._announced)}

    # ---- fetching ----

    async def fetch(self, cid: bytes, *, providers: list[ID] | None = None, size: int | None = None) -> bytes:
        """The blob `cid`, from the store or from a provider (verified, then stored).

        Raises BlobNotFound when no provider delivers it intact."""
        while cid in self._inflight:  # someone is already fetching it: wait for that outcome
            await self._inflight[cid].wait()
        held = await trio.to_thread.run_sync(self.store.get, cid)
        if held is not None:
            return held
        done = self._inflight[cid] = trio.Event()
        try:
            async with self._fetch_limiter:
                return await self._fetch_any(cid, providers, size)
        finally:
            del self._inflight[cid]
            done.set()

    async def _fetch_any(self, cid: bytes, providers: list[ID] | None, size: int | None) -> bytes:
        """Ask providers in order, staggered: the next one is asked as well when the current one has
        neither answered (a header) nor failed within `blob_stagger` seconds; a provider that answers is
        left to finish alone. The first intact copy wins and the other transfers are cancelled."""
        candidates = list(providers) if providers is not None else self.providers(cid)
        errors: list[str] = []
        won: list[bytes] = []

        async def attempt(peer_id: ID, answered: trio.Event, ended: trio.Event) -> None:
            try:
                with trio.fail_after(self.config.blob_timeout):
                    blob = await self._fetch_from(peer_id, cid, size, answered)
            except (P2PError, trio.TooSlowError, Exception) as exc:  # any provider failure: try the next
                reason = f"{type(exc).__name__}: {exc}"
                self.counters["provider_failed" if not isinstance(exc, BlobCorrupted) else "corrupted"] += 1
                # a peer that simply lacks the blob is routine (it is asked because it is a peer); a
                # corrupt copy or a broken transfer is worth a warning
                level = logging.DEBUG if type(exc) in (BlobError, BlobBusy) else logging.WARNING
                log.log(level, "blob 0x%s from %s failed: %s", cid.hex()[:16], peer_id, reason)
                errors.append(f"{peer_id}: {reason}")
                self._drop_provider(cid, peer_id)
            else:
                if not won:
                    won.append(blob)
                    nursery.cancel_scope.cancel()
            finally:
                ended.set()

        async with trio.open_nursery() as nursery:
            for peer_id in candidates:
                answered, ended = trio.Event(), trio.Event()
                nursery.start_soon(attempt, peer_id, answered, ended)
                with trio.move_on_after(self.config.blob_stagger):
                    await _first(answered, ended)
                if answered.is_set():
                    await ended.wait()  # a live provider: let it finish before asking anyone else
                if won:
                    break
        if not won:
            raise BlobNotFound(f"blob 0x{cid.hex()} not obtained from {len(candidates)} provider(s): {errors}")
        await trio.to_thread.run_sync(self.store.put_verified, cid, won[0])
        self.counters["fetched"] += 1
        return won[0]

    def _drop_provider(self, cid: bytes, peer_id: ID) -> None:
        record = self._providers.get(cid)
        if record is not None and peer_id in record.peers:
            record.peers.remove(peer_id)

    async def _fetch_from(self, peer_id: ID, cid: bytes, size: int | None, answered: trio.Event) -> bytes:
        stream = await self._host.new_stream(peer_id, [BLOB_PROTOCOL])
        try:
            await wire.write_envelope(stream, wire.Envelope(self.config.chain_id, wire.BLOB_REQUEST, [cid]))
            total = await self._read_header(stream, cid, size)
            answered.set()
            blob, digest = await self._read_body(stream, total)
        finally:
            await wire.reset_quietly(stream, "blob")
        if digest != cid:
            raise BlobCorrupted(f"peer {peer_id} served {len(blob)} bytes that do not hash to 0x{cid.hex()}")
        return blob

    async def _read_header(self, stream: INetStream, cid: bytes, size: int | None) -> int:
        env = await wire.read_envelope(stream, self.config.chain_id, frozenset({wire.BLOB_HEADER}))
        fields = wire.as_list(env.body, 2, "blob header")
        status, total = wire.as_int(fields[0], "status"), wire.as_int(fields[1], "size")
        if status == STATUS_MISSING:
            raise BlobError(f"peer does not hold blob 0x{cid.hex()}")
        if status == STATUS_BUSY:
            raise BlobBusy(f"peer is busy: blob 0x{cid.hex()} not served now")
        if status != STATUS_OK:
            raise WireError(f"unknown blob status {status}")
        if total > self.config.max_blob_bytes:
            raise BlobTooLarge(f"blob of {total} bytes exceeds the {self.config.max_blob_bytes}-byte limit")
        if size is not None and total != size:
            raise BlobCorrupted(f"peer offers {total} bytes, the announcement said {size}")
        return total

    async def _read_body(self, stream: INetStream, total: int) -> tuple[bytes, bytes]:
        """The body and its keccak256, hashed chunk by chunk in a worker thread while the next chunk
        arrives (keccak of 8 MB takes ~30-90 ms: too long for the event loop, too slow to do after)."""
        hasher = keccak.new(b"")
        buf = bytearray()
        send, recv = trio.open_memory_channel[bytes](4)

        async def hash_chunks() -> None:
            async for chunk in recv:
                await trio.to_thread.run_sync(hasher.update, chunk, limiter=self._hash_limiter)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hash_chunks)
            async with send:
                while len(buf) < total:
                    chunk = await wire.read_frame(stream, self.config.blob_chunk_bytes)
                    if not chunk or len(buf) + len(chunk) > total:
                        raise WireError(f"blob chunk of {len(chunk)} bytes at {len(buf)} of {total}")
                    buf += chunk
                    await send.send(chunk)
        return bytes(buf), hasher.digest()

    # ---- serving ----

    async def _serve(self, stream: INetStream) -> None:
        peer_id = stream.muxed_conn.peer_id
        self._serving[peer_id] += 1
        try:
            with trio.fail_after(REQUEST_TIMEOUT):  # before taking a serving slot: a silent peer holds none
                env = await wire.read_envelope(stream, self.config.chain_id, frozenset({wire.BLOB_REQUEST}))
                cid = wire.as_bytes(wire.as_list(env.body, 1, "blob request")[0], "content id", length=32)
                busy = self._busy(peer_id)
                if busy:
                    self.counters[f"refused.{busy}"] += 1
                    await wire.write_envelope(stream, wire.Envelope(self.config.chain_id, wire.BLOB_HEADER,
                                                                    [STATUS_BUSY, 0]))
                    return
            async with self._serve_limiter:
                with trio.fail_after(self.config.blob_timeout):
                    await self._serve_one(stream, cid)
        except WireError as exc:  # a malformed request
            self.counters["serve_failed"] += 1
            if self._guard is not None:
                self._guard.penalize(peer_id, self._guard.limits.invalid_points, f"bad blob request: {exc}")
            log.info("serving a blob to %s failed: %s", peer_id, exc)
        except (P2PError, trio.TooSlowError, Exception) as exc:  # a peer's bad request must not kill us
            self.counters["serve_failed"] += 1
            log.info("serving a blob to %s failed: %s", peer_id, exc)
        finally:
            self._serving[peer_id] -= 1
            if not self._serving[peer_id]:
                del self._serving[peer_id]
            await wire.close_quietly(stream, "blob")

    def _busy(self, peer_id: ID) -> str:
        """Why a request from `peer_id` is refused now ("" to serve it)."""
        if self._guard is None:
            return ""
        limits = self._guard.limits
        if self._serving[peer_id] > limits.max_blob_serves_per_peer:  # this request is counted already
            return "busy"
        if not self._guard.allow(peer_id, "blob requests", limits.blob_requests):
            return "rate"
        return ""

    async def _serve_one(self, stream: INetStream, cid: bytes) -> None:
        blob = await trio.to_thread.run_sync(self.store.get, cid)
        header = [STATUS_MISSING, 0] if blob is None else [STATUS_OK, len(blob)]
        await wire.write_envelope(stream, wire.Envelope(self.config.chain_id, wire.BLOB_HEADER, header))
        if blob is None:
            return
        view = memoryview(blob)
        step = self.config.blob_chunk_bytes
        for offset in range(0, len(blob), step):
            await wire.write_frame(stream, bytes(view[offset:offset + step]))
        self.counters["served"] += 1

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)


async def _first(*events: trio.Event) -> None:
    """Return as soon as any of `events` is set."""
    async with trio.open_nursery() as nursery:
        for event in events:
            async def wait(e: trio.Event = event) -> None:
                await e.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)
