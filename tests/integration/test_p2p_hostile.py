"""Hostile peers against real py-libp2p hosts on 127.0.0.1 (port 0).

Every limit of swarmnode.p2p.config.Limits is tested on both sides (just inside: served or delivered;
just past: refused, dropped or reset); a flooder is banned, refused for its back-off and admitted after
it; a flood of garbage, oversize and unsigned frames on every protocol at once (from a separate process)
leaves honest traffic flowing, and its latency is measured and printed (run with -s to see it);
announcements from non-participants are ignored; commits that fail their checks start no fetch.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from libp2p.pubsub.pb import rpc_pb2

from consensus.certificate import CommitCertificate
from consensus.messages import VoteMessage
from consensus.messages import encode as encode_consensus
from consensus.votes import STEP_PREVOTE, address_of, sign_vote
from swarmnode.p2p import wire
from swarmnode.p2p.blobs import BLOB_PROTOCOL, STATUS_BUSY, STATUS_MISSING, STATUS_OK
from swarmnode.p2p.blobstore import MemoryBlobStore
from swarmnode.p2p.config import Limits, Rate
from swarmnode.p2p.direct import CONSENSUS_PROTOCOL
from swarmnode.p2p.errors import BlobNotFound, P2PError
from swarmnode.p2p.node import P2PNode
from swarmnode.p2p.peers import PEERS_PROTOCOL
from swarmnode.p2p.sync import (
    REFUSED_BUSY,
    REFUSED_RANGE,
    REFUSED_RATE,
    SYNC_PROTOCOL,
    SYNC_REFUSED,
)
from swarmnode.p2p.testing import TEST_CHAIN_ID, make_config, node_secret
from swarmnode.p2p.topics import CONSENSUS, TX, UPDATES, Announcement, TopicPolicy

ROOT = Path(__file__).resolve().parents[2]
JOIN = 20
LOOPBACK = "127.0.0.1"
NEVER = 1e-3  # tokens per second: a bucket that does not refill during a test


# ---- helpers ----

async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0,
                   describe: Callable[[], object] = lambda: "") -> None:
    """Poll `predicate` (counters change without an event to wait on); AssertionError with `describe()`."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"not true after {timeout} s: {describe()}")


def config(i: int, limits: Limits | None = None, **overrides: Any) -> Any:
    overrides.setdefault("peer_exchange", False)
    return make_config(i, limits=limits or Limits(), **overrides)


@asynccontextmanager
async def running(*nodes: P2PNode) -> AsyncIterator[list[P2PNode]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(n.run()) for n in nodes]


async def join(a: P2PNode, b: P2PNode) -> None:
    """`a` dials `b`; both have passed the handshake on return."""
    await a.host.connect(b.listen_addrs()[0])
    with trio.fail_after(JOIN):
        await a.host.wait_peer(b.peer_id)
        await b.host.wait_peer(a.peer_id)


def vote_of(i: int, height: int = 1, round_: int = 0) -> bytes:
    return encode_consensus(VoteMessage(sign_vote(node_secret(i), TEST_CHAIN_ID, height, round_, STEP_PREVOTE,
                                                  b"\x11" * 32)))


def known(*signers: int) -> dict[str, TopicPolicy]:
    validators = {address_of(node_secret(i)) for i in signers}
    return {CONSENSUS: TopicPolicy(wire.MAX_GOSSIP_BYTES, known_sender=validators.__contains__)}


def raw_envelope(kind: int, body: Any) -> bytes:
    return msgpack.packb([wire.WIRE_VERSION, TEST_CHAIN_ID, kind, body], use_bin_type=True)


async def until_closed(stream: Any) -> None:
    """Return once the other side has reset or closed `stream`."""
    try:
        while await stream.read(65536):
            pass
    except Exception:  # noqa: BLE001 - a reset surfaces as an exception: the awaited event
        return


async def blob_request(node: P2PNode, peer: Any, cid: bytes) -> int:
    """One raw /swarmnode/blob/1 request; the status of the answer (the body is left unread)."""
    stream = await node.host.libp2p.new_stream(peer, [BLOB_PROTOCOL])
    try:
        await wire.write_envelope(stream, wire.Envelope(TEST_CHAIN_ID, wire.BLOB_REQUEST, [cid]))
        env = await wire.read_envelope(stream, TEST_CHAIN_ID, frozenset({wire.BLOB_HEADER}))
        return int(env.body[0])
    finally:
        await wire.reset_quietly(stream, "blob")


async def sync_request(node: P2PNode, peer: Any, first: int, count: int) -> tuple[int, list[int]]:
    """One raw /swarmnode/sync/1 request: (kind of the answer, its body); blocks of a header are read."""
    stream = await node.host.libp2p.new_stream(peer, [SYNC_PROTOCOL])
    try:
        await wire.write_envelope(stream, wire.Envelope(TEST_CHAIN_ID, wire.SYNC_REQUEST, [first, count]))
        env = await wire.read_envelope(stream, TEST_CHAIN_ID, frozenset({wire.SYNC_HEADER, SYNC_REFUSED}))
        if env.kind == wire.SYNC_HEADER:
            for _ in range(env.body[1]):
                await wire.read_frame(stream, 1 << 20)
        return env.kind, list(env.body)
    finally:
        await wire.reset_quietly(stream, "sync")


class FakeChain:
    """Serves `height` made-up blocks over sync (the server side never checks what it serves)."""

    def __init__(self, height: int) -> None:
        self.height = height

    def latest_height(self) -> int:
        return self.height

    def committed_block(self, h: int) -> tuple[bytes, CommitCertificate] | None:
        if not 0 < h <= self.height:
            return None
        return b"block %d" % h, CommitCertificate(TEST_CHAIN_ID, h, 0, b"\x00" * 32, (b"\x01" * 65,))

    def block_hash(self, block: bytes) -> bytes:
        return b"\x02" * 32  # never the certificate's: a client's check fails after the transfer


