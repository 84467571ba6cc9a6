"""Signed consensus votes: the one byte format shared by the BFT engine and the Staking contract.

A vote commits to (chain id, height, round, step, block hash). Its digest is

    keccak256(abi.encode(uint256 chainId, uint256 height, uint256 round, uint256 step, bytes32 blockHash))

and the signature is a plain secp256k1 signature over that digest, 65 bytes r || s || v with v in {27, 28},
so a Vyper contract verifies it with `ecrecover(digest, v, r, s)`. A nil vote has a zero block hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NewType

import coincurve
from eth_keys import keys
from eth_utils import keccak

from consensus.errors import InvalidSignature

Address = NewType("Address", bytes)  # 20 bytes

STEP_PROPOSAL = 0
STEP_PREVOTE = 1
STEP_PRECOMMIT = 2
STEPS = (STEP_PROPOSAL, STEP_PREVOTE, STEP_PRECOMMIT)
NIL_HASH = b"\x00" * 32


def vote_digest(chain_id: int, height: int, round_: int, step: int, block_hash: bytes) -> bytes:
    """The 32-byte message a validator signs; identical to what the Staking contract recomputes."""
    if step not in STEPS:
        raise ValueError(f"vote step must be one of {STEPS}, got {step}")
    if len(block_hash) != 32:
        raise ValueError(f"block hash must be 32 bytes, got {len(block_hash)}")
    # abi.encode(uint256, uint256, uint256, uint256, bytes32): five static 32-byte words, packed by hand
    # (eth_abi's encoder costs ~0.15 ms, paid for every vote signed or checked; a test pins equality)
    try:
        words = b"".join(int(x).to_bytes(32, "big") for x in (chain_id, height, round_, step))
    except OverflowError as exc:
        raise ValueError(f"vote fields must be uint256, got {(chain_id, height, round_, step)}") from exc
    return keccak(words + bytes(block_hash))


@dataclass(frozen=True)
class SignedVote:
    """A vote plus its 65-byte signature (r || s || v, v in {27, 28})."""

    chain_id: int
    height: int
    round: int
    step: int
    block_hash: bytes
    signature: bytes

    @property
    def digest(self) -> bytes:
        return vote_digest(self.chain_id, self.height, self.round, self.step, self.block_hash)

    @property
    def is_nil(self) -> bool:
        return self.block_hash == NIL_HASH


def sign_digest(private_key: bytes, digest: bytes) -> bytes:
    """Sign a 32-byte digest; returns r || s || v with v in {27, 28}."""
    # libsecp256k1 directly (what eth_keys' coincurve backend calls): deterministic RFC 6979, low s
    rsv = coincurve.PrivateKey(private_key).sign_recoverable(digest, hasher=None)
    return rsv[:64] + bytes([rsv[64] + 27])


@lru_cache(maxsize=8192)
def recover_address(digest: bytes, signature: bytes) -> Address:
    """The 20-byte address that signed `digest`; raises InvalidSignature when it cannot be recovered.

    Cached (a pure function): a vote is checked by the network layer and again by the driver."""
    if len(signature) != 65:
        raise InvalidSignature(f"signature must be 65 bytes, got {len(signature)}")
    v = signature[64]
    if v not in (27, 28):
        raise InvalidSignature(f"signature v must be 27 or 28, got {v}")
    try:  # libsecp256k1 directly, as eth_keys' coincurve backend does, without its per-call validation layers
        public = coincurve.PublicKey.from_signature_and_message(signature[:64] + bytes([v - 27]), digest, hasher=None)
    except (ValueError, TypeError) as exc:  # r or s out of range, no point recovers, digest not 32 bytes
        raise InvalidSignature(f"cannot recover signer: {exc}") from exc
    return Address(keccak(public.format(compressed=False)[1:])[-20:])


def sign_vote(private_key: bytes, chain_id: int, height: int, round_: int, step: int, block_hash: bytes) -> SignedVote:
    digest = vote_digest(chain_id, height, round_, step, block_hash)
    return SignedVote(chain_id, height, round_, step, block_hash, sign_digest(private_key, digest))


def vote_signer(vote: SignedVote) -> Address:
    """Recover the signer of a vote; raises InvalidSignature."""
    return recover_address(vote.digest, vote.signature)


def address_of(private_key: bytes) -> Address:
    return Address(keys.PrivateKey(private_key).public_key.to_canonical_address())
