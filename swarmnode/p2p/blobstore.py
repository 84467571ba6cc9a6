"""Content-addressed blob stores: a blob's id is keccak256 of its bytes (the id the chain stores)."""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path

from eth_utils import keccak

from swarmnode.p2p.errors import BlobCorrupted, BlobError


def content_id(blob: bytes) -> bytes:
    """keccak256 of the bytes: identical to swarmnode.aggregation.codec.content_id (not imported: torch)."""
    return keccak(blob)


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

    def _path(self, cid: bytes) -> Path:
        if len(cid) != 32:
            raise BlobError(f"content id must be 32 bytes, got {len(cid)}")
        name = cid.hex()
        return self.root / name[:2] / name

    def has(self, cid: bytes) -> bool:
        return self._path(cid).is_file()

    def remove(self, cid: bytes) -> bool:
        try:
            self._path(cid).unlink()
            return True
        except FileNotFoundError:
            return False

    def get(self, cid: bytes) -> bytes | None:
        """The blob, re-verified against its id: a file damaged on disk is an error, not data."""
        try:
            blob = self._path(cid).read_bytes()
        except FileNotFoundError:
            return None
        if content_id(blob) != cid:
            raise BlobCorrupted(f"blob 0x{cid.hex()} is damaged on disk at {self._path(cid)}")
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
        os.replace(tmp, path)
