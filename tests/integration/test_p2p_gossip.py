"""Real py-libp2p hosts on 127.0.0.1 (port 0) in one trio process: join, handshake, gossip, validators."""

from __future__ import annotations

from dataclasses import replace

import msgpack
import trio
from libp2p.pubsub.pb import rpc_pb2

from consensus.messages import VoteMessage
from consensus.messages import encode as encode_consensus
from consensus.votes import STEP_PREVOTE, address_of, sign_vote
from swarmnode.p2p import wire
from swarmnode.p2p.node import P2PNode
from swarmnode.p2p.testing import TEST_CHAIN_ID, make_config, node_secret, star
from swarmnode.p2p.topics import CONSENSUS, TX, GossipMessage, TopicPolicy

JOIN_TIMEOUT = 20


async def wait_meshed(nodes: list[P2PNode], name: str) -> None:
    """Star topology: the hub meshes with every spoke, each spoke with the hub."""
    await nodes[0].gossip.wait_mesh(name, [n.peer_id for n in nodes[1:]])
    for node in nodes[1:]:
        await node.gossip.wait_mesh(name, [nodes[0].peer_id])


async def collect(node: P2PNode, name: str, count: int) -> list[GossipMessage]:
    return [await node.gossip.channel(name).receive() for _ in range(count)]


async def test_five_hosts_join_through_one_bootstrap_and_see_all_gossip() -> None:
    async with star(5) as nodes:
        with trio.fail_after(JOIN_TIMEOUT):
            await nodes[0].host.wait_peers(4)
            for node in nodes[1:]:
                await node.host.wait_peers(1)
            await wait_meshed(nodes, TX)
        assert {p.peer_id for p in nodes[0].peers()} == {n.peer_id for n in nodes[1:]}
        assert nodes[1].peers()[0].address == nodes[0].host.address

        for i, node in enumerate(nodes):
            await node.gossip.publish(TX, f"tx from {i}".encode())
        with trio.fail_after(10):
            for i, node in enumerate(nodes):
                got = sorted(m.body for m in await collect(node, TX, 4))
                assert got == sorted(f"tx from {j}".encode() for j in range(5) if j != i), f"node {i} got {got}"
        assert all(n.gossip.statistics().get("overflow.tx", 0) == 0 for n in nodes)


async def test_late_joiner_receives_the_messages_that_follow() -> None:
    async with star(3) as nodes:
        with trio.fail_after(JOIN_TIMEOUT):
            await wait_meshed(nodes, TX)
        await nodes[1].gossip.publish(TX, b"before")
        with trio.fail_after(10):
            assert (await nodes[2].gossip.channel(TX).receive()).body == b"before"

        late = P2PNode(make_config(9, bootstrap=tuple(nodes[0].listen_addrs())))
        async with late.run():
            with trio.fail_after(JOIN_TIMEOUT):
                await late.host.wait_peers(1)
                await late.gossip.wait_mesh(TX, [nodes[0].peer_id])
                await nodes[0].gossip.wait_mesh(TX, [late.peer_id])
            await nodes[1].gossip.publish(TX, b"after")
            with trio.fail_after(10):  # gossipsub may also hand over "before" from its message cache
                msg = await late.gossip.channel(TX).receive()
                while msg.body == b"before":
                    msg = await late.gossip.channel(TX).receive()
            assert msg.body == b"after", msg
            assert msg.sender == nodes[1].peer_id and msg.address == nodes[1].host.address


async def test_peer_of_another_genesis_is_disconnected() -> None:
    async with star(1) as (hub,):
        stranger = P2PNode(make_config(5, bootstrap=tuple(hub.listen_addrs()), genesis_hash=b"\x01" * 32))
        async with stranger.run():
            with trio.fail_after(JOIN_TIMEOUT):
                await hub.host.wait_rejections(1)
                await stranger.host.wait_rejections(1)
            assert hub.peers() == [] and stranger.peers() == []


def _raw(kind: int, body: object, chain_id: int = TEST_CHAIN_ID) -> bytes:
    return msgpack.packb([wire.WIRE_VERSION, chain_id, kind, body], use_bin_type=True)


