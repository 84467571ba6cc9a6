"""BlobFetcher's prefetch queue: bounded for gossip, never for a proposal that waits on its blobs.

The p2p side is a stand-in whose fetch never returns (a provider that is silent): what is tested is the
fetcher's own bookkeeping, on both sides of MAX_QUEUED_PREFETCHES."""

from __future__ import annotations

from types import SimpleNamespace

import trio
import trio.testing

from swarmnode.node.blobfetch import MAX_PREFETCHES, MAX_QUEUED_PREFETCHES, BlobFetcher
from swarmnode.p2p.blobstore import DirectoryBlobStore


class SilentBlobs:
    def __init__(self) -> None:
        self.started = 0

    async def fetch(self, cid: bytes, providers: object = None) -> bytes:
        self.started += 1
        await trio.sleep_forever()
        raise AssertionError("unreachable")


def cid(i: int) -> bytes:
    return i.to_bytes(32, "big")


async def test_gossip_prefetches_stop_queueing_at_the_cap_and_needed_ones_still_start(tmp_path) -> None:  # noqa: ANN001
    blobs = SilentBlobs()
    p2p = SimpleNamespace(blobs=blobs)
    fetcher = BlobFetcher(p2p, DirectoryBlobStore(tmp_path / "blobs"), tmp_path / "blobs", tmp_path / "q")
    fetcher.providers = lambda c: []  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(fetcher.run)
        fetcher.prefetch([cid(i) for i in range(MAX_QUEUED_PREFETCHES - 1)])
        assert fetcher.awaiting == MAX_QUEUED_PREFETCHES - 1 and fetcher.counters["prefetch_skipped"] == 0
        fetcher.prefetch([cid(10**6), cid(10**6 + 1)])  # the last free place, then one too many
        assert fetcher.awaiting == MAX_QUEUED_PREFETCHES and fetcher.counters["prefetch_skipped"] == 1
        fetcher.prefetch([cid(10**6)])  # already queued: neither queued twice nor counted as skipped
        assert fetcher.awaiting == MAX_QUEUED_PREFETCHES and fetcher.counters["prefetch_skipped"] == 1
        with trio.move_on_after(0.2):  # a proposal's blobs are fetched whatever the queue holds
            await fetcher.wait_held([cid(2 * 10**6)])
        assert fetcher.awaiting == MAX_QUEUED_PREFETCHES + 1
        with trio.fail_after(10):
            while blobs.started < MAX_PREFETCHES:  # the first reads of the store run in threads
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert blobs.started == MAX_PREFETCHES, "only MAX_PREFETCHES run at once"
        nursery.cancel_scope.cancel()
