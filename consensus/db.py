"""Key-value storage for the chain: a py-evm `BaseAtomicDB` over LevelDB, and a staging layer over it.

`LevelDB` maps py-evm's database API onto plyvel: a plain write goes straight to disk, and an
`atomic_batch()` becomes exactly one LevelDB write batch, applied atomically when the context exits.

`StagedDB` is what the execution layer hands to py-evm. Every write (plain or batched) stays in memory
until `flush()`, which writes everything accumulated, plus any extra keys the caller adds (the block's
commit certificate, its consensus bytes), as ONE atomic, fsynced batch on the base database. A block
that has been executed but is not yet final is therefore never on disk, and a process killed at any
moment leaves the disk at the last flushed block. `discard()` forgets the pending writes.

Neither class is thread-safe for writes; the chain that owns them runs in a single worker thread. Reads
of `LevelDB` may come from other threads too (the RPC call workers' channels).

`LevelDB` keeps the values of recently read or written 32-byte keys (trie nodes, code, headers: content
addresses) in a bounded LRU. Every block re-reads the same few hundred trie nodes through fresh py-evm
state objects, and each plyvel get costs a C call that releases and retakes the interpreter lock, which
a busy daemon's training threads hold: cached, a read is a dict lookup.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import plyvel
from eth.abc import AtomicWriteBatchAPI
from eth.db.atomic import AtomicDBWriteBatch
from eth.db.backends.base import BaseAtomicDB

from consensus.errors import ConsensusError


class DatabaseError(ConsensusError):
    """The on-disk database cannot be opened or written."""


class _Deleted:
    """Tombstone for a key deleted in a pending write set."""


_DELETED = _Deleted()


READ_CACHE_BYTES = 32 << 20  # memory for values of 32-byte keys (about 100,000 trie nodes with their overhead)
CACHED_KEY_LENGTH = 32
_MAX_CACHED_VALUE = 1 << 20  # a larger value (a big contract's code) is read from disk each time
_ENTRY_OVERHEAD = 200  # bytes an entry costs besides its value (key, objects, the LRU's links): measured ~170


class ByteLRU:
    """Values by key, least recently used evicted first, within `limit` bytes (each entry counts its value
    plus _ENTRY_OVERHEAD); a value above `max_value` is never kept. Not thread-safe: callers lock."""

    def __init__(self, limit: int, max_value: int = _MAX_CACHED_VALUE) -> None:
        self.limit, self.max_value = limit, max_value
        self.entries: OrderedDict[bytes, bytes] = OrderedDict()
        self.bytes = 0

    def get(self, key: bytes) -> bytes | None:
        value = self.entries.get(key)
        if value is not None:
            self.entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        """Keep `key`'s value (one above `max_value` only drops what was kept)."""
        self.drop(key)
        if len(value) > self.max_value:
            return
        self.entries[key] = value
        self.bytes += _ENTRY_OVERHEAD + len(value)
        while self.bytes > self.limit and self.entries:
            self.bytes -= _ENTRY_OVERHEAD + len(self.entries.popitem(last=False)[1])

    def drop(self, key: bytes) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= _ENTRY_OVERHEAD + len(old)

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0


