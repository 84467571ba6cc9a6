"""Commit certificates: strict codec and finality verification from the certificate alone."""

from __future__ import annotations

import pytest

from consensus.certificate import CommitCertificate, InvalidCertificate, verify_certificate
from consensus.cluster import validator_key
from consensus.engine.validators import ValidatorSet
from consensus.votes import NIL_HASH, address_of, sign_vote
from consensus.wire import MalformedMessage, pack

CHAIN = 7
KEYS = [validator_key(i) for i in range(4)]
ADDRS = [address_of(k) for k in KEYS]
VSET = ValidatorSet.from_powers({a: 1 for a in ADDRS})
H = b"\xab" * 32


def cert_from(keys, height=3, round_=1, block_hash=H, step=2, chain=CHAIN):
    return CommitCertificate.from_precommits([sign_vote(k, chain, height, round_, step, block_hash) for k in keys])


def test_quorum_certificate_verifies_and_round_trips():
    cert = cert_from(KEYS[:3])
    assert verify_certificate(cert, VSET, CHAIN) == 3
    decoded = CommitCertificate.decode(cert.encode())
    assert decoded == cert
    assert verify_certificate(decoded, VSET, CHAIN) == 3


def test_certificate_without_quorum_is_rejected():
    with pytest.raises(InvalidCertificate, match="2 of 4 power"):
        verify_certificate(cert_from(KEYS[:2]), VSET, CHAIN)


def test_unequal_stake_counts_power_not_heads():
    vset = ValidatorSet.from_powers({ADDRS[0]: 70, ADDRS[1]: 10, ADDRS[2]: 10, ADDRS[3]: 10})
    assert verify_certificate(cert_from(KEYS[:1]), vset, CHAIN) == 70
    with pytest.raises(InvalidCertificate):
        verify_certificate(cert_from(KEYS[1:]), vset, CHAIN)


def test_duplicate_signer_is_rejected():
    sig = sign_vote(KEYS[0], CHAIN, 3, 1, 2, H).signature
    cert = CommitCertificate(CHAIN, 3, 1, H, (sig, sig, sig))
    with pytest.raises(InvalidCertificate, match="duplicate"):
        verify_certificate(cert, VSET, CHAIN)


def test_non_validator_signature_is_rejected():
    cert = cert_from(KEYS[:3] + [validator_key(50)])
    with pytest.raises(InvalidCertificate, match="non-validator"):
        verify_certificate(cert, VSET, CHAIN)


def test_tampered_certificate_fails():
    cert = cert_from(KEYS[:3])
    for forged in (
        CommitCertificate(CHAIN, 3, 1, b"\xcd" * 32, cert.signatures),  # other block
        CommitCertificate(CHAIN, 4, 1, H, cert.signatures),  # other height
        CommitCertificate(CHAIN, 3, 0, H, cert.signatures),  # other round
    ):
        with pytest.raises(InvalidCertificate):
            verify_certificate(forged, VSET, CHAIN)
    with pytest.raises(InvalidCertificate, match="chain"):
        verify_certificate(cert_from(KEYS[:3], chain=8), VSET, CHAIN)


def test_prevotes_cannot_form_a_certificate():
    with pytest.raises(InvalidCertificate):
        cert_from(KEYS[:3], step=1)


def test_nil_certificate_is_rejected():
    with pytest.raises(InvalidCertificate, match="nil"):
        verify_certificate(cert_from(KEYS[:3], block_hash=NIL_HASH), VSET, CHAIN)


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # reserved msgpack byte
        pack([1, CHAIN, 3, 1, H]),  # too few fields
        pack([2, CHAIN, 3, 1, H, [b"\x00" * 65]]),  # unknown version
        pack([1, CHAIN, 3, 1, b"short", [b"\x00" * 65]]),  # hash length
        pack([1, CHAIN, 3, 1, H, []]),  # no signatures
        pack([1, CHAIN, 3, 1, H, [b"\x00" * 64]]),  # signature length
        pack([1, "7", 3, 1, H, [b"\x00" * 65]]),  # wrong type
        pack([1, CHAIN, -3, 1, H, [b"\x00" * 65]]),  # negative height
        pack({"height": 3}),
    ],
)
def test_strict_decoding_rejects_malformed(data):
    with pytest.raises(MalformedMessage):
        CommitCertificate.decode(data)
