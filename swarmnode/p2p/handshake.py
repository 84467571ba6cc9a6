"""The /swarmnode/handshake/1 protocol: both sides state chain id, genesis hash and head height.

Each side sends one Hello frame and reads one; a peer on another chain or genesis is disconnected.
"""

from __future__ import annotations

from dataclasses import dataclass

from libp2p.custom_types import TProtocol

from swarmnode.p2p import wire
from swarmnode.p2p.errors import HandshakeError, WireError

HANDSHAKE_PROTOCOL = TProtocol("/swarmnode/handshake/1")


@dataclass(frozen=True)
class Hello:
    chain_id: int
    genesis_hash: bytes
    head_height: int
    listen_addrs: tuple[str, ...] = ()  # where the peer can be dialed (for peer exchange)


MAX_HELLO_ADDRS = 8


def encode_hello(hello: Hello) -> wire.Envelope:
    return wire.Envelope(hello.chain_id, wire.HELLO,
                         [hello.genesis_hash, hello.head_height, list(hello.listen_addrs[:MAX_HELLO_ADDRS])])


def decode_hello(data: bytes) -> Hello:
    """Strict decoding of a Hello frame, whatever its chain id (checked by `check_hello`)."""
    env = wire.decode(data, wire.MAX_CONTROL_FRAME, kinds=frozenset({wire.HELLO}))
    fields = wire.as_list(env.body, 3, "hello")
    addrs = wire.as_list(fields[2], None, "listen addresses")
    if len(addrs) > MAX_HELLO_ADDRS:
        raise WireError(f"hello lists {len(addrs)} listen addresses, limit {MAX_HELLO_ADDRS}")
    return Hello(env.chain_id, wire.as_bytes(fields[0], "genesis hash", length=32),
                 wire.as_int(fields[1], "head height"), tuple(wire.as_str(a, "listen address") for a in addrs))


def check_hello(ours: Hello, theirs: Hello) -> None:
    """Raises HandshakeError when the peer is on another chain."""
    if theirs.chain_id != ours.chain_id:
        raise HandshakeError(f"peer is on chain {theirs.chain_id}, we are on {ours.chain_id}")
    if theirs.genesis_hash != ours.genesis_hash:
        raise HandshakeError(f"peer genesis 0x{theirs.genesis_hash.hex()[:16]}.. differs from ours "
                             f"0x{ours.genesis_hash.hex()[:16]}..")


async def exchange(stream: wire.Stream, ours: Hello, *, initiator: bool) -> Hello:
    """Send ours and read theirs (initiator writes first); raises HandshakeError."""
    try:
        if initiator:
            await wire.write_envelope(stream, encode_hello(ours))
        theirs = decode_hello(await wire.read_frame(stream, wire.MAX_CONTROL_FRAME))
        if not initiator:
            await wire.write_envelope(stream, encode_hello(ours))
    except WireError as exc:
        raise HandshakeError(f"malformed hello: {exc}") from exc
    check_hello(ours, theirs)
    return theirs
