"""Pure parts of swarmnode.p2p: identity, wire envelopes and framing, topic validation, handshake."""

from __future__ import annotations

import msgpack
import pytest

from consensus.messages import VoteMessage
from consensus.messages import encode as encode_consensus
from consensus.votes import STEP_PRECOMMIT, address_of, sign_vote
from swarmnode.p2p import wire
from swarmnode.p2p.config import P2PConfig
from swarmnode.p2p.errors import ConfigError, FrameError, HandshakeError, IdentityError, WireError
from swarmnode.p2p.handshake import Hello, check_hello, decode_hello, encode_hello
from swarmnode.p2p.identity import address_of_peer, peer_id_of
from swarmnode.p2p.testing import TEST_CHAIN_ID, node_secret
from swarmnode.p2p.topics import (
    CONSENSUS,
    TX,
    UPDATES,
    Announcement,
    TopicPolicy,
    check_message,
    default_policies,
    encode_body,
    topic_id,
)

SECRET = node_secret(1)
FROM = peer_id_of(SECRET).to_bytes()


def envelope(kind: int, body: object, chain_id: int = TEST_CHAIN_ID) -> bytes:
    return wire.encode(wire.Envelope(chain_id, kind, body))


# ---- identity ----

def test_peer_id_maps_to_the_chain_address_of_the_same_secret() -> None:
    assert address_of_peer(peer_id_of(SECRET)) == address_of(SECRET)
    assert peer_id_of(SECRET) != peer_id_of(node_secret(2))


@pytest.mark.parametrize("secret", [b"\x00" * 32, b"short", b"\xff" * 32])
def test_bad_secrets_are_typed_errors(secret: bytes) -> None:
    with pytest.raises(IdentityError):
        peer_id_of(secret)


def test_ed25519_peer_has_no_chain_address() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    with pytest.raises(IdentityError, match="not secp256k1"):
        address_of_peer(ID.from_pubkey(create_new_key_pair().public_key))


# ---- envelopes ----

def test_envelope_round_trip() -> None:
    env = wire.decode(envelope(wire.TX, b"raw tx"), chain_id=TEST_CHAIN_ID)
    assert env == wire.Envelope(TEST_CHAIN_ID, wire.TX, b"raw tx")


