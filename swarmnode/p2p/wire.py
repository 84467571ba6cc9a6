"""The p2p wire codec: versioned msgpack envelopes with strict decoding, and stream framing.

    envelope = [version, chain_id, kind, body]

Every body is checked field by field (exact types, lengths, bounds). Nothing is ever unpickled.
Before msgpack builds anything, the bytes' nesting depth and object count are bounded
(consensus.wire.check_structure: an iterative walk that skips binaries whole).
Streams carry frames: a 4-byte big-endian length, then that many bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from consensus.wire import MalformedMessage, check_structure
from swarmnode.p2p.errors import FrameError, WireError

WIRE_VERSION = 1
MAX_INT = 2**63 - 1
MAX_GOSSIP_BYTES = 900 * 1024  # gossipsub silently drops >= 1 MiB
MAX_CONTROL_FRAME = 64 * 1024  # requests, handshakes, response headers
LENGTH_BYTES = 4
MAX_DEPTH = 8  # arrays nested in an envelope: the deepest body (a peer listing) makes 4
MAX_OBJECTS = 4096  # msgpack objects in one envelope: a full peer listing holds ~710

# kinds
TX, CONSENSUS, ANNOUNCE = 1, 2, 3
HELLO = 10
BLOB_REQUEST, BLOB_HEADER = 20, 21
SYNC_REQUEST, SYNC_HEADER, SYNC_BLOCK = 30, 31, 32
PEERS_REQUEST, PEERS = 40, 41
KINDS = frozenset({TX, CONSENSUS, ANNOUNCE, HELLO, BLOB_REQUEST, BLOB_HEADER, SYNC_REQUEST, SYNC_HEADER, SYNC_BLOCK,
                   PEERS_REQUEST, PEERS})


@dataclass(frozen=True)
class Envelope:
    chain_id: int
    kind: int
    body: Any


def encode(env: Envelope, max_bytes: int = MAX_GOSSIP_BYTES) -> bytes:
    data = msgpack.packb([WIRE_VERSION, env.chain_id, env.kind, env.body], use_bin_type=True)
    if len(data) > max_bytes:
        raise WireError(f"envelope of kind {env.kind} is {len(data)} bytes, limit {max_bytes}")
    return data


def unpack_strict(data: bytes, max_bytes: int) -> Any:
    """msgpack with strict options, after bounding size, nesting depth and object count; WireError."""
    if not isinstance(data, bytes | bytearray):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        check_structure(data, max_depth=MAX_DEPTH, max_objects=MAX_OBJECTS)
    except MalformedMessage as exc:
        raise WireError(f"undecodable msgpack: {exc}") from exc
    try:
        return msgpack.unpackb(
            bytes(data), raw=False, use_list=True, strict_map_key=True, max_bin_len=max_bytes,
            max_str_len=256, max_array_len=4096, max_map_len=0, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise WireError(f"undecodable msgpack: {type(exc).__name__}: {exc}") from exc


def decode(data: bytes, max_bytes: int = MAX_GOSSIP_BYTES, *, chain_id: int | None = None,
           kinds: frozenset[int] = KINDS) -> Envelope:
    """Strictly decode an envelope; with `chain_id`, one for another chain is an error."""
    fields = as_list(unpack_strict(data, max_bytes), 4, "envelope")
    version = as_int(fields[0], "wire version")
    if version != WIRE_VERSION:
        raise WireError(f"unsupported wire version {version}")
    env_chain, kind = as_int(fields[1], "chain id"), as_int(fields[2], "kind")
    if chain_id is not None and env_chain != chain_id:
        raise WireError(f"envelope for chain {env_chain}, expected {chain_id}")
    if kind not in kinds:
        raise WireError(f"unexpected message kind {kind} (expected one of {sorted(kinds)})")
    return Envelope(env_chain, kind, fields[3])


def as_list(value: Any, length: int | None, what: str) -> list[Any]:
    if type(value) is not list:
        raise WireError(f"{what} must be an array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise WireError(f"{what} must have {length} fields, got {len(value)}")
    return value


def as_int(value: Any, what: str, minimum: int = 0, maximum: int = MAX_INT) -> int:
    if type(value) is not int or not minimum <= value <= maximum:
        raise WireError(f"{what} must be an int in [{minimum}, {maximum}], got {value!r}")
    return value


def as_bytes(value: Any, what: str, length: int | None = None, max_len: int | None = None) -> bytes:
    if type(value) is not bytes:
        raise WireError(f"{what} must be bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise WireError(f"{what} must be {length} bytes, got {len(value)}")
    if max_len is not None and len(value) > max_len:
        raise WireError(f"{what} is {len(value)} bytes, limit {max_len}")
    return value


def as_str(value: Any, what: str, max_len: int = 256) -> str:
    if type(value) is not str:
        raise WireError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise WireError(f"{what} is {len(value)} characters, limit {max_len}")
    return value


# ---- stream framing ----

class Stream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...
    async def write(self, data: bytes) -> None: ...


async def read_exactly(stream: Stream, n: int) -> bytes:
    """Read exactly n bytes; FrameError if the stream ends first."""
    parts: list[bytes] = []
    remaining = n
    while remaining:
        chunk = await stream.read(remaining)
        if not chunk:
            raise FrameError(f"stream ended with {remaining} of {n} bytes missing")
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


async def read_frame(stream: Stream, max_bytes: int) -> bytes:
    header = await read_exactly(stream, LENGTH_BYTES)
    length = int.from_bytes(header, "big")
    if length > max_bytes:
        raise FrameError(f"frame of {length} bytes exceeds the {max_bytes}-byte limit")
    return await read_exactly(stream, length)


async def write_frame(stream: Stream, payload: bytes) -> None:
    if len(payload) >= 2 ** (8 * LENGTH_BYTES):
        raise FrameError(f"frame of {len(payload)} bytes cannot be length-prefixed")
    await stream.write(len(payload).to_bytes(LENGTH_BYTES, "big") + payload)


async def read_envelope(stream: Stream, chain_id: int, kinds: frozenset[int],
                        max_bytes: int = MAX_CONTROL_FRAME) -> Envelope:
    return decode(await read_frame(stream, max_bytes), max_bytes, chain_id=chain_id, kinds=kinds)


async def write_envelope(stream: Stream, env: Envelope, max_bytes: int = MAX_CONTROL_FRAME) -> None:
    await write_frame(stream, encode(env, max_bytes))


async def close_quietly(stream: Any, what: str) -> None:
    """Close a stream the peer may already have reset; failures only matter for debugging."""
    try:
        await stream.close()
    except Exception as exc:  # already reset by the peer
        logging.getLogger(__name__).debug("closing %s stream: %s", what, exc)


async def reset_quietly(stream: Any, what: str) -> None:
    try:
        await stream.reset()
    except Exception as exc:
        logging.getLogger(__name__).debug("resetting %s stream: %s", what, exc)
