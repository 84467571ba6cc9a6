"""Importing the package selects safe-pysha3's keccak for eth-hash (py-evm's hashing), and it agrees
with pycryptodome's."""

from __future__ import annotations

import os

from eth_hash.auto import keccak
from eth_hash.backends import pycryptodome, pysha3

import consensus  # noqa: F401


def test_fast_backend_is_selected_and_agrees() -> None:
    assert os.environ.get("ETH_HASH_BACKEND") == "pysha3"
    for data in (b"", b"abc", bytes(range(256)) * 9):
        assert keccak(data) == pycryptodome.backend.keccak256(data) == pysha3.backend.keccak256(data)
    assert getattr(keccak.hasher, "__self__", None) is pysha3.backend
