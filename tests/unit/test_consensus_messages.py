"""The consensus wire codec: round trips, strict decoding, size limits; evidence checks."""

from __future__ import annotations

import msgpack
import pytest

from consensus.certificate import CommitCertificate
from consensus.cluster import validator_key
from consensus.errors import InvalidSignature
from consensus.evidence import EvidencePool, InvalidEvidence, make_evidence, verify_evidence
from consensus.messages import (
    MAX_MESSAGE_BYTES,
    ProposalMessage,
    SyncRequest,
    SyncResponse,
    VoteMessage,
    decode,
    encode,
)
from consensus.votes import address_of, sign_vote
from consensus.wire import MalformedMessage

KEY = validator_key(0)
H = b"\x42" * 32


def test_every_message_kind_round_trips():
    cert = CommitCertificate.from_precommits([sign_vote(validator_key(i), 7, 3, 0, 2, H) for i in range(3)])
    for msg in (
        ProposalMessage(sign_vote(KEY, 7, 3, 1, 0, H), -1, b"block bytes"),
        ProposalMessage(sign_vote(KEY, 7, 3, 2, 0, H), 1, b""),
        VoteMessage(sign_vote(KEY, 7, 3, 1, 1, H)),
        VoteMessage(sign_vote(KEY, 7, 3, 1, 2, b"\x00" * 32)),
        SyncRequest(12),
        SyncResponse(b"block", cert),
    ):
        assert decode(encode(msg)) == msg


def _vote_fields(step=1, height=3):
    v = sign_vote(KEY, 7, height, 0, step, H)
    return [v.chain_id, v.height, v.round, v.step, v.block_hash, v.signature]


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "undecodable"),
        (b"\xc1", "undecodable"),
        (msgpack.packb({"kind": 2}), "array"),
        (msgpack.packb([2, 2, _vote_fields()]), "version"),
        (msgpack.packb([1, 9, 1]), "unknown message kind"),
        (msgpack.packb([1, 2, _vote_fields(step=0)]), "not allowed"),  # a proposal posing as a vote
        (msgpack.packb([1, 1, _vote_fields(step=1), 0, b"b"]), "not allowed"),
        (msgpack.packb([1, 2, _vote_fields()[:5]]), "6 fields"),
        (msgpack.packb([1, 2, _vote_fields(height=0)]), "height"),
        (msgpack.packb([1, 2, _vote_fields() + [1]]), "6 fields"),
        (msgpack.packb([1, 2, [7, 3, 0, 1, "hash", b"s" * 65]]), "bytes"),
        (msgpack.packb([1, 2, [7, 3, 0, 1, H, b"s" * 64]]), "65 bytes"),
        (msgpack.packb([1, 2, [7, 3, -1, 1, H, b"s" * 65]]), "round"),
        (msgpack.packb([1, 2, [7, 3, 0, 1.0, H, b"s" * 65]]), "int"),
        (msgpack.packb([1, 3]), "sync request"),
        (msgpack.packb([1, 4, b"block", b"not a certificate"]), "undecodable"),
        (b"\x00" * (MAX_MESSAGE_BYTES + 1), "exceeds"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(data, match):
    with pytest.raises(MalformedMessage, match=match):
        decode(data)


def test_oversized_message_cannot_be_encoded():
    with pytest.raises(MalformedMessage, match="exceeds"):
        encode(ProposalMessage(sign_vote(KEY, 7, 3, 1, 0, H), -1, b"x" * MAX_MESSAGE_BYTES))


def test_evidence_verifies_only_real_conflicts():
    a, b = sign_vote(KEY, 7, 5, 1, 1, H), sign_vote(KEY, 7, 5, 1, 1, b"\x43" * 32)
    ev = make_evidence(b, a, address_of(KEY))
    assert ev.first.block_hash < ev.second.block_hash  # canonical order
    assert verify_evidence(ev) == address_of(KEY)
    with pytest.raises(InvalidEvidence, match="different slots"):
        verify_evidence(make_evidence(a, sign_vote(KEY, 7, 5, 2, 1, b"\x43" * 32), address_of(KEY)))
    with pytest.raises(InvalidEvidence, match="same block hash"):
        verify_evidence(make_evidence(a, a, address_of(KEY)))
    with pytest.raises(InvalidSignature):
        verify_evidence(make_evidence(a, sign_vote(validator_key(1), 7, 5, 1, 1, b"\x43" * 32), address_of(KEY)))
    pool = EvidencePool(limit=1)
    assert pool.add(ev) and not pool.add(ev) and len(pool) == 1


@pytest.mark.parametrize("fields", [(1, 1, 0, 1), (7331, 2**40, 3, 2), (2**256 - 1, 0, 2**255, 0)])
def test_vote_digest_is_abi_encode_and_signature_is_eth_keys(fields):
    """The hand-packed digest and the direct libsecp256k1 signature equal the eth_abi / eth_keys ones."""
    from eth_abi import encode as abi_encode
    from eth_keys import keys
    from eth_utils import keccak

    from consensus.votes import sign_digest, vote_digest

    block_hash = bytes(range(32))
    expected = keccak(abi_encode(["uint256"] * 4 + ["bytes32"], [*fields, block_hash]))
    assert vote_digest(*fields, block_hash) == expected
    secret = validator_key(3)
    ref = keys.PrivateKey(secret).sign_msg_hash(expected)
    assert sign_digest(secret, expected) == ref.r.to_bytes(32, "big") + ref.s.to_bytes(32, "big") + bytes([ref.v + 27])


def test_vote_digest_rejects_out_of_range_fields():
    from consensus.votes import vote_digest

    with pytest.raises(ValueError, match="uint256"):
        vote_digest(-1, 1, 0, 1, b"\x00" * 32)
    with pytest.raises(ValueError, match="uint256"):
        vote_digest(2**256, 1, 0, 1, b"\x00" * 32)


def test_recover_address_equals_eth_keys_and_rejects_bad_signatures():
    """recover_address calls libsecp256k1 directly; it must agree with eth_keys, and anything it cannot
    recover is an InvalidSignature (never a bare ValueError from the library)."""
    from eth_keys import keys

    from consensus.votes import recover_address, sign_digest

    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    for i in range(4):
        digest = bytes([i + 1]) * 32
        sig = sign_digest(validator_key(i), digest)
        ref = keys.Signature(vrs=(sig[64] - 27, int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")))
        assert recover_address.__wrapped__(digest, sig) == ref.recover_public_key_from_msg_hash(digest).to_canonical_address()
        assert recover_address.__wrapped__(digest, sig) == address_of(validator_key(i))
    for bad in (b"\x00" * 64 + b"\x1b", n.to_bytes(32, "big") + b"\x01" * 32 + b"\x1b", b"\x01" * 64 + b"\x1d",
                b"\x01" * 64):
        with pytest.raises(InvalidSignature):
            recover_address.__wrapped__(H, bad)
    with pytest.raises(InvalidSignature):
        recover_address.__wrapped__(b"short", sign_digest(KEY, H))
