"""Content-addressed blob stores: a blob's id is keccak256 of its bytes (the id the chain stores)."""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path

from eth_utils import keccak

from swarmnode.p2p.errors import BlobCorrupted, BlobError


def content_id(blob: bytes) -> bytes:
    """keccak256 of the bytes: identical to swarmnode.aggregation.codec.content_id (not imported: torch)."""
    return keccak(blob)


class VerifiedStamps:
    """Which files have been verified against their content id, as of which file state.

    Re-hashing a file on every read costs ~7 ms per MB (keccak): a node serves its update to every peer
    and reads the round's models several times. A file whose (inode, size, mtime) is what it was when
    it last hashed correctly is not hashed again; anything that rewrites it (a damaged copy put in its
    place, a byte flipped by a tool) changes the stamp and the next read verifies it again. Like git's
    index, this trusts that a file modified in place gets a different mtime; and as git does with
    "racily clean" entries, a file modified less than `racy_seconds` before it was verified is not
    trusted at all (a rewrite within the same timestamp tick would keep its mtime): it is hashed on
    every read until it is older. Thread-safe; bounded."""

    def __init__(self, limit: int = 65536, racy_seconds: float = 2.0) -> None:
        self._stamps: dict[object, tuple[int, int, int]] = {}
        self._lock = threading.Lock()
        self._limit = limit
        self._racy_ns = int(racy_seconds * 1e9)

    @staticmethod
    def stamp(st: os.stat_result) -> tuple[int, int, int]:
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def known_good(self, key: object, st: os.stat_result) -> bool:
        with self._lock:
            return self._stamps.get(key) == self.stamp(st)

    def record(self, key: object, st: os.stat_result) -> None:
        """`key`'s file, with this stat, hashed correctly just now."""
        if time.time_ns() - st.st_mtime_ns < self._racy_ns:
            return  # too fresh to tell a later same-tick rewrite from this content
        with self._lock:
            if len(self._stamps) >= self._limit:
                self._stamps.clear()
            self._stamps[key] = self.stamp(st)

    def forget(self, key: object) -> None:
        with self._lock:
            self._stamps.pop(key, None)


def read_with_stat(path: Path) -> tuple[bytes, os.stat_result]:
    """The file's bytes and the stat of the very file they were read from (FileNotFoundError if none)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        return f.read(), st


class BlobStore(ABC):
    """Where a node keeps the blobs it holds and serves. Methods are blocking but cheap for memory
    stores; callers on the event loop run directory stores through a worker thread."""

    @abstractmethod
    def has(self, cid: bytes) -> bool:
        """Whether the blob is held."""

    @abstractmethod
    def get(self, cid: bytes) -> bytes | None:
        """The blob's bytes, or None."""

    @abstractmethod
    def put_verified(self, cid: bytes, blob: bytes) -> None:
        """Store bytes already known to hash to `cid`."""

    def remove(self, cid: bytes) -> bool:
        """Forget a blob; True if it was held. Stores that never forget return False."""
        return False

    def put(self, blob: bytes) -> bytes:
        """Store a blob; returns its content id."""
        cid = content_id(blob)
        self.put_verified(cid, blob)
        return cid


class MemoryBlobStore(BlobStore):
    def __init__(self) -> None:
        self._blobs: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def has(self, cid: bytes) -> bool:
        return cid in self._blobs

    def get(self, cid: bytes) -> bytes | None:
        return self._blobs.get(cid)

    def put_verified(self, cid: bytes, blob: bytes) -> None:
        with self._lock:
            self._blobs[cid] = blob

    def remove(self, cid: bytes) -> bool:
        with self._lock:
            return self._blobs.pop(cid, None) is not None


class DirectoryBlobStore(BlobStore):
    """One file per blob, `<root>/<first 2 hex>/<64 hex>`, written atomically (tmp, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._verified = VerifiedStamps()

    def _path(self, cid: bytes) -> Path:
        if len(cid) != 32:
            raise BlobError(f"content id must be 32 bytes, got {len(cid)}")
        name = cid.hex()
        return self.root / name[:2] / name

    def has(self, cid: bytes) -> bool:
        return self._path(cid).is_file()

    def remove(self, cid: bytes) -> bool:
        self._verified.forget(cid)
        try:
            self._path(cid).unlink()
            return True
        except FileNotFoundError:
            return False

    def get(self, cid: bytes) -> bytes | None:
        """The blob, verified against its id (again whenever the file changed since it last hashed
        correctly, see VerifiedStamps): a file damaged on disk is an error, not data."""
        try:
            blob, st = read_with_stat(self._path(cid))
        except FileNotFoundError:
            return None
        if not self._verified.known_good(cid, st):
            if content_id(blob) != cid:
                self._verified.forget(cid)
                raise BlobCorrupted(f"blob 0x{cid.hex()} is damaged on disk at {self._path(cid)}")
            self._verified.record(cid, st)
        return blob

    def put_verified(self, cid: bytes, blob: bytes) -> None:
        path = self._path(cid)
        if path.is_file():
            return
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # stamped on a later verified read (a file this fresh is never trusted)
