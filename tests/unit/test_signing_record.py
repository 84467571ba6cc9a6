"""Crash-safe signing record: persisted before use, refuses conflicting votes after a restart."""

from __future__ import annotations

import os

import pytest

from consensus.cluster import validator_key
from consensus.signing_record import CorruptSigningRecord, DoubleSignRefused, SigningRecord
from consensus.votes import NIL_HASH, sign_vote

KEY = validator_key(0)
A, B = b"\x0a" * 32, b"\x0b" * 32


def vote(h, r, s, block_hash):
    return sign_vote(KEY, 7, h, r, s, block_hash)


def test_record_survives_reopen(tmp_path):
    path = tmp_path / "sign.rec"
    rec = SigningRecord.open(path)
    assert rec.last is None
    rec.record(vote(5, 2, 1, A))
    reopened = SigningRecord.open(path)
    assert reopened.last is not None
    assert (reopened.last.key, reopened.last.block_hash) == ((5, 2, 1), A)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert not (tmp_path / "sign.rec.tmp").exists()


def test_restart_refuses_conflicting_vote_in_same_slot(tmp_path):
    path = tmp_path / "sign.rec"
    SigningRecord.open(path).record(vote(5, 2, 1, A))
    rec = SigningRecord.open(path)
    with pytest.raises(DoubleSignRefused, match=r"\(5, 2, 1\)"):
        rec.record(vote(5, 2, 1, B))
    with pytest.raises(DoubleSignRefused):
        rec.record(vote(5, 2, 1, NIL_HASH))


def test_refuses_earlier_slots_allows_same_vote_and_later_slots(tmp_path):
    rec = SigningRecord.open(tmp_path / "sign.rec")
    rec.record(vote(5, 2, 1, A))
    for h, r, s in ((5, 2, 0), (5, 1, 2), (4, 9, 2)):
        with pytest.raises(DoubleSignRefused):
            rec.record(vote(h, r, s, A))
    assert rec.check(5, 2, 1, A) is False  # identical re-send: allowed, nothing new to write
    rec.record(vote(5, 2, 2, B))
    rec.record(vote(5, 3, 0, A))
    rec.record(vote(6, 0, 1, NIL_HASH))
    assert SigningRecord.open(tmp_path / "sign.rec").last.key == (6, 0, 1)


def test_record_is_written_before_it_is_visible(tmp_path, monkeypatch):
    """If the fsync fails, the record raises and the in-memory slot does not advance."""
    rec = SigningRecord.open(tmp_path / "sign.rec")

    def broken_fsync(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        rec.record(vote(1, 0, 1, A))
    assert rec.last is None


def test_corrupt_record_refuses_to_start(tmp_path):
    path = tmp_path / "sign.rec"
    path.write_bytes(b"\x93garbage")
    with pytest.raises(CorruptSigningRecord):
        SigningRecord.open(path)


def test_lock_follows_the_latest_precommit_for_a_value_and_survives_reopen(tmp_path):
    path = tmp_path / "sign.rec"
    rec = SigningRecord.open(path)
    rec.record(vote(5, 0, 1, A))
    assert rec.lock_at(5) is None  # a prevote does not lock
    rec.record(vote(5, 0, 2, A))
    assert rec.lock_at(5) == (A, 0)  # L36: precommitting A locks it
    rec.record(vote(5, 1, 1, NIL_HASH))
    rec.record(vote(5, 1, 2, NIL_HASH))
    assert rec.lock_at(5) == (A, 0)  # nil votes keep the lock
    reopened = SigningRecord.open(path)
    assert reopened.lock_at(5) == (A, 0)
    assert reopened.lock_at(6) is None  # a lock belongs to its height only
    reopened.record(vote(5, 2, 2, B))
    assert SigningRecord.open(path).lock_at(5) == (B, 2)  # relocked on a newer polka


def test_version_1_record_is_still_read_without_a_lock(tmp_path):
    from consensus.wire import pack

    v = vote(9, 3, 2, A)
    path = tmp_path / "sign.rec"
    path.write_bytes(pack([1, 9, 3, 2, A, v.signature]))
    rec = SigningRecord.open(path)
    assert rec.last is not None and rec.last.key == (9, 3, 2)
    assert rec.lock_at(9) is None
    with pytest.raises(DoubleSignRefused):
        rec.record(vote(9, 3, 2, B))


@pytest.mark.parametrize("fields", [
    [2, 9, 3, 2, A, b"s" * 65],  # version 2 without the lock fields
    [2, 9, 3, 2, A, b"s" * 65, 9, 1, b"short"],  # lock hash not 32 bytes
    [2, 9, 3, 2, A, b"s" * 65, 9, -2, b""],  # lock round below -1
    [3, 9, 3, 2, A, b"s" * 65, 0, -1, b""],  # unknown version
    [],
])
def test_malformed_lock_fields_are_a_corrupt_record(tmp_path, fields):
    from consensus.wire import pack

    path = tmp_path / "sign.rec"
    path.write_bytes(pack(fields))
    with pytest.raises(CorruptSigningRecord):
        SigningRecord.open(path)
