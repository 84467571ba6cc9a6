"""Crash-safe signing: the last signed (height, round, step, hash) is on disk before a vote leaves.

The record is rewritten atomically (write temp, fsync, rename, fsync directory). After a restart the
node refuses to sign anything at or before the recorded slot, except the very same vote again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from consensus.errors import ConsensusError
from consensus.votes import SignedVote
from consensus.wire import MalformedMessage, as_bytes, as_int, as_list, pack, unpack

RECORD_VERSION = 1


class DoubleSignRefused(ConsensusError):
    """Signing this vote could conflict with one already signed (before or after a restart)."""


class CorruptSigningRecord(ConsensusError):
    """The signing record on disk is unreadable: refuse to start rather than risk a double sign."""


@dataclass(frozen=True)
class SignedSlot:
    height: int
    round: int
    step: int
    block_hash: bytes
    signature: bytes

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.height, self.round, self.step)


class SigningRecord:
    """The last slot this validator signed, persisted at `path` (None: memory only, for benchmarks)."""

    def __init__(self, path: Path | None, last: SignedSlot | None = None) -> None:
        self._path = path
        self._last = last

    @classmethod
    def open(cls, path: Path | str | None) -> SigningRecord:
        if path is None:
            return cls(None)
        path = Path(path)
        if not path.exists():
            return cls(path)
        return cls(path, _decode(path.read_bytes(), path))

    @property
    def last(self) -> SignedSlot | None:
        return self._last

    def check(self, height: int, round_: int, step: int, block_hash: bytes) -> bool:
        """True if signing is fresh, False if it repeats the last vote exactly; raises DoubleSignRefused."""
        last = self._last
        if last is None or (height, round_, step) > last.key:
            return True
        if (height, round_, step) == last.key and block_hash == last.block_hash:
            return False
        raise DoubleSignRefused(
            f"refusing to sign {(height, round_, step)} for 0x{block_hash.hex()[:16]}: "
            f"already signed {last.key} for 0x{last.block_hash.hex()[:16]}"
        )

    def record(self, vote: SignedVote) -> None:
        """Persist `vote` as the last signed slot (blocking: fsyncs). Raises DoubleSignRefused."""
        if not self.check(vote.height, vote.round, vote.step, vote.block_hash):
            return
        slot = SignedSlot(vote.height, vote.round, vote.step, vote.block_hash, vote.signature)
        if self._path is not None:
            _write_atomic(self._path, pack([RECORD_VERSION, slot.height, slot.round, slot.step, slot.block_hash, slot.signature]))
        self._last = slot


def _decode(data: bytes, path: Path) -> SignedSlot:
    try:
        f = as_list(unpack(data, 4096), 6, "signing record")
        if as_int(f[0], "version") != RECORD_VERSION:
            raise MalformedMessage(f"unsupported signing record version {f[0]}")
        return SignedSlot(
            as_int(f[1], "height"), as_int(f[2], "round"), as_int(f[3], "step"),
            as_bytes(f[4], "block hash", length=32), as_bytes(f[5], "signature", length=65),
        )
    except MalformedMessage as exc:
        raise CorruptSigningRecord(f"{path}: {exc}") from exc


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
