"""SwarmRounds transactions: build and sign the node's calls, and read commits back out of a block's txs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak

from consensus.contracts import SWARM_ROUNDS_ADDRESS
from consensus.devtools import sign_tx

FIXED_ONE = 1_000_000  # SwarmRounds stores loss and accuracy as value * 1e6
TX_GAS = 2_000_000  # attestAggregate may finalize the round and pay every contributor


def selector(signature: str) -> bytes:
    return keccak(signature.encode())[:4]


COMMIT_SIG = "commitUpdate(uint256,bytes32,uint256,uint256,uint256)"
COMMIT_TYPES = ["uint256", "bytes32", "uint256", "uint256", "uint256"]
COMMIT_SELECTOR = selector(COMMIT_SIG)
ATTEST_SELECTOR = selector("attestAggregate(uint256,bytes32)")
REGISTER_SELECTOR = selector("register(string)")


@dataclass(frozen=True)
class CommitCall:
    round: int
    update_hash: bytes
    num_samples: int
    local_loss: int  # x 1e6
    local_accuracy: int  # x 1e6


def fixed(x: float) -> int:
    """A non-negative metric in the contract's fixed point (NaN/inf/negative become 0)."""
    if not x == x or x < 0 or x == float("inf"):
        return 0
    return int(round(x * FIXED_ONE))


def commit_data(c: CommitCall) -> bytes:
    return COMMIT_SELECTOR + abi_encode(COMMIT_TYPES, [c.round, c.update_hash, c.num_samples, c.local_loss,
                                                       min(c.local_accuracy, FIXED_ONE)])


def attest_data(round_: int, model_hash: bytes) -> bytes:
    return ATTEST_SELECTOR + abi_encode(["uint256", "bytes32"], [round_, model_hash])


def register_data(peer_id: str) -> bytes:
    return REGISTER_SELECTOR + abi_encode(["string"], [peer_id])


def decode_commit(data: bytes) -> CommitCall | None:
    """The commitUpdate call in a tx's data, or None if the data is not one (malformed counts as not)."""
    if len(data) < 4 or bytes(data[:4]) != COMMIT_SELECTOR:
        return None
    try:
        r, h, n, loss, acc = abi_decode(COMMIT_TYPES, bytes(data[4:]))
    except Exception:  # eth_abi raises several types for short or bad data
        return None
    return CommitCall(int(r), bytes(h), int(n), int(loss), int(acc))


def commits_in(txs: Sequence[Any]) -> list[CommitCall]:
    """commitUpdate calls to SwarmRounds among a block's transactions (py-evm tx objects)."""
    out = []
    for tx in txs:
        if bytes(tx.to) != SWARM_ROUNDS_ADDRESS:
            continue
        call = decode_commit(bytes(tx.data))
        if call is not None:
            out.append(call)
    return out


def sign_call(secret: bytes, chain_id: int, nonce: int, data: bytes, base_fee: int) -> bytes:
    """A signed EIP-1559 call to SwarmRounds paying at most twice the current base fee (min 1 gwei)."""
    max_fee = max(2 * base_fee, 10**9) + 1
    return sign_tx(secret, chain_id, nonce, to=SWARM_ROUNDS_ADDRESS, data=data, gas=TX_GAS, max_fee=max_fee, tip=1)
