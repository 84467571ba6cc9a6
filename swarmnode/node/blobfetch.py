"""BlobFetcher: gets update and model blobs from peers, verified, with retries; answers "do we hold these?".

- `fetch(cids)`: every blob, from memory (verified in this process a moment ago), the store, or peers
  (announced providers first, then every other peer, each group in random order), retried until a
  deadline while no provider has it yet. A damaged stored copy is quarantined and fetched again.
- `prefetch(cids)`: starts fetching in the background (deduplicated, bounded concurrency): called when a
  commit arrives on gossip (only once TxIngest has checked its signature, sender and round: unverified
  input never queues a fetch), so that the data is here before a block commits to it. At most
  MAX_QUEUED_PREFETCHES wait or run; past that, gossip-driven ones are skipped (a proposal's are not).
- `holds_all(cids)`: the data-availability check. It answers at once from this machine (a file stat per
  blob) and never touches the network: it runs on the chain executor, which must not wait for peers.
- `wait_held(cids)`: starts what is missing (whatever the queue holds) and waits (on the event loop)
  until the prefetches of `cids` are done; the consensus driver calls it before validating a proposal
  that commits to updates. `wait_prefetched(cids)` only waits for prefetches already queued.
- `awaiting`: how many prefetches are running (the driver counts them as pending work).
"""

from __future__ import annotations

import logging
import os
import random
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from swarmnode.p2p import P2PError, P2PNode
from swarmnode.p2p.blobstore import DirectoryBlobStore
from swarmnode.p2p.errors import BlobCorrupted

log = logging.getLogger("swarmnode.node.blobs")

RECENT_BLOB_BYTES = 32 * 1024 * 1024  # a round of updates is ~8 MB with the seed task and 10 participants
FETCH_TIMEOUT = 15.0  # one fetch of a set of blobs, all providers, retries included
MAX_PREFETCHES = 8  # running at once
MAX_QUEUED_PREFETCHES = 512  # started on gossip and not finished; more are skipped (fetched when needed)