# ---- connections ----

async def test_inbound_connections_release_their_slots_when_they_close() -> None:
    """py-libp2p 0.8.1's inbound handler kept a slot of its 250-slot limiter until the swarm stopped, so
    250 connect/disconnect cycles closed a node to inbound connections for good. Ours ends with the
    connection: after each cycle nothing is held."""
    async with running(P2PNode(config(0))) as (victim,):
        swarm = victim.host.libp2p.get_network()
        for k in range(4):
            async with running(P2PNode(config(10 + k))) as (peer,):
                await join(peer, victim)
                assert victim.host.inbound_handlers == 1 and victim.host.guard.inbound_peers(LOOPBACK) == 1
                # (a py-libp2p host stopped in-process leaves its sockets open: hang up first)
                await peer.host.libp2p.disconnect(victim.peer_id)
            await wait_for(lambda: not victim.peers() and victim.host.inbound_handlers == 0)
            assert victim.host.guard.inbound_peers(LOOPBACK) == 0
            assert swarm._inbound_limiter.borrowed_tokens == 0, "py-libp2p's leaking limiter was used"


async def test_inbound_peers_per_ip() -> None:
    async with running(P2PNode(config(0, Limits(max_inbound_per_ip=2))),
                       *(P2PNode(config(20 + k)) for k in range(4))) as (victim, a, b, c, d):
        await join(a, victim)
        await join(b, victim)  # inside: 2 peers from 127.0.0.1
        with pytest.raises(P2PError):  # past: refused before the Noise handshake (py-libp2p dials 4 times)
            await c.host.connect(victim.listen_addrs()[0])
        assert victim.host.counters["inbound_refused.peers from this address"] >= 1
        assert victim.host.peer(c.peer_id) is None and victim.host.guard.inbound_peers(LOOPBACK) == 2
        await a.host.libp2p.disconnect(victim.peer_id)
        await wait_for(lambda: victim.host.guard.inbound_peers(LOOPBACK) == 1)
        await join(d, victim)  # a place is free again


async def test_inbound_connections_per_second_per_ip() -> None:
    async with running(P2PNode(config(0, Limits(inbound_per_ip=Rate(NEVER, 3)))),
                       *(P2PNode(config(25 + k)) for k in range(4))) as (victim, *peers):
        for peer in peers[:3]:  # inside: the burst
            await join(peer, victim)
        with pytest.raises(P2PError):  # past it
            await peers[3].host.connect(victim.listen_addrs()[0])
        assert victim.host.counters["inbound_refused.rate"] >= 1 and victim.host.peer(peers[3].peer_id) is None


async def test_handshakes_in_progress_per_ip() -> None:
    limits = Limits(max_upgrading_per_ip=2)
    async with running(P2PNode(config(0, limits))) as (victim,):
        port = int(victim.listen_addrs()[0].split("/")[4])
        silent = [await trio.open_tcp_stream(LOOPBACK, port) for _ in range(2)]  # inside: say nothing
        await wait_for(lambda: victim.host.guard.upgrading(LOOPBACK) == 2)
        third = await trio.open_tcp_stream(LOOPBACK, port)  # past: closed at once, nothing read
        with trio.fail_after(5):
            assert await third.receive_some(1024) == b""
        assert victim.host.counters["inbound_refused.handshakes in progress"] == 1
        for s in [*silent, third]:
            await s.aclose()
        await wait_for(lambda: victim.host.guard.upgrading(LOOPBACK) == 0)
        async with running(P2PNode(config(30))) as (peer,):  # and the slots are back
            await join(peer, victim)


async def test_max_peers_closes_an_inbound_connection_from_one_more_peer() -> None:
    async with running(P2PNode(config(0, max_peers=2)), *(P2PNode(config(40 + k)) for k in range(3))) as nodes:
        victim, a, b, c = nodes
        await join(a, victim)
        await join(b, victim)  # inside
        try:
            await c.host.connect(victim.listen_addrs()[0])  # past: up, then closed by the victim
        except P2PError:
            pass
        await wait_for(lambda: victim.host.counters["connection_refused.max peers"] == 1)
        await wait_for(lambda: not victim.host.libp2p.get_network().get_connections(c.peer_id))
        assert {p.peer_id for p in victim.peers()} == {a.peer_id, b.peer_id}


async def test_streams_per_peer_per_protocol() -> None:
    async with running(P2PNode(config(0, Limits(max_streams_per_protocol=2))), P2PNode(config(1))) as nodes:
        victim, attacker = nodes
        await join(attacker, victim)
        guard = victim.host.guard
        open_ = [await attacker.host.libp2p.new_stream(victim.peer_id, [BLOB_PROTOCOL]) for _ in range(2)]
        await wait_for(lambda: guard.open_streams(attacker.peer_id, BLOB_PROTOCOL) == 2)  # inside: both held
        with trio.fail_after(5):  # past: reset unread (the reset may even beat py-libp2p's negotiation)
            try:
                third = await attacker.host.libp2p.new_stream(victim.peer_id, [BLOB_PROTOCOL])
            except Exception:  # noqa: BLE001 - a stream reset during negotiation: the expected outcome
                pass
            else:
                await until_closed(third)
        assert guard.counters["stream_refused.streams"] == 1
        await open_[0].reset()
        await wait_for(lambda: guard.open_streams(attacker.peer_id, BLOB_PROTOCOL) == 1)
        with trio.fail_after(5):  # a place is free again: served
            assert await blob_request(attacker, victim.peer_id, b"\x07" * 32) == STATUS_MISSING
        await open_[1].reset()


