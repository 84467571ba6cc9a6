"""consensus.db.LevelDB's read cache: values of 32-byte keys are answered from memory, every write replaces
or drops what is cached, the cache stays within its byte limit, a read racing with a write never leaves an
old value behind, and a closed database answers nothing from memory."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from consensus.db import _ENTRY_OVERHEAD, _MAX_CACHED_VALUE, DatabaseError, LevelDB, StagedDB


def key(i: int) -> bytes:
    return i.to_bytes(32, "big")


def test_reads_of_32_byte_keys_are_served_from_memory_and_others_from_disk(tmp_path: Path) -> None:
    db = LevelDB(tmp_path / "db", sync_writes=False)
    db.write_many({key(1): b"one", b"canonical-head": b"h1"})
    db._db.put(key(2), b"two")  # behind the cache's back: only a read brings it in
    assert db[key(2)] == b"two" and db[key(2)] == b"two" and db[key(1)] == b"one"
    stats = db.cache_statistics()
    assert (stats["hits"], stats["misses"]) == (2, 1), stats  # key(1) was cached by its write
    db._db.put(b"canonical-head", b"h2")  # a key of another length is never cached
    assert db[b"canonical-head"] == b"h2"
    with pytest.raises(KeyError):
        db[key(3)]
    assert not db.exists(key(3)) and db.exists(key(1))
    db.close()


def test_every_write_replaces_or_drops_the_cached_value(tmp_path: Path) -> None:
    db = LevelDB(tmp_path / "db", sync_writes=False)
    db[key(1)] = b"a"
    assert db[key(1)] == b"a"
    db[key(1)] = b"b"
    assert db[key(1)] == b"b"
    db.write_many({key(1): b"c"})
    assert db[key(1)] == b"c"
    del db[key(1)]
    with pytest.raises(KeyError):
        db[key(1)]
    db.write_many({key(2): b"x"})
    assert db[key(2)] == b"x"
    db.write_many({}, (key(2),))
    with pytest.raises(KeyError):
        db[key(2)]
    with db.atomic_batch() as batch:  # py-evm's batches go through write_many
        batch[key(3)] = b"y"
    assert db[key(3)] == b"y"
    staged = StagedDB(db)  # the chain's staging layer: a flush is a write_many
    staged[key(3)] = b"z"
    assert db[key(3)] == b"y"
    staged.flush()
    assert db[key(3)] == b"z" and db._db.get(key(3)) == b"z"
    assert db.cache_statistics()["bytes"] == _ENTRY_OVERHEAD + len(b"z")
    db.close()


def test_the_cache_keeps_within_its_byte_limit_evicting_the_least_recently_used(tmp_path: Path) -> None:
    entry = _ENTRY_OVERHEAD + 100  # what one 100-byte value costs
    db = LevelDB(tmp_path / "db", sync_writes=False, cache_bytes=3 * entry)
    db.write_many({key(i): bytes([i]) * 100 for i in range(3)})  # exactly at the limit: all three kept
    assert db.cache_statistics()["bytes"] == 3 * entry and db.cache_statistics()["entries"] == 3
    assert db[key(0)] == bytes([0]) * 100  # now the most recently used
    db.write_many({key(3): b"\x03" * 100})  # one entry over: the least recently used (key 1) goes
    stats = db.cache_statistics()
    assert stats["bytes"] == 3 * entry and stats["entries"] == 3
    assert key(1) not in db._cache.entries and key(0) in db._cache.entries
    assert db[key(1)] == b"\x01" * 100  # still on disk
    assert db.cache_statistics()["bytes"] <= 3 * entry
    db.write_many({key(4): b"\x04" * (3 * entry)})  # larger than the whole cache: nothing stays beside it
    assert db.cache_statistics()["bytes"] <= 3 * entry
    assert db[key(4)] == b"\x04" * (3 * entry)
    db.close()


def test_a_value_above_the_per_value_cap_is_read_from_disk_each_time(tmp_path: Path) -> None:
    db = LevelDB(tmp_path / "db", sync_writes=False, cache_bytes=8 * _MAX_CACHED_VALUE)
    db.write_many({key(1): b"\x01" * _MAX_CACHED_VALUE, key(2): b"\x02" * (_MAX_CACHED_VALUE + 1)})
    assert key(1) in db._cache.entries and key(2) not in db._cache.entries
    assert db[key(2)] == b"\x02" * (_MAX_CACHED_VALUE + 1)
    assert key(2) not in db._cache.entries
    db.write_many({key(1): b"\x03" * (_MAX_CACHED_VALUE + 1)})  # a cached key overwritten by a big value
    assert key(1) not in db._cache.entries and db[key(1)] == b"\x03" * (_MAX_CACHED_VALUE + 1)
    assert db.cache_statistics()["bytes"] == 0
    db.close()


class _PausingReads:
    """plyvel.DB as the cache sees it, except that a get from `thread` stops after reading from disk until
    `resume` is set: the widest possible race between a read and a write."""

    def __init__(self, db: object) -> None:
        self._db, self.thread = db, None
        self.read_done, self.resume = threading.Event(), threading.Event()

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        if threading.current_thread() is self.thread:
            self.read_done.set()
            assert self.resume.wait(10)
        return value

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


def test_a_read_racing_with_a_write_never_leaves_the_old_value_cached(tmp_path: Path) -> None:
    """The RPC call workers read from their own threads while the chain's thread commits. A read that got
    the old value from disk just before a write returns that value, but must not store it in the cache."""
    db = LevelDB(tmp_path / "db", sync_writes=False)
    db._db.put(key(7), b"old")  # on disk, not cached
    pausing = db._db = _PausingReads(db._db)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(db[key(7)]))
    pausing.thread = reader
    reader.start()
    assert pausing.read_done.wait(10)  # the reader holds the old value, not yet cached
    db.write_many({key(7): b"new"})
    pausing.resume.set()
    reader.join(10)
    assert got == [b"old"]  # it raced: either answer was allowed
    assert db[key(7)] == b"new", "an old value read before the write was cached after it"
    db._db = pausing._db
    db.close()


def test_a_closed_database_answers_nothing_from_memory(tmp_path: Path) -> None:
    db = LevelDB(tmp_path / "db", sync_writes=False)
    db.write_many({key(1): b"one"})
    assert db[key(1)] == b"one"
    db.close()
    with pytest.raises(DatabaseError, match="closed"):
        db[key(1)]
    assert db.cache_statistics()["entries"] == 0
