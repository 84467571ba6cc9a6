"""Commit certificates: the precommits (> 2/3 of power) that make a block final, verifiable alone.

A late joiner verifies finality from the certificate and the validator set of that height, without
trusting the peer that sent it.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.engine.validators import ValidatorSet
from consensus.errors import ConsensusError, InvalidSignature
from consensus.votes import NIL_HASH, STEP_PRECOMMIT, SignedVote, vote_signer
from consensus.wire import MalformedMessage, as_bytes, as_int, as_list, pack, unpack

CERTIFICATE_VERSION = 1
MAX_CERTIFICATE_BYTES = 256 * 1024
MAX_PRECOMMITS = 2048


class InvalidCertificate(ConsensusError):
    """A commit certificate that does not prove finality (bad signature, signer, slot or power)."""


@dataclass(frozen=True)
class CommitCertificate:
    """Precommits for (height, round, block_hash); on the wire only their signatures travel."""

    chain_id: int
    height: int
    round: int
    block_hash: bytes
    signatures: tuple[bytes, ...]

    @classmethod
    def from_precommits(cls, precommits: tuple[SignedVote, ...] | list[SignedVote]) -> CommitCertificate:
        if not precommits:
            raise InvalidCertificate("a certificate needs at least one precommit")
        first = precommits[0]
        for v in precommits:
            if (v.chain_id, v.height, v.round, v.step, v.block_hash) != (
                first.chain_id, first.height, first.round, STEP_PRECOMMIT, first.block_hash
            ):
                raise InvalidCertificate(f"precommit for {(v.height, v.round, v.step)} does not match the first")
        return cls(first.chain_id, first.height, first.round, first.block_hash, tuple(v.signature for v in precommits))

    @property
    def precommits(self) -> tuple[SignedVote, ...]:
        return tuple(
            SignedVote(self.chain_id, self.height, self.round, STEP_PRECOMMIT, self.block_hash, sig)
            for sig in self.signatures
        )

    def encode(self) -> bytes:
        return pack([CERTIFICATE_VERSION, self.chain_id, self.height, self.round, self.block_hash, list(self.signatures)])

    @classmethod
    def decode(cls, data: bytes) -> CommitCertificate:
        """Strict decoding; raises MalformedMessage."""
        fields = as_list(unpack(data, MAX_CERTIFICATE_BYTES, max_objects=MAX_PRECOMMITS + 16), 6, "certificate")
        version = as_int(fields[0], "certificate version")
        if version != CERTIFICATE_VERSION:
            raise MalformedMessage(f"unsupported certificate version {version}")
        sigs = as_list(fields[5], None, "certificate signatures")
        if not 1 <= len(sigs) <= MAX_PRECOMMITS:
            raise MalformedMessage(f"certificate has {len(sigs)} signatures")
        return cls(
            chain_id=as_int(fields[1], "chain id"),
            height=as_int(fields[2], "height", minimum=1),
            round=as_int(fields[3], "round"),
            block_hash=as_bytes(fields[4], "block hash", length=32),
            signatures=tuple(as_bytes(s, "signature", length=65) for s in sigs),
        )


def verify_certificate(cert: CommitCertificate, validator_set: ValidatorSet, chain_id: int) -> int:
    """Check that validators with > 2/3 of `validator_set`'s power precommitted the block.

    Returns the power that signed; raises InvalidCertificate naming what is wrong.
    """
    if cert.chain_id != chain_id:
        raise InvalidCertificate(f"certificate for chain {cert.chain_id}, expected {chain_id}")
    if cert.block_hash == NIL_HASH:
        raise InvalidCertificate(f"certificate for height {cert.height} commits nil")
    seen: set[bytes] = set()
    power = 0
    for vote in cert.precommits:
        try:
            signer = vote_signer(vote)
        except InvalidSignature as exc:
            raise InvalidCertificate(f"height {cert.height}: unrecoverable precommit signature: {exc}") from exc
        if signer in seen:
            raise InvalidCertificate(f"height {cert.height}: duplicate precommit from 0x{signer.hex()}")
        signer_power = validator_set.power_of(signer)
        if signer_power == 0:
            raise InvalidCertificate(f"height {cert.height}: precommit from non-validator 0x{signer.hex()}")
        seen.add(signer)
        power += signer_power
    if not validator_set.has_quorum(power):
        raise InvalidCertificate(
            f"height {cert.height}: precommits carry {power} of {validator_set.total_power} power, need > 2/3"
        )
    return power
