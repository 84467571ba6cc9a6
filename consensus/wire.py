"""Strict msgpack helpers shared by the consensus wire formats (messages, certificates, records).

Nothing is ever unpickled: payloads are msgpack arrays of ints and byte strings, and every field is
type- and size-checked on the way in.
"""

from __future__ import annotations

from typing import Any

import msgpack

from consensus.errors import ConsensusError

MAX_INT = 2**63 - 1


class MalformedMessage(ConsensusError):
    """Bytes that do not decode to a well-formed message of the expected shape."""


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes, max_bytes: int) -> Any:
    """Decode msgpack with strict options; raises MalformedMessage."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise MalformedMessage(f"message of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        return msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True, max_bin_len=max_bytes,
            max_str_len=1024, max_array_len=100_000, max_map_len=64, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise MalformedMessage(f"undecodable msgpack: {type(exc).__name__}: {exc}") from exc


def as_list(value: Any, length: int | None, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedMessage(f"{what} must be an array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise MalformedMessage(f"{what} must have {length} fields, got {len(value)}")
    return value


def as_int(value: Any, what: str, minimum: int = 0) -> int:
    if type(value) is not int or not minimum <= value <= MAX_INT:
        raise MalformedMessage(f"{what} must be an int in [{minimum}, 2^63), got {value!r}")
    return value


def as_bytes(value: Any, what: str, length: int | None = None, max_len: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise MalformedMessage(f"{what} must be bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise MalformedMessage(f"{what} must be {length} bytes, got {len(value)}")
    if max_len is not None and len(value) > max_len:
        raise MalformedMessage(f"{what} exceeds {max_len} bytes")
    return value