async def test_peer_listing_requests_per_second() -> None:
    limits = Limits(control_streams=Rate(NEVER, 3))
    async with running(P2PNode(config(0, limits)), P2PNode(config(1))) as (victim, attacker):
        await join(attacker, victim)
        for _ in range(3):  # inside
            await attacker.peer_exchange.exchange(victim.peer_id)
        assert attacker.peer_exchange.counters["exchanges"] == 3
        await attacker.peer_exchange.exchange(victim.peer_id)  # past: the stream is reset
        assert attacker.peer_exchange.counters["exchanges"] == 3 and attacker.peer_exchange.counters["failed"] == 1
        assert victim.host.guard.counters["over_rate./swarmnode/peers/1"] == 1


# ---- consensus ----

async def test_consensus_flooder_is_dropped_banned_refused_for_its_back_off_then_admitted() -> None:
    limits = Limits(consensus_frames=Rate(NEVER, 20), ban_points=10, ban_initial=3.0)
    victim = P2PNode(config(0, limits), policies=known(1))
    async with running(victim, P2PNode(config(1), policies=known(1))) as (victim, flooder):
        await join(flooder, victim)
        stream = await flooder.host.libp2p.new_stream(victim.peer_id, [CONSENSUS_PROTOCOL])
        for h in range(1, 21):  # inside: the whole burst is delivered
            await wire.write_frame(stream, vote_of(1, height=h))
        with trio.fail_after(10):
            for h in range(1, 21):
                assert await victim.consensus.inbound.receive() == vote_of(1, height=h)
        try:
            for h in range(21, 200):  # past: dropped unread, 1 point each; banned at 10
                await wire.write_frame(stream, vote_of(1, height=h))
        except Exception:  # noqa: BLE001 - the victim disconnects us mid-flood: the point
            pass
        await wait_for(lambda: victim.host.guard.banned(flooder.peer_id))
        assert victim.consensus.counters["over_rate"] >= 10
        assert victim.consensus.inbound.statistics().current_buffer_used == 0, "a frame past the rate was delivered"
        await wait_for(lambda: not victim.host.libp2p.get_network().get_connections(flooder.peer_id))
        assert victim.host.peer(flooder.peer_id) is None
        # refused during the back-off: a new connection is closed on sight, never handshaken
        banned_at = trio.current_time()
        try:
            await flooder.host.connect(victim.listen_addrs()[0])
        except P2PError:
            pass
        await wait_for(lambda: victim.host.counters["connection_refused.banned"] >= 1)
        assert victim.host.peer(flooder.peer_id) is None
        # after it: admitted again (and a second ban lasts twice as long)
        await trio.sleep(max(0.0, victim.host.guard.ban_remaining(flooder.peer_id)) + 0.1)
        assert trio.current_time() - banned_at < limits.ban_initial + 1
        await join(flooder, victim)
        victim.host.guard.ban(flooder.peer_id, "again")
        assert 2 * limits.ban_initial - 0.5 < victim.host.guard.ban_remaining(flooder.peer_id) <= 2 * limits.ban_initial
        await wait_for(lambda: victim.host.peer(flooder.peer_id) is None)


async def test_consensus_bytes_per_second() -> None:
    one = len(vote_of(1))
    limits = Limits(consensus_bytes=Rate(NEVER, 3 * one))
    async with running(P2PNode(config(0, limits), policies=known(1)), P2PNode(config(1))) as (victim, sender):
        await join(sender, victim)
        stream = await sender.host.libp2p.new_stream(victim.peer_id, [CONSENSUS_PROTOCOL])
        for h in (1, 2, 3, 4):
            await wire.write_frame(stream, vote_of(1, height=h))
        with trio.fail_after(10):
            for h in (1, 2, 3):  # inside: three votes' worth of bytes
                assert await victim.consensus.inbound.receive() == vote_of(1, height=h)
        await wait_for(lambda: victim.consensus.counters["over_rate"] == 1)  # past: the fourth is dropped
        assert victim.consensus.inbound.statistics().current_buffer_used == 0


async def test_a_proposal_whose_block_does_not_match_its_signature_is_neither_delivered_nor_relayed() -> None:
    from consensus.messages import ProposalMessage
    from consensus.votes import STEP_PROPOSAL

    block = b"the real block"

    class App(FakeChain):
        def block_hash(self, data: bytes) -> bytes:
            return bytes(32) if data == block else b"\x09" * 32

    def proposal(data: bytes) -> bytes:
        vote = sign_vote(node_secret(1), TEST_CHAIN_ID, 1, 0, STEP_PROPOSAL, bytes(32))
        return encode_consensus(ProposalMessage(vote, -1, data))

    hub = P2PNode(config(0), policies=known(1), app=App(0))  # type: ignore[arg-type]
    async with running(hub, P2PNode(config(1), policies=known(1)), P2PNode(config(2), policies=known(1))) as nodes:
        hub, relay, spoke = nodes
        await join(relay, hub)
        await join(spoke, hub)
        stream = await relay.host.libp2p.new_stream(hub.peer_id, [CONSENSUS_PROTOCOL])
        await wire.write_frame(stream, proposal(b"swapped block bytes"))
        await wire.write_frame(stream, proposal(block))
        with trio.fail_after(10):
            assert await hub.consensus.inbound.receive() == proposal(block)
            assert await spoke.consensus.inbound.receive() == proposal(block)  # relayed by the hub
        assert hub.consensus.counters["block_mismatch"] == 1 and hub.consensus.counters["relayed"] == 1
        assert spoke.consensus.counters["frames_in"] == 1


# ---- gossip ----

