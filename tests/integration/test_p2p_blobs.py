"""Blob exchange between real py-libp2p hosts: 8 MB fetch verified, corrupt provider detected, retries."""

from __future__ import annotations

import os

import pytest
import trio

from swarmnode.p2p.blobstore import DirectoryBlobStore, MemoryBlobStore, content_id
from swarmnode.p2p.errors import BlobNotFound
from swarmnode.p2p.node import P2PNode
from swarmnode.p2p.testing import star
from swarmnode.p2p.topics import UPDATES

MB = 1024 * 1024


class CorruptingStore(MemoryBlobStore):
    """A malicious provider: serves every blob with one byte flipped."""

    def get(self, cid: bytes) -> bytes | None:
        blob = super().get(cid)
        if blob is None:
            return None
        return blob[:100] + bytes([blob[100] ^ 0xFF]) + blob[101:]


async def wait_providers(node: P2PNode, cid: bytes, count: int) -> None:
    async for _msg in node.gossip.channel(UPDATES):
        if len(node.blobs.providers(cid)) >= count:
            return


async def test_8mb_blob_fetched_in_chunks_and_verified(tmp_path) -> None:
    blob = os.urandom(8 * MB)
    async with star(2) as (server, client):
        client.blobs.store = DirectoryBlobStore(tmp_path)
        with trio.fail_after(20):
            await client.gossip.wait_mesh(UPDATES, [server.peer_id])
            await server.gossip.wait_mesh(UPDATES, [client.peer_id])
        cid = await server.announce_blob(3, blob)
        with trio.fail_after(10):
            await wait_providers(client, cid, 1)
        with trio.fail_after(30):
            got = await client.blobs.fetch(cid, size=len(blob))
        assert got == blob and content_id(got) == cid
        assert client.blobs.store.get(cid) == blob, "fetched blob not kept in the store"
        assert server.blobs.statistics().get("served") == 1


async def test_corrupt_provider_detected_and_another_used() -> None:
    blob = os.urandom(2 * MB)
    cid = content_id(blob)
    async with star(3) as (client, liar, honest):
        liar.blobs.store = CorruptingStore()
        for node in (liar, honest):
            node.blobs.store.put(blob)
        with trio.fail_after(20):
            await client.host.wait_peers(2)
        # the liar is asked first
        with trio.fail_after(30):
            got = await client.blobs.fetch(cid, providers=[liar.peer_id, honest.peer_id])
        assert got == blob
        stats = client.blobs.statistics()
        assert stats.get("corrupted") == 1 and stats.get("fetched") == 1, stats


async def test_a_provider_that_never_answers_costs_only_the_stagger() -> None:
    """A provider that accepts the request and then says nothing (a host cut off mid-connection, a stalled
    peer) is asked first: the next provider is asked after blob_stagger, and its copy wins."""
    from swarmnode.p2p.blobs import BLOB_PROTOCOL

    blob = os.urandom(MB)
    cid = content_id(blob)
    async with star(3) as (client, silent, honest):
        async def never_answer(stream: object) -> None:
            await trio.sleep_forever()

        silent.host.libp2p.set_stream_handler(BLOB_PROTOCOL, never_answer)
        honest.blobs.store.put(blob)
        with trio.fail_after(20):
            await client.host.wait_peers(2)
        t0 = trio.current_time()
        with trio.fail_after(10):
            got = await client.blobs.fetch(cid, providers=[silent.peer_id, honest.peer_id])
        took = trio.current_time() - t0
        assert got == blob
        assert took < client.config.blob_stagger + 3, f"the silent provider cost {took:.1f} s"
        assert client.blobs.statistics().get("fetched") == 1


async def test_fetch_fails_cleanly_when_nobody_has_it() -> None:
    async with star(2) as (client, other):
        with trio.fail_after(20):
            await client.host.wait_peers(1)
        with trio.fail_after(10), pytest.raises(BlobNotFound, match="not obtained from 1 provider"):
            await client.blobs.fetch(b"\x07" * 32, providers=[other.peer_id])


def test_directory_store_detects_damage_on_disk(tmp_path) -> None:
    store = DirectoryBlobStore(tmp_path)
    cid = store.put(b"hello blob")
    assert store.get(cid) == b"hello blob" and store.has(cid)
    path = tmp_path / cid.hex()[:2] / cid.hex()
    path.write_bytes(b"jello blob")
    from swarmnode.p2p.errors import BlobCorrupted
    with pytest.raises(BlobCorrupted):
        store.get(cid)


def test_announced_providers_are_remembered_for_a_bounded_number_of_blobs() -> None:
    from libp2p.peer.id import ID

    from swarmnode.p2p.blobs import MAX_TRACKED_BLOBS, BlobExchange
    from swarmnode.p2p.testing import make_config

    class Host:  # only its own id is consulted when recording providers
        def get_id(self) -> ID:
            return ID(b"self")

    blobs = BlobExchange(Host(), MemoryBlobStore(), make_config(0))  # type: ignore[arg-type]
    peer = ID(b"peer")
    for n in range(MAX_TRACKED_BLOBS):
        blobs.add_provider(n.to_bytes(32, "big"), peer)
    assert blobs.providers((0).to_bytes(32, "big")) == [peer], "at the cap, nothing is forgotten yet"
    blobs.add_provider(MAX_TRACKED_BLOBS.to_bytes(32, "big"), peer)
    assert blobs.providers((0).to_bytes(32, "big")) == [], "past the cap, the oldest blob is forgotten"
    assert blobs.providers((1).to_bytes(32, "big")) == [peer]
    assert blobs.providers(MAX_TRACKED_BLOBS.to_bytes(32, "big")) == [peer]


async def test_each_yamux_frame_of_a_blob_is_one_noise_message(monkeypatch) -> None:  # noqa: ANN001
    """A full yamux data frame fits one Noise transport message (swarmnode.p2p.yamux_credit): py-libp2p's
    64 KiB frames went out as two Noise messages each, doubling encryptions, writes and reads."""
    from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
    from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE

    sizes: list[int] = []
    original = NoiseTransportReadWriter.encrypt

    def counting(self, data: bytes) -> bytes:  # noqa: ANN001
        sizes.append(len(data))
        return original(self, data)

    blob = os.urandom(2 * MB)
    async with star(2) as (server, client):
        cid = server.blobs.store.put(blob)
        with trio.fail_after(20):
            await client.host.wait_peers(1)
        monkeypatch.setattr(NoiseTransportReadWriter, "encrypt", counting)
        with trio.fail_after(30):
            assert await client.blobs.fetch(cid, providers=[server.peer_id], size=len(blob)) == blob
    frames = -(-len(blob) // (MAX_PLAINTEXT_LENGTH - HEADER_SIZE))
    data_messages = [s for s in sizes if s > 1024]
    assert len(data_messages) <= frames + 2, (len(data_messages), frames)  # (the 1 MiB chunks' boundaries)
    assert len(sizes) <= 2 * frames, sizes  # window updates included: batched, a few per blob
