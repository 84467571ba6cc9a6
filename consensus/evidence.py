"""Evidence of equivocation: two conflicting votes signed by one validator, ready to become a slash tx.

Two signed votes conflict when they share (chain id, height, round, step) but name different block
hashes. This is exactly what the Staking contract's `slash(evidence)` re-checks with ecrecover; building
that transaction's calldata is the contracts side's job, which takes `Evidence.first` and `.second`.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_abi import encode as abi_encode
from eth_utils import keccak

from consensus.errors import ConsensusError, InvalidSignature
from consensus.votes import SignedVote, vote_signer


class InvalidEvidence(ConsensusError):
    """Two votes do not prove equivocation (different slots, same hash, or different signers)."""


@dataclass(frozen=True)
class Evidence:
    """Two conflicting signed votes by `validator`, ordered canonically (by block hash)."""

    validator: bytes
    first: SignedVote
    second: SignedVote

    @property
    def slot(self) -> tuple[int, int, int, int]:
        return (self.first.chain_id, self.first.height, self.first.round, self.first.step)


def make_evidence(a: SignedVote, b: SignedVote, validator: bytes) -> Evidence:
    """Canonical evidence for two votes already known to be signed by `validator` (not re-verified)."""
    first, second = (a, b) if a.block_hash < b.block_hash else (b, a)
    return Evidence(validator, first, second)


def verify_evidence(evidence: Evidence) -> bytes:
    """Check that the two votes conflict and both recover to `evidence.validator`; returns it.

    Raises InvalidEvidence (or InvalidSignature for unrecoverable signatures).
    """
    a, b = evidence.first, evidence.second
    if (a.chain_id, a.height, a.round, a.step) != (b.chain_id, b.height, b.round, b.step):
        raise InvalidEvidence(
            f"votes are for different slots: {(a.chain_id, a.height, a.round, a.step)} "
            f"vs {(b.chain_id, b.height, b.round, b.step)}"
        )
    if a.block_hash == b.block_hash:
        raise InvalidEvidence(f"votes at height {a.height} round {a.round} name the same block hash")
    for vote in (a, b):
        signer = vote_signer(vote)
        if signer != evidence.validator:
            raise InvalidSignature(
                f"vote at height {vote.height} signed by 0x{signer.hex()}, "
                f"not the accused 0x{evidence.validator.hex()}"
            )
    return evidence.validator


class EvidencePool:
    """Deduplicated evidence, one entry per (validator, slot); bounded."""

    def __init__(self, limit: int = 1024) -> None:
        self._items: dict[tuple[bytes, tuple[int, int, int, int]], Evidence] = {}
        self._limit = limit

    def add(self, evidence: Evidence) -> bool:
        """Store evidence; False if it is a duplicate or the pool is full."""
        key = (evidence.validator, evidence.slot)
        if key in self._items or len(self._items) >= self._limit:
            return False
        self._items[key] = evidence
        return True

    def pending(self) -> list[Evidence]:
        return list(self._items.values())

    def remove(self, evidence: Evidence) -> None:
        self._items.pop((evidence.validator, evidence.slot), None)

    def __len__(self) -> int:
        return len(self._items)


_VOTE_ABI = "(uint256,uint256,uint256,bytes32,bytes)"  # Staking.vy's Vote struct
SLASH_SELECTOR = keccak(f"slash(address,{_VOTE_ABI},{_VOTE_ABI})".encode())[:4]


def slash_calldata(evidence: Evidence) -> bytes:
    """Calldata for `Staking.slash(offender, voteA, voteB)`: what turns evidence into a transaction."""

    def vote(v: SignedVote) -> tuple[int, int, int, bytes, bytes]:
        return (v.height, v.round, v.step, v.block_hash, v.signature)

    return SLASH_SELECTOR + abi_encode(
        ["address", _VOTE_ABI, _VOTE_ABI], [evidence.validator, vote(evidence.first), vote(evidence.second)]
    )