async def test_gossip_rates_per_forwarder_and_per_publisher() -> None:
    limits = Limits(gossip_forwarded=Rate(NEVER, 10), gossip_originated=Rate(NEVER, 5))
    async with running(P2PNode(config(0, limits)), P2PNode(config(1))) as (victim, sender):
        await join(sender, victim)
        with trio.fail_after(JOIN):
            await victim.gossip.wait_mesh(TX, [sender.peer_id])
            await sender.gossip.wait_mesh(TX, [victim.peer_id])
        for k in range(14):
            await sender.gossip.publish(TX, b"tx %d" % k)
        with trio.fail_after(10):  # inside the publisher's burst: delivered
            got = [(await victim.gossip.channel(TX).receive()).body for _ in range(5)]
        assert sorted(got) == sorted(b"tx %d" % k for k in range(5))
        # 6-10: through the forwarding bucket, past the publisher's: rejected after the signature check;
        # 11-14: past the forwarding bucket: dropped before it
        await wait_for(lambda: victim.host.pubsub.dropped["rate"] == 4 and victim.gossip.counters["rejected.tx"] == 5)
        assert victim.gossip.channel(TX).statistics().current_buffer_used == 0
        assert victim.host.guard.points(sender.peer_id) > 8 * limits.over_rate_points  # 9, decaying


async def test_a_relay_of_someone_elses_flood_is_not_blamed() -> None:
    """The publisher's bucket is per (forwarder, publisher): a hub relaying a flooder's messages sees them
    dropped past the limit, but neither its penalty points nor its gossipsub score move."""
    limits = Limits(gossip_originated=Rate(NEVER, 3))
    victim, hub, flooder = P2PNode(config(0, limits)), P2PNode(config(1)), P2PNode(config(2))
    async with running(victim, hub, flooder) as (victim, hub, flooder):
        await join(victim, hub)
        await join(flooder, hub)
        with trio.fail_after(JOIN):
            await victim.gossip.wait_mesh(TX, [hub.peer_id])
            await hub.gossip.wait_mesh(TX, [victim.peer_id, flooder.peer_id])
            await flooder.gossip.wait_mesh(TX, [hub.peer_id])
        for k in range(8):
            await flooder.gossip.publish(TX, b"flood %d" % k)
        await wait_for(lambda: victim.gossip.counters["rejected.tx"] == 5)
        assert victim.gossip.counters["delivered.tx"] == 3
        assert victim.host.guard.points(hub.peer_id) == 0
        assert victim.host.score(hub.peer_id, victim.gossip.topic(TX)) >= 0


async def test_gossipsub_score_thresholds_act_and_a_low_score_bans() -> None:
    limits = Limits(gossip_gossip_threshold=-10, gossip_publish_threshold=-20, gossip_graylist_threshold=-25,
                    gossip_disconnect_threshold=-25, ban_points=1e9)
    async with running(P2PNode(config(0, limits)), P2PNode(config(1))) as (victim, attacker):
        await join(attacker, victim)
        with trio.fail_after(JOIN):
            await victim.gossip.wait_mesh(TX, [attacker.peer_id])
            await attacker.gossip.wait_mesh(TX, [victim.peer_id])
        attacker.host.pubsub.remove_topic_validator(attacker.gossip.topic(TX))
        for k in range(12):  # each costs 10 points of gossipsub score on the topic
            await attacker.host.pubsub.publish(attacker.gossip.topic(TX), b"\xc1 not msgpack %d" % k)
        await wait_for(lambda: victim.host.guard.banned(attacker.peer_id))
        assert victim.host.counters["gossip_score_bans"] == 1
        # past the publish threshold (-20) its messages were dropped before any check: not all 12 validated
        assert 2 <= victim.gossip.counters["rejected.tx"] < 12, victim.gossip.statistics()
        await wait_for(lambda: victim.host.peer(attacker.peer_id) is None)


async def test_announcements_only_from_participants_for_current_rounds_and_pruned() -> None:
    participant = address_of(node_secret(1))
    window = [3]
    policy = TopicPolicy(1024, known_sender=lambda a: a == participant, window=lambda: (window[0], window[0] + 1))
    victim = P2PNode(config(0), policies={UPDATES: policy})
    async with running(victim, P2PNode(config(1)), P2PNode(config(2))) as (victim, member, stranger):
        for node in (member, stranger):
            await join(node, victim)
        with trio.fail_after(JOIN):
            await victim.gossip.wait_mesh(UPDATES, [member.peer_id, stranger.peer_id])
            for node in (member, stranger):
                await node.gossip.wait_mesh(UPDATES, [victim.peer_id])
        cids = [bytes([k]) * 32 for k in range(6)]
        await stranger.gossip.publish(UPDATES, Announcement(3, cids[0], 100))  # not a participant
        await member.gossip.publish(UPDATES, Announcement(2, cids[1], 100))  # a past round
        await member.gossip.publish(UPDATES, Announcement(9, cids[2], 100))  # far ahead
        await member.gossip.publish(UPDATES, Announcement(3, cids[3], 100))  # current: kept
        await member.gossip.publish(UPDATES, Announcement(4, cids[4], 100))  # next: kept
        with trio.fail_after(10):
            got = [(await victim.gossip.channel(UPDATES).receive()).body.content_id for _ in range(2)]
        assert sorted(got) == [cids[3], cids[4]]
        await wait_for(lambda: victim.gossip.counters["ignored.updates"] == 3)
        assert [victim.blobs.providers(c) for c in cids[:3]] == [[], [], []]
        assert victim.blobs.providers(cids[3]) == [member.peer_id] == victim.blobs.providers(cids[4])
        assert victim.host.guard.points(stranger.peer_id) == 0, "an unknown announcer is ignored, not blamed"
        # round 3 final, 4 open: round 3's record goes once rounds before 4 are pruned
        assert victim.blobs.prune_providers(4) == 1
        assert victim.blobs.providers(cids[3]) == [] and victim.blobs.providers(cids[4]) == [member.peer_id]