@pytest.mark.parametrize("data, match", [
    (b"\xc1", "undecodable"),
    (msgpack.packb([1, TEST_CHAIN_ID, wire.TX]), "4 fields"),
    (msgpack.packb([2, TEST_CHAIN_ID, wire.TX, b""]), "version 2"),
    (msgpack.packb([1, TEST_CHAIN_ID + 1, wire.TX, b""]), "expected 31337"),
    (msgpack.packb([1, TEST_CHAIN_ID, 99, b""]), "kind 99"),
    (msgpack.packb([1, -1, wire.TX, b""]), "chain id"),
    (msgpack.packb([1, True, wire.TX, b""]), "chain id"),
    (msgpack.packb({"a": 1}), "undecodable|must be an array"),
    (msgpack.packb([1, TEST_CHAIN_ID, wire.TX, msgpack.ExtType(1, b"x")]), "undecodable"),
    (b"\x00" * (wire.MAX_GOSSIP_BYTES + 1), "exceeds"),
])
def test_strict_decoding_rejects(data: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        wire.decode(data, chain_id=TEST_CHAIN_ID)


def test_encode_refuses_oversize() -> None:
    with pytest.raises(WireError, match="limit"):
        wire.encode(wire.Envelope(TEST_CHAIN_ID, wire.TX, b"x" * wire.MAX_GOSSIP_BYTES))


# ---- framing ----

class FakeStream:
    def __init__(self, data: bytes = b"", piece: int = 3) -> None:
        self.data, self.piece, self.written = data, piece, b""

    async def read(self, n: int | None = None) -> bytes:
        take = min(n or self.piece, self.piece)
        out, self.data = self.data[:take], self.data[take:]
        return out

    async def write(self, data: bytes) -> None:
        self.written += data


async def test_frames_round_trip_through_partial_reads() -> None:
    out = FakeStream()
    await wire.write_frame(out, b"hello frame")
    assert await wire.read_frame(FakeStream(out.written), 100) == b"hello frame"


async def test_oversize_and_truncated_frames_are_errors() -> None:
    out = FakeStream()
    await wire.write_frame(out, b"x" * 50)
    with pytest.raises(FrameError, match="exceeds"):
        await wire.read_frame(FakeStream(out.written), 10)
    with pytest.raises(FrameError, match="missing"):
        await wire.read_frame(FakeStream(out.written[:20]), 100)


# ---- topics ----

def test_topics_are_namespaced_by_chain_id() -> None:
    assert topic_id(7, TX) == "/swarmnode/7/tx"


def test_announcement_round_trip() -> None:
    ann = Announcement(3, b"\x05" * 32, 1000)
    data = envelope(wire.ANNOUNCE, encode_body(UPDATES, ann))
    msg = check_message(UPDATES, data, FROM, TEST_CHAIN_ID, default_policies()[UPDATES])
    assert msg.body == ann and msg.address == address_of(SECRET)


def test_window_and_known_sender_predicates() -> None:
    data = envelope(wire.ANNOUNCE, [5, b"\x05" * 32, 10])
    with pytest.raises(WireError, match="round 5 outside"):
        check_message(UPDATES, data, FROM, TEST_CHAIN_ID, TopicPolicy(1024, window=lambda: (0, 4)))
    with pytest.raises(WireError, match="not known"):
        check_message(UPDATES, data, FROM, TEST_CHAIN_ID, TopicPolicy(1024, known_sender=lambda a: False))
    assert check_message(UPDATES, data, FROM, TEST_CHAIN_ID, TopicPolicy(1024, window=lambda: (5, 5))).body.round == 5


def test_consensus_vote_checks() -> None:
    vote = sign_vote(SECRET, TEST_CHAIN_ID, 4, 0, STEP_PRECOMMIT, b"\x01" * 32)
    data = envelope(wire.CONSENSUS, encode_consensus(VoteMessage(vote)))
    validators = {address_of(SECRET)}
    policy = TopicPolicy(wire.MAX_GOSSIP_BYTES, known_sender=validators.__contains__, window=lambda: (3, 10))
    assert check_message(CONSENSUS, data, FROM, TEST_CHAIN_ID, policy).body == encode_consensus(VoteMessage(vote))
    other = sign_vote(node_secret(9), TEST_CHAIN_ID, 4, 0, STEP_PRECOMMIT, b"\x01" * 32)
    with pytest.raises(WireError, match="vote signer .* not known"):
        check_message(CONSENSUS, envelope(wire.CONSENSUS, encode_consensus(VoteMessage(other))), FROM,
                      TEST_CHAIN_ID, policy)
    foreign = sign_vote(SECRET, TEST_CHAIN_ID + 1, 4, 0, STEP_PRECOMMIT, b"\x01" * 32)
    with pytest.raises(WireError, match="vote for chain"):
        check_message(CONSENSUS, envelope(wire.CONSENSUS, encode_consensus(VoteMessage(foreign))), FROM,
                      TEST_CHAIN_ID, policy)
    with pytest.raises(WireError, match="height 4 outside"):
        check_message(CONSENSUS, data, FROM, TEST_CHAIN_ID,
                      TopicPolicy(wire.MAX_GOSSIP_BYTES, window=lambda: (5, 10)))


def test_oversize_tx_rejected_before_decoding() -> None:
    data = envelope(wire.TX, b"x" * (200 * 1024))
    with pytest.raises(WireError, match="exceeds"):
        check_message(TX, data, FROM, TEST_CHAIN_ID, default_policies()[TX])


# ---- handshake and config ----

def test_hello_round_trip_and_chain_checks() -> None:
    ours = Hello(TEST_CHAIN_ID, b"\x01" * 32, 12)
    assert decode_hello(wire.encode(encode_hello(ours))) == ours
    check_hello(ours, Hello(TEST_CHAIN_ID, b"\x01" * 32, 0))
    with pytest.raises(HandshakeError, match="chain 5"):
        check_hello(ours, Hello(5, b"\x01" * 32, 0))
    with pytest.raises(HandshakeError, match="genesis"):
        check_hello(ours, Hello(TEST_CHAIN_ID, b"\x02" * 32, 0))


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="genesis"):
        P2PConfig(secret=SECRET, chain_id=1, genesis_hash=b"short")
    with pytest.raises(ConfigError, match="listen"):
        P2PConfig(secret=SECRET, chain_id=1, genesis_hash=b"\x00" * 32, listen_addrs=())