async def test_invalid_messages_never_reach_the_app_nor_get_relayed() -> None:
    # Prepare: attacker (node 1) and victim (node 2) both hang off the hub (node 0). The attacker
    # removes its own validators so its garbage leaves the host.
    validators = {address_of(node_secret(1))}
    policies = {CONSENSUS: TopicPolicy(wire.MAX_GOSSIP_BYTES, known_sender=validators.__contains__)}
    async with star(3, policies=policies) as (hub, attacker, victim):
        with trio.fail_after(JOIN_TIMEOUT):
            await wait_meshed([hub, attacker, victim], TX)
            await wait_meshed([hub, attacker, victim], CONSENSUS)
        for name in (TX, CONSENSUS):
            attacker.host.pubsub.remove_topic_validator(attacker.gossip.topic(name))
        vote = sign_vote(node_secret(1), TEST_CHAIN_ID, 1, 0, STEP_PREVOTE, b"\x11" * 32)
        forged = replace(vote, block_hash=b"\x22" * 32)  # the signature now recovers to a random address
        bad_sig = encode_consensus(VoteMessage(replace(vote, signature=b"\x00" * 65)))
        invalid = {
            TX: [
                b"\xc1 garbage \xff",  # not msgpack
                _raw(wire.TX, b"x" * (300 * 1024)),  # oversize for the tx topic
                _raw(wire.TX, b"tx", chain_id=TEST_CHAIN_ID + 1),  # wrong chain id
                _raw(wire.TX, "a string, not bytes"),  # wrong field type
                _raw(wire.ANNOUNCE, [0, b"\x00" * 32, 1]),  # wrong kind for the topic
                msgpack.packb({"version": 1}),  # a map, not an envelope
            ],
            CONSENSUS: [
                _raw(wire.CONSENSUS, encode_consensus(VoteMessage(forged))),  # recovers to a non-validator
                _raw(wire.CONSENSUS, bad_sig),  # unrecoverable signature
                _raw(wire.CONSENSUS, b"\x93\x01\x02"),  # not a consensus message
            ],
        }
        # a well-formed envelope whose pubsub signature is garbage, pushed past the attacker's own checks
        unsigned = rpc_pb2.Message(
            data=_raw(wire.TX, b"forged pubsub signature"), topicIDs=[attacker.gossip.topic(TX)],
            from_id=attacker.peer_id.to_bytes(), seqno=(10**6).to_bytes(8, "big"),
            key=attacker.host.libp2p.get_public_key().serialize(), signature=b"\x01" * 64,
        )
        # Execute
        await attacker.host.router.publish(attacker.peer_id, unsigned)
        for name, payloads in invalid.items():
            for data in payloads:
                await attacker.host.pubsub.publish(attacker.gossip.topic(name), data)
        await attacker.gossip.publish(TX, b"marker")
        await attacker.gossip.publish(CONSENSUS, encode_consensus(VoteMessage(vote)))
        # Assert: valid messages after the invalid ones arrive; nothing invalid reached the app.
        with trio.fail_after(10):
            for node in (hub, victim):
                assert (await node.gossip.channel(TX).receive()).body == b"marker"
                assert (await node.gossip.channel(CONSENSUS).receive()).body == encode_consensus(VoteMessage(vote))
        for node in (hub, victim):
            for name in (TX, CONSENSUS):
                pending = node.gossip.channel(name).statistics().current_buffer_used
                assert pending == 0, f"{pending} unexpected {name} message(s) reached the app"
        stats = hub.gossip.statistics()
        assert stats.get("rejected.tx") == len(invalid[TX]), stats
        assert stats.get("rejected.consensus") == len(invalid[CONSENSUS]), stats
        victim_stats = victim.gossip.statistics()
        assert "rejected.tx" not in victim_stats and "rejected.consensus" not in victim_stats, victim_stats
        assert hub.host.score(attacker.peer_id, hub.gossip.topic(TX)) < 0
        # crash nobody: gossip still flows from the victim through the hub
        await victim.gossip.publish(TX, b"still alive")
        with trio.fail_after(10):
            assert (await attacker.gossip.channel(TX).receive()).body == b"still alive"


async def test_mdns_discovery_on_loopback() -> None:
    a = P2PNode(make_config(30, enable_mdns=True))
    b = P2PNode(make_config(31, enable_mdns=True))
    async with a.run(), b.run():
        with trio.fail_after(20):
            status = await a.host.wait_peer(b.peer_id)
            await b.host.wait_peer(a.peer_id)
        assert status.address == b.host.address


async def test_plaintext_peer_cannot_connect() -> None:
    from libp2p import new_host
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
    from multiaddr import Multiaddr

    from swarmnode.p2p.identity import key_pair_of

    async with star(1) as (node,):
        upgrader = node.host.libp2p.get_network().upgrader
        assert list(upgrader.security_multistream.transports) == ["/noise"]
        key_pair = key_pair_of(node_secret(40))
        plain = new_host(key_pair=key_pair, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)})
        async with plain.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            with trio.fail_after(20):
                try:
                    await plain.connect(info_from_p2p_addr(Multiaddr(node.listen_addrs()[0])))
                except Exception as exc:  # noqa: BLE001 (any failure to negotiate is the expected outcome)
                    reason = str(exc)
                else:
                    reason = ""
            assert reason, "a plaintext-only peer connected"
            assert node.peers() == []