def test_provider_records_are_bounded_per_announcer_and_round() -> None:
    from libp2p.peer.id import ID

    from swarmnode.p2p.blobs import KEEP_PROVIDER_ROUNDS, MAX_ANNOUNCED_PER_ROUND, BlobExchange

    class Host:
        def get_id(self) -> ID:
            return ID(b"self")

    blobs = BlobExchange(Host(), MemoryBlobStore(), make_config(0))  # type: ignore[arg-type]
    peer = ID(b"peer")
    for k in range(MAX_ANNOUNCED_PER_ROUND):  # inside the quota
        assert blobs.add_provider(bytes([k]) * 32, peer, 5)
    assert not blobs.add_provider(b"\xff" * 32, peer, 5), "past the quota"
    assert blobs.add_provider(b"\xff" * 32, ID(b"other"), 5)
    assert blobs.add_provider(b"\xfe" * 32, peer, 5 + KEEP_PROVIDER_ROUNDS)  # a newer round prunes old ones
    assert blobs.providers(b"\x00" * 32) == [] and blobs.tracked()["blobs"] == 1
    assert not blobs.add_provider(b"\xfd" * 32, peer, 5), "a round older than the ones kept"


# ---- blobs and sync ----

async def test_blob_serves_per_peer_and_requests_per_second() -> None:
    limits = Limits(max_blob_serves_per_peer=1, blob_requests=Rate(NEVER, 3))
    big = os.urandom(4 * 1024 * 1024)
    async with running(P2PNode(config(0, limits)), P2PNode(config(1))) as (victim, client):
        await join(client, victim)
        cid = victim.blobs.store.put(big)
        # one transfer the client does not read: it holds the peer's one serving place
        held = await client.host.libp2p.new_stream(victim.peer_id, [BLOB_PROTOCOL])
        await wire.write_envelope(held, wire.Envelope(TEST_CHAIN_ID, wire.BLOB_REQUEST, [cid]))
        env = await wire.read_envelope(held, TEST_CHAIN_ID, frozenset({wire.BLOB_HEADER}))
        assert env.body == [STATUS_OK, len(big)]
        with trio.fail_after(10):  # past the serving places: "busy", a typed answer
            assert await blob_request(client, victim.peer_id, cid) == STATUS_BUSY
        await held.reset()
        await wait_for(lambda: not victim.blobs._serving)
        with trio.fail_after(10):  # inside: tokens 2 and 3 of the burst
            assert await blob_request(client, victim.peer_id, b"\x01" * 32) == STATUS_MISSING
            assert await blob_request(client, victim.peer_id, b"\x02" * 32) == STATUS_MISSING
            assert await blob_request(client, victim.peer_id, b"\x03" * 32) == STATUS_BUSY  # past the rate
        assert victim.blobs.counters["refused.busy"] == 1 and victim.blobs.counters["refused.rate"] == 1
        with trio.fail_after(10), pytest.raises(BlobNotFound, match="busy"):  # the client moves on
            await client.blobs.fetch(cid, providers=[victim.peer_id])


async def test_sync_range_concurrency_and_rate_limits_get_typed_refusals() -> None:
    limits = Limits(max_sync_blocks=4, max_sync_serves_per_peer=1, sync_requests=Rate(NEVER, 3))
    server = P2PNode(config(0, limits, sync_batch=4), app=FakeChain(10))  # type: ignore[arg-type]
    async with running(server, P2PNode(config(1)), P2PNode(config(2), app=FakeChain(0))) as nodes:  # type: ignore[arg-type]
        server, peer, client = nodes
        await join(peer, server)
        with trio.fail_after(10):
            assert await sync_request(peer, server.peer_id, 1, 4) == (wire.SYNC_HEADER, [10, 4])  # inside
            assert await sync_request(peer, server.peer_id, 1, 5) == (SYNC_REFUSED, [REFUSED_RANGE, 4])  # past
            silent = await peer.host.libp2p.new_stream(server.peer_id, [SYNC_PROTOCOL])  # holds the one place
            await wait_for(lambda: server.sync is not None and server.sync._serving[peer.peer_id] == 1)
            assert await sync_request(peer, server.peer_id, 5, 4) == (SYNC_REFUSED, [REFUSED_BUSY, 1])
            await silent.reset()
            await wait_for(lambda: not server.sync._serving)
            assert (await sync_request(peer, server.peer_id, 5, 4))[0] == wire.SYNC_HEADER  # token 2
            assert (await sync_request(peer, server.peer_id, 9, 4))[0] == wire.SYNC_HEADER  # token 3
            kind, body = await sync_request(peer, server.peer_id, 1, 1)  # past the rate
        assert kind == SYNC_REFUSED and body[0] == REFUSED_RATE
        assert server.sync.counters["served_blocks"] == 10
        # a client asking for its usual 32 blocks is told the limit and asks again for 4
        await join(client, server)
        with trio.fail_after(20):
            assert await client.sync.catch_up([server.peer_id]) == 0  # FakeChain's blocks fail verification
        assert client.sync.counters["range_retried"] == 1 and client.sync.counters["peer_failed"] == 1


# ---- a flood on every protocol at once, from another process ----

def flood_main(victim_addr: str) -> None:
    """Entry point of the flooding child process (prints "ready" once connected, floods until killed)."""
    trio.run(_flood, victim_addr)


