"""Blob exchange on /swarmnode/blob/1: fetch by content id over raw streams, in chunks, verified.

    request  frame: envelope BLOB_REQUEST [content_id]
    response frame: envelope BLOB_HEADER [status, size], then `size` bytes in frames of <= chunk bytes

Providers are the peers that announced a blob; a provider that fails or serves bytes that do not hash
to the id is dropped for that blob and the next one is tried. Concurrent transfers are bounded both ways.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict

import trio
from eth_hash.auto import keccak
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from swarmnode.p2p import wire
from swarmnode.p2p.blobstore import BlobStore
from swarmnode.p2p.config import P2PConfig
from swarmnode.p2p.errors import BlobCorrupted, BlobError, BlobNotFound, BlobTooLarge, P2PError, WireError

log = logging.getLogger(__name__)

BLOB_PROTOCOL = TProtocol("/swarmnode/blob/1")
STATUS_OK, STATUS_MISSING = 0, 1
MAX_PROVIDERS_PER_BLOB = 64
MAX_TRACKED_BLOBS = 4096  # blobs whose announced providers are remembered


class BlobExchange:
    """Serves `store` to peers and fetches missing blobs from providers into it."""

    def __init__(self, host: IHost, store: BlobStore, config: P2PConfig) -> None:
        self._host = host
        self.store = store
        self.config = config
        # announced providers of recent blobs, oldest first: bounded (a node runs for weeks and sees several
        # announcements per round); a blob whose announcement was forgotten is asked of every peer
        self._providers: OrderedDict[bytes, list[ID]] = OrderedDict()
        self._fetch_limiter = trio.CapacityLimiter(config.max_concurrent_fetches)
        self._serve_limiter = trio.CapacityLimiter(config.max_concurrent_serves)
        self._hash_limiter = trio.CapacityLimiter(1)
        self._inflight: dict[bytes, trio.Event] = {}
        self.counters: Counter[str] = Counter()

    def attach(self) -> None:
        """Start serving: register the stream handler on the host."""
        self._host.set_stream_handler(BLOB_PROTOCOL, self._serve)

    # ---- providers ----

    def add_provider(self, cid: bytes, peer_id: ID) -> None:
        if cid not in self._providers:
            self._providers[cid] = []
            while len(self._providers) > MAX_TRACKED_BLOBS:
                self._providers.popitem(last=False)
        providers = self._providers[cid]
        if peer_id not in providers and peer_id != self._host.get_id() and len(providers) < MAX_PROVIDERS_PER_BLOB:
            providers.append(peer_id)

    def providers(self, cid: bytes) -> list[ID]:
        return list(self._providers.get(cid, ()))

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
                level = logging.DEBUG if type(exc) is BlobError else logging.WARNING
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
        providers = self._providers.get(cid)
        if providers and peer_id in providers:
            providers.remove(peer_id)

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
        try:
            async with self._serve_limiter:
                with trio.fail_after(self.config.blob_timeout):
                    await self._serve_one(stream)
        except (P2PError, trio.TooSlowError, Exception) as exc:  # a peer's bad request must not kill us
            self.counters["serve_failed"] += 1
            log.info("serving a blob to %s failed: %s", stream.muxed_conn.peer_id, exc)
        finally:
            await wire.close_quietly(stream, "blob")

    async def _serve_one(self, stream: INetStream) -> None:
        env = await wire.read_envelope(stream, self.config.chain_id, frozenset({wire.BLOB_REQUEST}))
        cid = wire.as_bytes(wire.as_list(env.body, 1, "blob request")[0], "content id", length=32)
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
