"""Bounds on RLP from peers, checked BEFORE any recursive decoder sees the bytes.

pyrlp decodes and encodes recursively, and py_ecc (pulled in by py-evm) raises Python's recursion limit
to 100,000 at import: re-encoding a list nested ~7,000 levels deep (20 KB of bytes) overflows the C stack
and kills the process with SIGSEGV, and a decoded flat list costs pyrlp quadratic time in its length.
This module walks the RLP structure iteratively (an explicit stack, no recursion) and rejects, with
MalformedRLP, anything that is not exactly one canonical RLP item within a nesting depth and an item
budget. The canonical-form rules are pyrlp's strict ones, so every input pyrlp accepts within the bounds
passes, and a slice this module returns hashes exactly as pyrlp would re-encode its decoded value.

Depth counts lists: a bare string has depth 0, `[]` depth 1, `[[]]` depth 2. Items count every string
and list, the outermost included. The scan costs O(min(items, max_items)) and allocates nothing large.

pyrlp's decoder is also quadratic in a list's width (it rebuilds each list's encoding by concatenating
its children one at a time): a typed transaction whose payload was one list of 40,000 20-byte strings
(an 800 KB proposal) took 1.1 s to reject, and a 16 MiB sync body far longer. `install()` replaces
pyrlp's strict `decode_raw` with `linear_decode_raw`: the same results and the same DecodingError cases,
iterative and linear. consensus/__init__.py installs it, so every decoder in the process uses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import rlp.codec
from rlp.exceptions import DecodingError

from consensus.errors import ConsensusError

MAX_RLP_DEPTH = 8  # a block is 3 deep (block, tx list, legacy tx), a typed tx payload 4 (access list keys)
MAX_TX_ITEMS = 32_768  # a 128 KiB transaction holds at most ~17,000 (empty access-list entries)
MAX_HEADER_ITEMS = 64  # a Prague header is one list of 21 strings
MIN_GAS_PER_ITEM = 700  # every item of a valid block beyond a few fixed ones costs >= 800 gas
BLOCK_FIXED_ITEMS = 256


class MalformedRLP(ConsensusError):
    """Bytes that are not one canonical RLP item, or that nest deeper or hold more items than allowed."""


class RLPLimitExceeded(MalformedRLP):
    """Well-formed as far as it was read, but nested deeper or holding more items than allowed."""


def max_block_items(gas_limit: int) -> int:
    """Item budget of a block under `gas_limit` (header, transactions and their typed payloads together).

    Sound for every valid block: a transaction costs >= 21,000 gas for at most 14 items (1,500 gas each),
    an access-list entry 2,400 gas for 3 items, a storage key 1,900 gas for one; uncles must be empty."""
    return BLOCK_FIXED_ITEMS + max(0, gas_limit) // MIN_GAS_PER_ITEM


def read_prefix(data: bytes | memoryview, pos: int, end: int) -> tuple[bool, int, int]:
    """The item starting at `pos`, which must end by `end`: (is_list, payload_start, payload_end).

    Enforces pyrlp's strict canonical form; raises MalformedRLP."""
    if pos >= end:
        raise MalformedRLP(f"truncated: an item was expected at offset {pos}")
    b0 = data[pos]
    if b0 < 0x80:  # a single byte is its own encoding
        return False, pos, pos + 1
    if b0 < 0xB8:  # short string
        start, length, is_list = pos + 1, b0 - 0x80, False
        if length == 1 and start < end and data[start] < 0x80:
            raise MalformedRLP(f"single byte at offset {start} encoded as a short string")
    elif b0 < 0xC0:  # long string
        (start, length), is_list = _long_length(data, pos, end, b0 - 0xB7), False
    elif b0 < 0xF8:  # short list
        start, length, is_list = pos + 1, b0 - 0xC0, True
    else:  # long list
        (start, length), is_list = _long_length(data, pos, end, b0 - 0xF7), True
    if start + length > end:
        raise MalformedRLP(f"item at offset {pos} declares {length} bytes, only {max(0, end - start)} remain")
    return is_list, start, start + length