async def _flood(victim_addr: str) -> None:
    attacker = P2PNode(config(66))
    async with attacker.run(), trio.open_nursery() as nursery:
        victim = await attacker.host.connect(victim_addr)
        with trio.fail_after(JOIN):
            await attacker.host.wait_peer(victim)
        for name in (TX, CONSENSUS, UPDATES):
            attacker.host.pubsub.remove_topic_validator(attacker.gossip.topic(name))
        port = int(victim_addr.split("/")[4])
        counts: dict[str, int] = {}

        def count(what: str) -> None:
            counts[what] = counts.get(what, 0) + 1

        async def forever(what: str, fn: Callable[[], Any]) -> None:
            while True:
                with trio.move_on_after(5) as scope:  # a write to a stream the victim reset can hang
                    try:
                        await fn()
                        count(what)
                    except Exception:  # noqa: BLE001 - resets and refusals are the victim doing its job
                        count(what + " failed")
                if scope.cancelled_caught:
                    count(what + " stuck")
                await trio.sleep(0)

        stranger = sign_vote(os.urandom(32), TEST_CHAIN_ID, 1, 0, STEP_PREVOTE, b"\x11" * 32)
        junk_frames = b"".join(len(f).to_bytes(4, "big") + f for f in [
            b"\xc1 garbage", b"\x93\x01\x02", encode_consensus(VoteMessage(stranger)),
            encode_consensus(VoteMessage(replace(stranger, signature=b"\x00" * 65))),
            b"\x91" * 200_000,  # deeply nested arrays
        ] * 4)

        async def consensus() -> None:  # malformed frames: the stream is reset after 32
            stream = await attacker.host.libp2p.new_stream(victim, [CONSENSUS_PROTOCOL])
            try:
                for _ in range(20):
                    await stream.write(junk_frames)
                await stream.write((wire.MAX_GOSSIP_BYTES + 1).to_bytes(4, "big") + b"x" * 64)  # oversize header
            finally:
                await wire.reset_quietly(stream, "flood")

        strangers = [encode_consensus(VoteMessage(sign_vote(os.urandom(32), TEST_CHAIN_ID, 1, r, STEP_PREVOTE,
                                                            b"\x11" * 32))) for r in range(100)]
        stranger_batch = b"".join(len(f).to_bytes(4, "big") + f for f in strangers)

        async def votes() -> None:  # well-formed votes of non-validators (an ecrecover each): the frame rate
            stream = await attacker.host.libp2p.new_stream(victim, [CONSENSUS_PROTOCOL])
            try:
                for _ in range(50):
                    await stream.write(stranger_batch)
            finally:
                await wire.reset_quietly(stream, "flood")

        pubsub = attacker.host.pubsub

        async def gossip() -> None:
            for name in (TX, CONSENSUS, UPDATES):
                await pubsub.publish(attacker.gossip.topic(name), b"\xc1 garbage " + os.urandom(8))
            await pubsub.publish(attacker.gossip.topic(TX), raw_envelope(wire.TX, os.urandom(200)))  # well-formed
            await pubsub.publish(attacker.gossip.topic(UPDATES),
                                 raw_envelope(wire.ANNOUNCE, [0, os.urandom(32), 100]))  # not a participant
            unsigned = rpc_pb2.Message(data=raw_envelope(wire.TX, b"x"), topicIDs=[attacker.gossip.topic(TX)],
                                       from_id=attacker.peer_id.to_bytes(), seqno=os.urandom(8),
                                       signature=b"\x01" * 64)
            await attacker.host.router.publish(attacker.peer_id, unsigned)
            await trio.sleep(0.002)  # py-libp2p's 32-RPC outbound queue drops the rest anyway

        async def blobs() -> None:
            stream = await attacker.host.libp2p.new_stream(victim, [BLOB_PROTOCOL])
            try:
                await wire.write_envelope(stream, wire.Envelope(TEST_CHAIN_ID, wire.BLOB_REQUEST, [os.urandom(32)]))
                await wire.read_envelope(stream, TEST_CHAIN_ID, frozenset({wire.BLOB_HEADER}))
            finally:
                await wire.reset_quietly(stream, "flood")
            stream = await attacker.host.libp2p.new_stream(victim, [BLOB_PROTOCOL])
            await stream.write((wire.MAX_CONTROL_FRAME + 1).to_bytes(4, "big") + b"\xc1" * 100)
            await wire.reset_quietly(stream, "flood")

        async def sync() -> None:
            for first, count_ in ((1, 10**9), (1, 4), (2**62, 4)):
                stream = await attacker.host.libp2p.new_stream(victim, [SYNC_PROTOCOL])
                try:
                    await wire.write_envelope(stream, wire.Envelope(TEST_CHAIN_ID, wire.SYNC_REQUEST, [first, count_]))
                    await stream.read(65536)
                finally:
                    await wire.reset_quietly(stream, "flood")

        async def control() -> None:  # (garbage on the handshake protocol gets a peer disconnected at once)
            stream = await attacker.host.libp2p.new_stream(victim, [PEERS_PROTOCOL])
            try:
                await wire.write_frame(stream, b"\xc1" * 100)
                await stream.read(1024)
            finally:
                await wire.reset_quietly(stream, "flood")

        async def tcp() -> None:  # connections that never speak Noise
            sock = await trio.open_tcp_stream(LOOPBACK, port)
            try:
                await sock.send_all(os.urandom(4096))
            finally:
                await sock.aclose()

        attacker.host.router.spam_protection_enabled = False  # its own publishes unthrottled
        for what, fn in (("consensus", consensus), ("votes", votes), ("gossip", gossip), ("sync", sync),
                         ("control", control), ("tcp", tcp)):
            nursery.start_soon(forever, what, fn)
        for _ in range(4):
            nursery.start_soon(forever, "blobs", blobs)
            nursery.start_soon(forever, "sync", sync)
        print("ready", flush=True)
        while True:
            await trio.sleep(1.0)
            print(counts, flush=True)


