"""Fast Merkle-Patricia root of an ordered list (transactions, receipts, withdrawals), built in one pass.

py-evm inserts the items one by one into a HexaryTrie, re-encoding the path at every insert; at 500
transactions that was about a quarter of the block build time. Here the trie is built bottom-up from
the sorted keys rlp(0), rlp(1), ... in one recursion: each node is encoded and hashed exactly once.
The result (root and node dict) is identical to py-evm's `make_trie_root_and_nodes`; a unit test
checks that for every size up to a few hundred. `install()` makes py-evm use it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import rlp
from eth_utils import keccak

BLANK_ROOT = keccak(rlp.encode(b""))


def _nibbles(key: bytes) -> tuple[int, ...]:
    out: list[int] = []
    for byte in key:
        out += (byte >> 4, byte & 0x0F)
    return tuple(out)


def _hex_prefix(nibbles: Sequence[int], leaf: bool) -> bytes:
    flag = 2 if leaf else 0
    if len(nibbles) % 2:
        packed = [(flag + 1) * 16 + nibbles[0]]
        rest = nibbles[1:]
    else:
        packed = [flag * 16]
        rest = nibbles
    packed += [rest[i] * 16 + rest[i + 1] for i in range(0, len(rest), 2)]
    return bytes(packed)


def _common_prefix_length(keys: Sequence[tuple[int, ...]], depth: int) -> int:
    first, last = keys[0], keys[-1]  # keys are sorted: the common prefix of all is that of the extremes
    n = 0
    limit = min(len(first), len(last)) - depth
    while n < limit and first[depth + n] == last[depth + n]:
        n += 1
    return n


class _Builder:
    def __init__(self) -> None:
        self.nodes: dict[bytes, bytes] = {}

    def ref(self, node: Any) -> Any:
        """How a parent refers to a child: inline if its encoding is < 32 bytes, else by hash."""
        encoded = rlp.encode(node)
        if len(encoded) < 32:
            return node
        digest = keccak(encoded)
        self.nodes[digest] = encoded
        return digest

    def build(self, keys: Sequence[tuple[int, ...]], values: Sequence[bytes], depth: int) -> Any:
        if len(keys) == 1:
            return [_hex_prefix(keys[0][depth:], leaf=True), values[0]]
        shared = _common_prefix_length(keys, depth)
        if shared:
            child = self._branch(keys, values, depth + shared)
            return [_hex_prefix(keys[0][depth:depth + shared], leaf=False), self.ref(child)]
        return self._branch(keys, values, depth)

    def _branch(self, keys: Sequence[tuple[int, ...]], values: Sequence[bytes], depth: int) -> list[Any]:
        slots: list[Any] = [b""] * 17
        start = 0
        if len(keys[0]) == depth:  # a key ending here (never for RLP-encoded indices, which are prefix-free)
            slots[16] = values[0]
            start = 1
        i = start
        while i < len(keys):
            nibble = keys[i][depth]
            j = i
            while j < len(keys) and keys[j][depth] == nibble:
                j += 1
            slots[nibble] = self.ref(self.build(keys[i:j], values[i:j], depth + 1))
            i = j
        return slots


def ordered_trie_root_and_nodes(encoded_items: Sequence[bytes]) -> tuple[bytes, dict[bytes, bytes]]:
    """Root hash and {hash: node} of the trie mapping rlp(i) -> encoded_items[i]."""
    if not encoded_items:
        return BLANK_ROOT, {}
    pairs = sorted((_nibbles(rlp.encode(i)), item) for i, item in enumerate(encoded_items))
    builder = _Builder()
    root = builder.build([k for k, _ in pairs], [v for _, v in pairs], 0)
    encoded_root = rlp.encode(root)
    root_hash = keccak(encoded_root)
    builder.nodes[root_hash] = encoded_root
    return root_hash, builder.nodes


@functools.lru_cache(64)
def _cached(encoded_items: tuple[bytes, ...]) -> tuple[bytes, dict[bytes, bytes]]:
    return ordered_trie_root_and_nodes(encoded_items)


def make_trie_root_and_nodes(items: Sequence[Any]) -> tuple[bytes, dict[bytes, bytes]]:
    """Drop-in replacement for eth.db.trie.make_trie_root_and_nodes (same inputs, same outputs)."""
    root, nodes = _cached(tuple(item.encode() for item in items))
    return root, dict(nodes)


def install() -> None:
    """Make py-evm's VM and chain DB compute block tries with this builder (idempotent)."""
    import eth.db.chain
    import eth.vm.base

    eth.vm.base.make_trie_root_and_nodes = make_trie_root_and_nodes  # type: ignore[attr-defined]
    eth.db.chain.make_trie_root_and_nodes = make_trie_root_and_nodes  # type: ignore[attr-defined]
