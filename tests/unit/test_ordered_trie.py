"""The one-pass ordered trie gives exactly py-evm's roots and nodes."""

from __future__ import annotations

import os

import pytest
from eth.db.trie import _make_trie_root_and_nodes as pyevm_trie

from consensus.ordered_trie import ordered_trie_root_and_nodes


@pytest.mark.parametrize("size", [0, 1, 2, 3, 15, 16, 17, 127, 128, 129, 255, 256, 257, 300, 1100])
def test_matches_pyevm(size: int) -> None:
    items = tuple(os.urandom(1 + (i * 7919) % 120) for i in range(size))
    assert ordered_trie_root_and_nodes(items) == pyevm_trie(items)


def test_short_values_are_inlined_like_pyevm() -> None:
    items = tuple(bytes([i]) for i in range(40))
    assert ordered_trie_root_and_nodes(items) == pyevm_trie(items)