async def measure(victim: P2PNode, honest: P2PNode, rounds: int, tag: int) -> dict[str, list[float]]:
    """Latency of honest traffic from `honest` to `victim`: a vote over the consensus stream, a transaction
    over gossip, a 256 KB blob fetched from the victim, a 4-block sync request served by it."""
    out: dict[str, list[float]] = {"vote": [], "gossip": [], "blob": [], "sync": []}
    for k in range(rounds):
        vote = vote_of(61, height=1000 * tag + k + 1)
        t0 = time.perf_counter()
        await honest.consensus.broadcast(vote)
        with trio.fail_after(10):
            while await victim.consensus.inbound.receive() != vote:
                pass
        out["vote"].append(time.perf_counter() - t0)
        payload = b"honest %d %d" % (tag, k)
        t0 = time.perf_counter()
        await honest.gossip.publish(TX, payload)
        with trio.fail_after(10):
            while (await victim.gossip.channel(TX).receive()).body != payload:
                pass
        out["gossip"].append(time.perf_counter() - t0)
        blob = os.urandom(256 * 1024)
        cid = victim.blobs.store.put(blob)
        t0 = time.perf_counter()
        with trio.fail_after(10):
            assert await honest.blobs.fetch(cid, providers=[victim.peer_id], size=len(blob)) == blob
        out["blob"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with trio.fail_after(10):
            assert await sync_request(honest, victim.peer_id, 1 + k % 6, 4) == (wire.SYNC_HEADER, [10, 4])
        out["sync"].append(time.perf_counter() - t0)
    return out


def summary(samples: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} median {1000 * statistics.median(v):.1f} ms max {1000 * max(v):.1f} ms"
                     for k, v in samples.items())