class LevelDB(BaseAtomicDB):
    """py-evm atomic database over a LevelDB directory (one plyvel write batch per atomic batch)."""

    def __init__(self, path: Path | str, *, sync_writes: bool = True, cache_bytes: int = READ_CACHE_BYTES) -> None:
        self.path = Path(path)
        self._sync = sync_writes
        self._cache = ByteLRU(cache_bytes)
        self._cache_lock = threading.Lock()
        self._generation = 0  # bumped by every write: a read that raced with one is not cached
        self.cache_hits = self.cache_misses = 0
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._db = plyvel.DB(str(self.path), create_if_missing=True)
        except (OSError, plyvel.Error) as exc:
            raise DatabaseError(f"cannot open LevelDB at {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close LevelDB and let go of plyvel's handle at once. py-evm keeps objects that reach this one
        in functools.lru_caches until the interpreter tears down; a plyvel.DB freed that late raises in
        its __dealloc__ and Python prints "Error in sys.excepthook" at every exit."""
        db, self._db = self._db, _ClosedDB(self.path)
        with self._cache_lock:
            self._cache.clear()
            self._generation += 1
        if not db.closed:
            db.close()
        del db

    @property
    def closed(self) -> bool:
        return self._db.closed

    def __getitem__(self, key: bytes) -> bytes:
        value = self._get(key)
        if value is None:
            raise KeyError(key)
        return value

    def _get(self, key: bytes) -> bytes | None:
        if len(key) != CACHED_KEY_LENGTH:
            return self._db.get(key)
        with self._cache_lock:
            value = self._cache.get(key)
            if value is not None:
                self.cache_hits += 1
                return value
            self.cache_misses += 1
            generation = self._generation
        value = self._db.get(key)
        if value is not None:
            with self._cache_lock:
                if generation == self._generation:  # no write landed while we read
                    self._cache.put(key, value)
        return value

    def cache_statistics(self) -> dict[str, int]:
        """Reads of 32-byte keys answered from memory (`hits`) or from disk (`misses`), and what is kept."""
        with self._cache_lock:
            return {"hits": self.cache_hits, "misses": self.cache_misses, "entries": len(self._cache.entries),
                    "bytes": self._cache.bytes, "limit": self._cache.limit}  # bytes: values + _ENTRY_OVERHEAD each

    def _written(self, puts: Mapping[bytes, bytes], deletes: tuple[bytes, ...] = ()) -> None:
        """After a write is on disk: the cache holds the new values, and a read that began before the write
        (it may have seen the old value) does not store what it read."""
        with self._cache_lock:
            self._generation += 1
            for key in deletes:
                self._cache.drop(key)
            for key, value in puts.items():
                if len(key) == CACHED_KEY_LENGTH:
                    self._cache.put(key, value)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._db.put(key, value, sync=self._sync)
        self._written({key: value})

    def __delitem__(self, key: bytes) -> None:
        if self._db.get(key) is None:
            raise KeyError(key)
        self._db.delete(key, sync=self._sync)
        self._written({}, (key,))

    def _exists(self, key: bytes) -> bool:
        return self._get(key) is not None

    def write_many(self, puts: Mapping[bytes, bytes], deletes: tuple[bytes, ...] = ()) -> None:
        """Apply `puts` and `deletes` as one atomic LevelDB batch (fsynced when sync_writes)."""
        with self._db.write_batch(transaction=True, sync=self._sync) as batch:
            for key in deletes:
                batch.delete(key)
            for key, value in puts.items():
                batch.put(key, value)
        self._written(puts, deletes)

    @contextmanager
    def atomic_batch(self) -> Iterator[AtomicWriteBatchAPI]:
        # AtomicDBWriteBatch reads through to `self` and, on success, applies its diff to the target.
        # The target here collects the diff so that it lands in a single LevelDB write batch.
        collector = _Collector(self)
        with AtomicDBWriteBatch._commit_unless_raises(collector) as batch:
            yield batch
        self.write_many(collector.puts, tuple(collector.deletes))


class _ClosedDB:
    """What a closed LevelDB holds instead of the plyvel handle: every use is a DatabaseError."""

    closed = True

    def __init__(self, path: Path) -> None:
        self._path = path

    def __getattr__(self, name: str) -> object:
        raise DatabaseError(f"LevelDB at {self._path} is closed")


class _Collector:
    """Write target that records a committed AtomicDBWriteBatch diff instead of applying it."""

    def __init__(self, reader: LevelDB) -> None:
        self._reader = reader
        self.puts: dict[bytes, bytes] = {}
        self.deletes: set[bytes] = set()

    def __getitem__(self, key: bytes) -> bytes:
        return self._reader[key]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.deletes.discard(key)
        self.puts[key] = value

    def __delitem__(self, key: bytes) -> None:
        self.puts.pop(key, None)
        self.deletes.add(key)


class StagedDB(BaseAtomicDB):
    """Buffers every write in memory until `flush()` writes them to the base LevelDB in one batch."""

    def __init__(self, base: LevelDB) -> None:
        self.base = base
        self._pending: dict[bytes, bytes | _Deleted] = {}

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def __getitem__(self, key: bytes) -> bytes:
        value = self._pending.get(key)
        if value is None:
            return self.base[key]
        if isinstance(value, _Deleted):
            raise KeyError(key)
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._pending[key] = value

    def __delitem__(self, key: bytes) -> None:
        if key not in self:
            raise KeyError(key)
        self._pending[key] = _DELETED

    def _exists(self, key: bytes) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    @contextmanager
    def atomic_batch(self) -> Iterator[AtomicWriteBatchAPI]:
        with AtomicDBWriteBatch._commit_unless_raises(self) as batch:
            yield batch

    def flush(self, extra: Mapping[bytes, bytes] | None = None) -> None:
        """Write all pending writes plus `extra` to the base database as one atomic batch."""
        puts = {k: v for k, v in self._pending.items() if not isinstance(v, _Deleted)}
        deletes = tuple(k for k, v in self._pending.items() if isinstance(v, _Deleted))
        if extra:
            puts.update(extra)
        self.base.write_many(puts, deletes)
        self._pending.clear()

    def discard(self) -> None:
        """Forget every pending write."""
        self._pending.clear()