def _long_length(data: bytes | memoryview, pos: int, end: int, size: int) -> tuple[int, int]:
    if pos + 1 + size > end:
        raise MalformedRLP(f"truncated length of the item at offset {pos}")
    if data[pos + 1] == 0:
        raise MalformedRLP(f"length of the item at offset {pos} starts with a zero byte")
    length = int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
    if length < 56:
        raise MalformedRLP(f"long form used for a {length}-byte item at offset {pos}")
    return pos + 1 + size, length


def scan(data: bytes | memoryview, *, max_depth: int = MAX_RLP_DEPTH, max_items: int = MAX_TX_ITEMS) -> int:
    """Check that `data` is exactly one canonical RLP item within the bounds; returns its item count."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedRLP(f"expected bytes, got {type(data).__name__}")
    end = len(data)
    is_list, pos, stop = read_prefix(data, 0, end)
    if stop != end:
        raise MalformedRLP(f"{end - stop} bytes after the RLP item")
    if max_items < 1:
        raise RLPLimitExceeded(f"an RLP item where the budget allows {max_items}")
    if not is_list:
        return 1
    if max_depth < 1:
        raise RLPLimitExceeded(f"a list where nesting depth {max_depth} allows only a string")
    items = 1
    ends = [stop]  # payload end of every open list, innermost last
    while ends:
        if pos == ends[-1]:
            ends.pop()
            continue
        is_list, start, stop = read_prefix(data, pos, ends[-1])
        items += 1
        if items > max_items:
            raise RLPLimitExceeded(f"more than {max_items} RLP items")
        if is_list:
            if len(ends) >= max_depth:
                raise RLPLimitExceeded(f"RLP lists nested deeper than {max_depth}")
            ends.append(stop)
            pos = start
        else:
            pos = stop
    return items


def list_items(data: bytes | memoryview) -> Iterator[tuple[bool, int, int, int]]:
    """The direct children of the top-level list `data` (already scanned or not):
    (is_list, item_start, payload_start, payload_end) each. Raises MalformedRLP."""
    is_list, pos, end = read_prefix(data, 0, len(data))
    if not is_list:
        raise MalformedRLP("expected an RLP list, got a string")
    if end != len(data):
        raise MalformedRLP(f"{len(data) - end} bytes after the RLP list")
    while pos < end:
        child_is_list, start, stop = read_prefix(data, pos, end)
        yield child_is_list, pos, start, stop
        pos = stop


def check_transaction(raw: bytes, *, max_items: int = MAX_TX_ITEMS) -> int:
    """Bound a raw signed transaction (legacy RLP list, or type byte + RLP payload); returns its items."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise MalformedRLP(f"expected bytes, got {type(raw).__name__}")
    if not raw:
        raise MalformedRLP("empty transaction")
    if raw[0] < 0x80:  # typed (EIP-2718): py-evm RLP-decodes the payload after the type byte
        return scan(memoryview(raw)[1:], max_items=max_items)
    return scan(raw, max_items=max_items)


def check_block(block_rlp: bytes, *, max_items: int) -> None:
    """Bound an encoded block, the RLP payloads of its typed transactions (byte strings that py-evm
    decodes in turn) included: depth, canonical form and one item budget for the whole. MalformedRLP."""
    budget = max_items - scan(block_rlp, max_items=max_items)
    view = memoryview(block_rlp)
    children = list_items(view)
    header = next(children, None)
    if header is not None and header[0]:
        scan(view[header[1] : header[3]], max_depth=1, max_items=MAX_HEADER_ITEMS)  # as header_rlp requires
    tx_list = next(children, None)
    if tx_list is None or not tx_list[0]:
        return  # not a block: py-evm's decoder says so without recursing into anything deep
    _, _, start, stop = tx_list
    pos = start
    while pos < stop:
        is_list, payload, end = read_prefix(view, pos, stop)
        if not is_list and end > payload and view[payload] < 0x80:
            if budget < 1:
                raise RLPLimitExceeded(f"more than {max_items} RLP items in the block and its transactions")
            budget -= scan(view[payload + 1 : end], max_items=budget)
        pos = end