async def test_flood_on_every_protocol_while_honest_traffic_flows() -> None:
    # bans off: the flood goes on for the whole measurement, held back by the rate and stream limits only
    limits = Limits(ban_points=1e12, gossip_disconnect_threshold=-1e12, gossip_graylist_threshold=-1e12,
                    gossip_publish_threshold=-1e12, gossip_gossip_threshold=-1e12,
                    sync_requests=Rate(100.0, 100.0))  # the honest side's requests stay inside
    policies = {**known(61), UPDATES: TopicPolicy(1024, known_sender=lambda a: a == address_of(node_secret(61)),
                                                  window=lambda: (0, 1))}  # as the daemon's: participants only
    victim = P2PNode(config(60, limits), policies=policies, app=FakeChain(10),  # type: ignore[arg-type]
                     store=MemoryBlobStore())
    honest = P2PNode(config(61), policies=known(61))
    async with running(victim, honest) as (victim, honest):
        await join(honest, victim)
        with trio.fail_after(JOIN):
            await victim.gossip.wait_mesh(TX, [honest.peer_id])
            await honest.gossip.wait_mesh(TX, [victim.peer_id])
        await measure(victim, honest, 3, 0)  # warm-up: streams open, caches filled
        quiet = await measure(victim, honest, 20, 1)
        child = await trio.lowlevel.open_process(
            [sys.executable, "-c", f"from tests.integration.test_p2p_hostile import flood_main; "
                                   f"flood_main({victim.listen_addrs()[0]!r})"],
            cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert child.stdout is not None
            with trio.fail_after(60):
                seen = b""
                while b"ready" not in seen:
                    chunk = await child.stdout.receive_some(4096)
                    assert chunk, "the flooding process died"
                    seen += chunk

            reports: list[bytes] = []

            async def drain_child() -> None:
                async for chunk in child.stdout:  # type: ignore[union-attr]
                    reports.append(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain_child)
                await trio.sleep(2.0)  # the flood is under way
                flooded = await measure(victim, honest, 20, 2)
                stats = {**victim.host.statistics(), **{f"consensus.{k}": v for k, v in victim.consensus.statistics().items()},
                         **{f"gossip.{k}": v for k, v in victim.gossip.statistics().items()},
                         **{f"blobs.{k}": v for k, v in victim.blobs.statistics().items()},
                         **{f"sync.{k}": v for k, v in victim.sync.statistics().items()},  # type: ignore[union-attr]
                         **{f"peers.{k}": v for k, v in victim.peer_exchange.statistics().items()}}
                nursery.cancel_scope.cancel()
        finally:
            child.kill()
            await child.wait()
        print(f"\nhonest latency, quiet:   {summary(quiet)}\nhonest latency, flooded: {summary(flooded)}")
        print("victim counters during the flood:", {k: v for k, v in sorted(stats.items()) if v})
        print("flooder's last report:", b"".join(reports).decode(errors="replace").strip().splitlines()[-1:])
        # the flood reached every protocol and the limits acted on it
        assert stats["consensus.streams_reset"] > 0 and stats["consensus.rejected"] > 0
        assert stats["consensus.over_rate"] > 0 and stats["consensus.unknown_signer"] > 0
        assert stats.get("gossip.rejected.tx", 0) > 0 and stats.get("gossip.ignored.updates", 0) > 0
        assert stats.get("blobs.serve_failed", 0) > 0 and stats.get("sync.refused.range", 0) > 0
        assert stats.get("peers.serve_failed", 0) > 0
        assert stats.get("inbound_failed", 0) + sum(v for k, v in stats.items() if k.startswith("inbound_refused")) > 0
        # honest traffic kept flowing (every message above arrived) and stayed fast
        for kind in ("vote", "gossip"):
            assert statistics.median(flooded[kind]) < 0.25, summary(flooded)
        assert statistics.median(flooded["blob"]) < 1.0 and statistics.median(flooded["sync"]) < 1.0, summary(flooded)


# ---- commits from gossip: checked before any fetch ----

def _forged(raw: bytes) -> bytes:
    """A typed transaction with its signature replaced by random numbers."""
    import rlp

    fields = rlp.decode(raw[1:])
    fields[-2:] = [b"\x01" + os.urandom(31), b"\x01" + os.urandom(31)]  # canonical RLP: no leading zero byte
    return raw[:1] + rlp.encode(fields)


async def test_commits_that_fail_their_checks_start_no_fetch_and_a_participants_does(tmp_path: Path) -> None:
    from consensus.chain import ExecutionChain
    from consensus.chain_app import ChainApplication
    from consensus.devtools import dev_genesis, dev_key
    from consensus.executor import ChainExecutor
    from consensus.service import ChainService, make_pool
    from consensus.txpool import TxPool
    from swarmnode.node import txs
    from swarmnode.node.blobfetch import BlobFetcher
    from swarmnode.node.ingest import MAX_WAITING_PER_SENDER, TxIngest
    from swarmnode.p2p.blobstore import DirectoryBlobStore
    from swarmnode.p2p.identity import peer_id_of

    # a chain on which dev keys 1 and 2 are registered participants; dev key 5 is funded, not registered
    genesis = dev_genesis(1, 6, chain_id=TEST_CHAIN_ID)
    chain = ExecutionChain.open(tmp_path / "chain", genesis, sync_writes=False)
    pool = TxPool(genesis.chain_id, chain.decode_transaction)
    for i in (1, 2):
        pool.add_raw(txs.sign_call(dev_key(i), genesis.chain_id, 0, txs.register_data(peer_id_of(dev_key(i)).to_base58()),
                                   chain.next_base_fee()), chain.state_view(), chain.next_base_fee())
    chain.commit(chain.block_hash(ChainApplication(chain, b"\x00" * 20, pool=pool).propose_block(1, 0, genesis.genesis_time + 5)))
    assert len(chain.reader.block_by_number(1).transactions) == 2

    def commit(key: int, round_: int, update: bytes, nonce: int = 1) -> bytes:
        data = txs.commit_data(txs.CommitCall(round_, update, 100, 500_000, 900_000))
        return txs.sign_call(dev_key(key), genesis.chain_id, nonce, data, chain.next_base_fee())

    executor = ChainExecutor()
    service = ChainService(chain, make_pool(chain), executor=executor)
    victim = P2PNode(config(70), store=DirectoryBlobStore(tmp_path / "blobs"))
    fetcher = BlobFetcher(victim, victim.blobs.store, tmp_path / "blobs", tmp_path / "quarantine")  # type: ignore[arg-type]
    ingest = TxIngest(victim.gossip, service, fetcher, lambda: None, current_round=lambda: 0)
    fetched: list[bytes] = []
    fetch = victim.blobs.fetch

    async def counting_fetch(cid: bytes, **kwargs: Any) -> bytes:
        fetched.append(cid)
        return await fetch(cid, **kwargs)

    victim.blobs.fetch = counting_fetch  # type: ignore[method-assign]
    attacker = P2PNode(config(71))  # a stranger
    provider = P2PNode(config(72, secret=dev_key(2)))  # participant 2's node
    try:
        async with executor.running(), running(victim, attacker, provider) as (victim, attacker, provider), \
                trio.open_nursery() as nursery:
            await nursery.start(fetcher.run)
            await nursery.start(ingest.run)
            for node in (attacker, provider):
                await join(node, victim)
            with trio.fail_after(JOIN):
                await victim.gossip.wait_mesh(TX, [attacker.peer_id, provider.peer_id])
                await victim.gossip.wait_mesh(UPDATES, [attacker.peer_id, provider.peer_id])
                for node in (attacker, provider):
                    await node.gossip.wait_mesh(TX, [victim.peer_id])
                    await node.gossip.wait_mesh(UPDATES, [victim.peer_id])
            n = 20
            flood = (
                [_forged(commit(1, 0, os.urandom(32))) for _ in range(n)]  # signatures that do not hold
                + [commit(5, 0, os.urandom(32), nonce=0) for _ in range(n)]  # not a participant
                + [commit(1, 7, os.urandom(32)) for _ in range(n)]  # a round far ahead
                + [commit(1, 0, bytes([k]) * 32) for k in range(1, n + 1)]  # one participant, one nonce, n updates
            )
            for k, raw in enumerate(flood, 1):
                await attacker.gossip.publish(TX, raw)
                if k % 16 == 0:  # py-libp2p's outbound queue holds 32 RPCs per peer and drops the rest
                    await wait_for(lambda k=k: victim.gossip.counters["delivered.tx"] >= k)

            def processed() -> bool:
                c = ingest.counters
                return (c["rejected"] >= n and c["not_participant"] == n and c["future"] == n
                        and c["sender_limit"] == n - MAX_WAITING_PER_SENDER)

            await wait_for(processed, 60, lambda: (ingest.statistics(), victim.gossip.statistics()))
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)
            # (a fetch that finds no provider is tried again: count blobs, not attempts)
            assert sorted(set(fetched)) == sorted({bytes([k]) * 32 for k in range(1, MAX_WAITING_PER_SENDER + 1)}), \
                f"fetches started for {len(set(fetched))} blobs by {len(flood)} commits"
            assert fetcher.awaiting <= MAX_WAITING_PER_SENDER

            # announcements: a stranger's is ignored, the participant's records a provider
            update = os.urandom(64 * 1024)
            cid = provider.blobs.store.put(update)
            await attacker.gossip.publish(UPDATES, Announcement(0, cid, len(update)))
            await provider.gossip.publish(UPDATES, Announcement(0, cid, len(update)))
            await wait_for(lambda: victim.blobs.providers(cid) == [provider.peer_id] and
                           victim.gossip.counters["ignored.updates"] == 1)
            # the participant's own commit: fetched from it, then admitted into the pool
            await provider.gossip.publish(TX, commit(2, 0, cid))
            await wait_for(lambda: ingest.counters["admitted"] == 1, 30)
            assert cid in fetched and fetcher.holds_all([cid]) and len(service.pool) == 1
            nursery.cancel_scope.cancel()
    finally:
        chain.close()