class BlobFetcher:
    def __init__(self, p2p: P2PNode, store: DirectoryBlobStore, blob_dir: Path, quarantine_dir: Path,
                 observe: Callable[[float], None] | None = None) -> None:
        self.p2p = p2p
        self._observe = observe or (lambda seconds: None)  # metrics: seconds of each blob fetched from peers
        self.store = store
        self.blob_dir = blob_dir
        self.quarantine_dir = quarantine_dir
        # updates verified in this process (fetched, or trained here), newest last: aggregation reads the
        # round's updates from here rather than re-reading and re-hashing files written a moment ago
        self._recent: OrderedDict[bytes, bytes] = OrderedDict()
        self._recent_bytes = 0
        self._prefetching: dict[bytes, trio.Event] = {}
        self._prefetch_limiter = trio.CapacityLimiter(MAX_PREFETCHES)
        self._nursery: trio.Nursery | None = None
        self.counters = {"bytes_fetched": 0, "prefetched": 0, "prefetch_failed": 0, "prefetch_skipped": 0,
                         "quarantined": 0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hosts the background prefetches until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # ---- data availability ----

    def holds_all(self, cids: list[bytes]) -> bool:
        """Every blob is here (any thread; a stat per blob, never the network)."""
        return all(cid in self._recent or self.store.has(cid) for cid in cids)

    @property
    def awaiting(self) -> int:
        return len(self._prefetching)

    def prefetch(self, cids: list[bytes], *, needed: bool = False) -> bool:
        """Start fetching every blob of `cids` not held and not already being fetched (returns at once);
        False if any was skipped. Gossip-driven prefetches stop queueing at MAX_QUEUED_PREFETCHES (a
        flood of commits cannot pile up tasks without bound); `needed` ones (a proposal waits for them)
        are always started."""
        if self._nursery is None:
            return False
        queued_all = True
        for cid in cids:
            if cid in self._prefetching or cid in self._recent or self.store.has(cid):
                continue
            if not needed and len(self._prefetching) >= MAX_QUEUED_PREFETCHES:
                self.counters["prefetch_skipped"] += 1
                queued_all = False
                continue
            self._prefetching[cid] = trio.Event()
            self._nursery.start_soon(self._prefetch_one, cid)
        return queued_all

    async def _prefetch_one(self, cid: bytes) -> None:
        try:
            async with self._prefetch_limiter:
                await self.fetch([cid])
            self.counters["prefetched"] += 1
        except (P2PError, trio.TooSlowError) as exc:
            self.counters["prefetch_failed"] += 1
            log.warning("event=prefetch_failed cid=0x%s error=%s: %s", cid.hex(), type(exc).__name__, exc)
        finally:
            self._prefetching.pop(cid).set()

    async def wait_held(self, cids: list[bytes]) -> bool:
        """Wait until the running prefetches of `cids` end (start them if needed); True if all are held.
        The caller bounds the wait (trio.move_on_after)."""
        self.prefetch(cids, needed=True)
        return await self.wait_prefetched(cids)

    async def wait_prefetched(self, cids: list[bytes]) -> bool:
        """Wait until the prefetches of `cids` that are queued or running end (starts none); True if all
        are held. The caller bounds the wait."""
        for cid in cids:
            event = self._prefetching.get(cid)
            if event is not None:
                await event.wait()
        return self.holds_all(cids)

    # ---- fetching ----

    async def fetch(self, cids: list[bytes], timeout: float = FETCH_TIMEOUT) -> list[bytes]:
        """Every blob, verified; a blob no provider holds yet is asked for again (its committer's
        neighbours may still be fetching it) until `timeout`, then the last P2PError propagates."""
        held = {cid: self._recent[cid] for cid in cids if cid in self._recent}
        if len(held) < len(cids):
            held.update(await trio.to_thread.run_sync(self._read_held, [c for c in cids if c not in held]))
        out: list[bytes] = []
        deadline = trio.current_time() + timeout
        for cid in cids:
            if cid in held:
                out.append(held[cid])
                continue
            out.append(await self._fetch_one(cid, deadline))
        return out

    async def _fetch_one(self, cid: bytes, deadline: float) -> bytes:
        delay, started = 0.2, trio.current_time()
        while True:
            try:
                had = await trio.to_thread.run_sync(self.store.has, cid)
                with trio.fail_after(max(0.1, deadline - trio.current_time())):
                    blob = await self.p2p.blobs.fetch(cid, providers=self.providers(cid))
                self.remember(cid, blob)  # verified: on arrival, or by the store's read
                if not had:
                    self.counters["bytes_fetched"] += len(blob)
                    self._observe(trio.current_time() - started)
                return blob
            except BlobCorrupted as exc:  # our own copy is damaged on disk: set it aside, fetch again
                await trio.to_thread.run_sync(self.set_aside, cid, exc)
            except P2PError:
                if trio.current_time() + delay >= deadline:
                    raise
                await trio.sleep(delay)
                delay = min(2.0, delay * 2)

    def providers(self, cid: bytes) -> list[Any]:
        """Peers that announced `cid` first, then every other peer; each group in random order, which
        spreads the load over providers and keeps one bad provider from always being asked first or last."""
        announced = self.p2p.blobs.providers(cid)
        others = [p.peer_id for p in self.p2p.peers() if p.peer_id not in announced]
        random.shuffle(announced)
        random.shuffle(others)
        return announced + others

    def remember(self, cid: bytes, blob: bytes) -> None:
        """Keep verified bytes for the aggregation that follows (at most RECENT_BLOB_BYTES, oldest out)."""
        if cid in self._recent:
            self._recent.move_to_end(cid)
            return
        self._recent[cid] = blob
        self._recent_bytes += len(blob)
        while self._recent_bytes > RECENT_BLOB_BYTES and len(self._recent) > 1:
            _, old = self._recent.popitem(last=False)
            self._recent_bytes -= len(old)

    def forget(self, cid: bytes) -> None:
        blob = self._recent.pop(cid, None)
        if blob is not None:
            self._recent_bytes -= len(blob)

    # ---- damaged copies (worker threads) ----

    def _read_held(self, cids: list[bytes]) -> dict[bytes, bytes]:
        """The blobs among `cids` this node holds intact (a damaged copy is quarantined and left out)."""
        found: dict[bytes, bytes] = {}
        for cid in cids:
            try:
                blob = self.store.get(cid)
            except BlobCorrupted as exc:
                self.set_aside(cid, exc)
                continue
            if blob is not None:
                found[cid] = blob
        return found

    def check(self, cid: bytes) -> None:
        """Read our stored copy of `cid` now; a damaged one is set aside before anyone asks for it."""
        try:
            self.store.get(cid)
        except BlobCorrupted as exc:
            self.set_aside(cid, exc)

    def set_aside(self, cid: bytes, exc: BlobCorrupted) -> None:
        """Our stored copy of `cid` is damaged: quarantine it (a later fetch gets it again from peers)."""
        log.error("event=CORRUPT_BLOB cid=0x%s error=%r action=quarantined", cid.hex(), str(exc))
        name = cid.hex()
        path = self.blob_dir / name[:2] / name  # DirectoryBlobStore's layout
        self.quarantine_dir.mkdir(exist_ok=True)
        try:
            os.replace(path, self.quarantine_dir / name)
            self.counters["quarantined"] += 1
        except FileNotFoundError:
            pass

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "prefetching": len(self._prefetching), "recentBytes": self._recent_bytes}