def header_rlp(block_rlp: bytes) -> bytes:
    """The RLP of a block's header (its first item): a flat list of at most MAX_HEADER_ITEMS byte strings,
    canonical. keccak of it is the block hash, identical to py-evm's hash of the decoded block (the
    header's fields re-encode to exactly these bytes). The body is not checked here."""
    if not isinstance(block_rlp, bytes | bytearray | memoryview):
        raise MalformedRLP(f"expected bytes, got {type(block_rlp).__name__}")
    view = memoryview(block_rlp)
    first = next(list_items(view), None)
    if first is None or not first[0]:
        raise MalformedRLP("block RLP has no header list")
    _, item_start, _, stop = first
    header = view[item_start:stop]
    # Every header field is a byte string. A list in their place is not just invalid: py-evm reads an
    # empty list as the integer 0, so the block would decode and execute while this slice hashed to
    # something other than py-evm's hash of the block, and the certified block could never commit.
    scan(header, max_depth=1, max_items=MAX_HEADER_ITEMS)
    return bytes(header)


# ---------------------------------------------------------------- a linear decoder for pyrlp

_original_decode_raw = rlp.codec.decode_raw


def linear_decode_raw(item: bytes, strict: bool, preserve_per_item_rlp: bool = False) -> tuple[Any, list[Any]]:
    """pyrlp's `decode_raw` (item, per_item_rlp), iterative and linear in the input.

    pyrlp's `decode` passes its `recursive_cache` as `preserve_per_item_rlp` and, without it, reads only
    per_item_rlp[0] (the whole item's encoding): the per-child encodings are then not built at all
    (fewer allocations, so fewer garbage-collector passes over a large heap). Non-strict decoding
    (trailing bytes allowed; pyrlp then also returns a truncated last string) is left to pyrlp's own
    function. Raises DecodingError where pyrlp does."""
    if not strict:
        return _original_decode_raw(item, strict, preserve_per_item_rlp)
    end = len(item)
    try:
        is_list, start, stop = read_prefix(item, 0, end)
        if stop != end:
            raise DecodingError(f"RLP string ends with {end - stop} superfluous bytes", item)
        if not is_list:
            return item[start:stop], [item[:stop]]
        # a list's per_item_rlp is [its own encoding, then each child's per_item_rlp]; pyrlp rebuilt the
        # encoding by concatenation, which (the parse being strict) is exactly the slice taken here
        keep = bool(preserve_per_item_rlp)
        root: list[Any] = []
        root_rlp: list[Any] = [item[:stop]]
        open_lists: list[tuple[list[Any], list[Any] | None, int]] = [(root, root_rlp if keep else None, stop)]
        pos = start
        while open_lists:
            items, per_item, list_end = open_lists[-1]
            if pos == list_end:
                open_lists.pop()
                continue
            child_is_list, child_start, child_stop = read_prefix(item, pos, list_end)
            if child_is_list:
                child: list[Any] = []
                child_rlp: list[Any] | None = None
                if per_item is not None:
                    child_rlp = [item[pos:child_stop]]
                    per_item.append(child_rlp)
                items.append(child)
                open_lists.append((child, child_rlp, child_stop))
                pos = child_start
            else:
                items.append(item[child_start:child_stop])
                if per_item is not None:
                    per_item.append([item[pos:child_stop]])
                pos = child_stop
        return root, root_rlp
    except MalformedRLP as exc:
        raise DecodingError(str(exc), item) from None


def install() -> None:
    """Make pyrlp decode with `linear_decode_raw`. Idempotent; refuses an rlp it does not know (with
    rusty-rlp installed, pyrlp decodes in Rust and is left alone)."""
    current = rlp.codec.decode_raw
    if current is linear_decode_raw:
        return
    if current is not _original_decode_raw or getattr(current, "__module__", "") != "rlp.codec":
        return  # not pyrlp's pure-Python decoder: nothing known to replace
    rlp.codec.decode_raw = linear_decode_raw
