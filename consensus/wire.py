"""Strict msgpack helpers shared by the consensus wire formats (messages, certificates, records).

Nothing is ever unpickled: payloads are msgpack arrays of ints and byte strings, and every field is
type- and size-checked on the way in. Before msgpack builds anything, `check_structure` walks the bytes
iteratively and bounds nesting depth and object count: msgpack's own depth limit is 1,024 and it has no
count limit, so 900 KB of nested empty arrays cost ~0.2 s and ~50 MB to decode (swarmnode.p2p.wire uses
the same check).
"""

from __future__ import annotations

from typing import Any

import msgpack

from consensus.errors import ConsensusError

MAX_INT = 2**63 - 1
MAX_DEPTH = 8  # arrays and maps nested: the deepest message format is 3
MAX_OBJECTS = 100_016  # objects in one unpack (an in-memory test block of 100,000 payloads)

# msgpack type byte -> (size of the length field, fixed payload bytes) for everything that is not a
# fix* type: containers and strings read a length, scalars skip a fixed size
_FIXED_SIZE = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
               0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
_SIZED_BYTES = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}  # bin and str: length field size
_SIZED_EXT = {0xC7: 1, 0xC8: 2, 0xC9: 4}  # ext: length field, then a type byte
_SIZED_ARRAY = {0xDC: 2, 0xDD: 4}
_SIZED_MAP = {0xDE: 2, 0xDF: 4}


class MalformedMessage(ConsensusError):
    """Bytes that do not decode to a well-formed message of the expected shape."""


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def check_structure(data: bytes | bytearray | memoryview, *, max_depth: int = MAX_DEPTH,
                    max_objects: int = MAX_OBJECTS) -> int:
    """Walk one msgpack object iteratively (nothing is built); returns how many objects it holds.

    Raises MalformedMessage when containers nest deeper than `max_depth`, when there are more than
    `max_objects` objects, when a length runs past the end, on the unused type byte 0xc1, or on trailing
    bytes. Costs O(min(objects, max_objects)) whatever the size: strings and binaries are skipped whole."""
    end = len(data)
    pos = 0
    objects = 0
    pending = [1]  # objects still to read in each open container, innermost last (the root first)
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        objects += 1
        if objects > max_objects:
            raise MalformedMessage(f"more than {max_objects} msgpack objects")
        if pos >= end:
            raise MalformedMessage(f"truncated msgpack: an object was expected at offset {pos}")
        at, b = pos, data[pos]
        pos += 1
        if b <= 0x7F or b >= 0xE0:  # positive and negative fixint
            continue
        count = -1
        if b <= 0x8F:
            count = 2 * (b & 0x0F)  # fixmap: keys and values
        elif b <= 0x9F:
            count = b & 0x0F  # fixarray
        elif b <= 0xBF:
            pos += b & 0x1F  # fixstr
        elif b in _FIXED_SIZE:
            pos += _FIXED_SIZE[b]
        elif b in _SIZED_BYTES:
            pos += _SIZED_BYTES[b] + _read_length(data, pos, _SIZED_BYTES[b], end)
        elif b in _SIZED_EXT:
            pos += _SIZED_EXT[b] + 1 + _read_length(data, pos, _SIZED_EXT[b], end)
        elif b in _SIZED_ARRAY:
            count = _read_length(data, pos, _SIZED_ARRAY[b], end)
            pos += _SIZED_ARRAY[b]
        elif b in _SIZED_MAP:
            count = 2 * _read_length(data, pos, _SIZED_MAP[b], end)
            pos += _SIZED_MAP[b]
        else:
            raise MalformedMessage(f"invalid msgpack type byte 0x{b:02x} at offset {at}")
        if pos > end:
            raise MalformedMessage(f"truncated msgpack: the object at offset {at} runs past the end")
        if count >= 0:
            if len(pending) > max_depth:
                raise MalformedMessage(f"msgpack containers nested deeper than {max_depth}")
            if count > max_objects - objects:
                raise MalformedMessage(f"a container declares {count} objects, more than {max_objects} in all")
            pending.append(count)
    if pos != end:
        raise MalformedMessage(f"{end - pos} bytes after the msgpack object")
    return objects


def _read_length(data: bytes | bytearray | memoryview, pos: int, size: int, end: int) -> int:
    if pos + size > end:
        raise MalformedMessage(f"truncated msgpack length at offset {pos}")
    return int.from_bytes(data[pos : pos + size], "big")


def unpack(data: bytes, max_bytes: int, *, max_depth: int = MAX_DEPTH, max_objects: int = MAX_OBJECTS) -> Any:
    """Decode msgpack with strict options after bounding its size, depth and object count;
    raises MalformedMessage."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise MalformedMessage(f"message of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        check_structure(data, max_depth=max_depth, max_objects=max_objects)
    except MalformedMessage as exc:
        raise MalformedMessage(f"undecodable msgpack: {exc}") from exc
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