async def test_bootstrap_peer_is_redialed_after_a_disconnect() -> None:
    async with star(2, reconnect_initial=0.1) as (hub, spoke):
        network = spoke.host.libp2p.get_network()
        with trio.fail_after(20):
            await spoke.host.wait_peer(hub.peer_id)
        old = network.get_connections(hub.peer_id)[0]
        await hub.host.libp2p.disconnect(spoke.peer_id)

        def redialed() -> bool:
            conns = network.get_connections(hub.peer_id)
            return bool(conns) and conns[0] is not old and spoke.host.peer(hub.peer_id) is not None

        with trio.fail_after(20):
            await spoke.host.wait_until(redialed)
            await hub.host.wait_peer(spoke.peer_id)
        assert old not in network.get_connections(hub.peer_id)


async def test_signed_peer_records_are_checked_once_per_peer_not_on_every_rpc() -> None:
    """py-libp2p attaches the sender's signed record to every pubsub RPC; pubsub_records checks a record
    once and accepts the identical bytes from the same peer afterwards."""
    from swarmnode.p2p import pubsub_records

    async with star(3) as nodes:
        with trio.fail_after(JOIN_TIMEOUT):
            await nodes[0].host.wait_peers(2)
            await wait_meshed(nodes, TX)
        before = dict(pubsub_records.stats)
        for i in range(10):
            await nodes[1].gossip.publish(TX, f"tx {i}".encode())
        with trio.fail_after(10):
            got = sorted(m.body for m in await collect(nodes[2], TX, 10))
        assert got == sorted(f"tx {i}".encode() for i in range(10))
        checked = pubsub_records.stats["records_checked"] - before["records_checked"]
        reused = pubsub_records.stats["records_reused"] - before["records_reused"]
        built = pubsub_records.stats["envelopes_built"] - before["envelopes_built"]
        # 10 messages, each forwarded hub -> spoke: at least 20 RPCs carried a record
        assert reused >= 15 and checked <= 2, (checked, reused)
        assert built <= 3, built


def test_a_changed_or_forged_signed_record_is_always_checked() -> None:
    from libp2p import new_host
    from libp2p.crypto.secp256k1 import create_new_key_pair
    from libp2p.peer.peerstore import issue_and_cache_local_record

    from swarmnode.p2p import pubsub_records

    sender, receiver, other = (new_host(key_pair=create_new_key_pair(bytes([i]) * 32)) for i in (1, 2, 3))
    record = issue_and_cache_local_record(sender)

    def consume(blob: bytes, claimed=None) -> bool:  # noqa: ANN001
        rpc = rpc_pb2.RPC()
        rpc.senderRecord = blob
        return pubsub_records.consume_signed_record(rpc, receiver, claimed or sender.get_id())

    checked = pubsub_records.stats["records_checked"]
    assert consume(record) and consume(record)
    assert pubsub_records.stats["records_checked"] == checked + 1, "identical bytes from the same peer: one check"
    forged = bytearray(record)
    forged[-5] ^= 0xFF  # inside the signature
    assert not consume(bytes(forged)), "a forged record must be rejected"
    assert not consume(record, claimed=other.get_id()), "another peer's record must be rejected"
    checked = pubsub_records.stats["records_checked"]
    assert consume(record), "after a failure the good record is checked again, then cached"
    assert pubsub_records.stats["records_checked"] == checked + 1


async def test_a_restarted_peer_is_heard_at_once() -> None:
    """Gossipsub drops a message whose (publisher, seqno) it has seen in the last two minutes. py-libp2p
    starts a publisher's seqno at the current time in seconds and adds one per message, so a node that
    publishes more than one message a second runs ahead of the clock; restarted, it would reuse seqnos its
    peers have just seen, and be silently unheard by all of them until it passed its old ones (a
    restarted validator went mute this way and the swarm stalled). Seqnos start from nanoseconds here."""
    burst = 300  # messages before the restart: 300 s ahead of a seconds clock
    hub = P2PNode(make_config(0, peer_exchange=False))
    async with hub.run():
        for life in ("before", "after"):
            spoke = P2PNode(make_config(1, bootstrap=tuple(hub.listen_addrs()), peer_exchange=False))
            async with spoke.run():
                with trio.fail_after(JOIN_TIMEOUT):
                    await hub.gossip.wait_mesh(TX, [spoke.peer_id])
                    await spoke.gossip.wait_mesh(TX, [hub.peer_id])
                for k in range(burst if life == "before" else 1):
                    await spoke.gossip.publish(TX, f"{life} {k}".encode())
                    with trio.fail_after(10):
                        assert (await hub.gossip.channel(TX).receive()).body == f"{life} {k}".encode()
                if life == "before":  # as when its process dies (an in-process host leaves its sockets open)
                    await hub.host.libp2p.disconnect(spoke.peer_id)
                    with trio.fail_after(JOIN_TIMEOUT):
                        await hub.host.wait_until(lambda s=spoke: hub.host.peer(s.peer_id) is None)
