"""Crash-safe signing: the last signed (height, round, step, hash) is on disk before a vote leaves.

The record is rewritten atomically (write temp, fsync, rename, fsync directory). After a restart the
node refuses to sign anything at or before the recorded slot, except the very same vote again.

It also keeps the Tendermint lock. Algorithm 1 locks exactly when it precommits a value (L36), so the
record's lock is its latest non-nil precommit: (height, round, block hash). A restarted validator starts
that height locked on that value (L22-L32 then prevote nil for anything else until a newer polka), so a
crash between a precommit and the commit cannot turn it into an equivocating prevoter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from consensus.errors import ConsensusError
from consensus.votes import NIL_HASH, STEP_PRECOMMIT, SignedVote
from consensus.wire import MalformedMessage, as_bytes, as_int, as_list, pack, unpack

RECORD_VERSION = 2  # 1: the last slot only; 2: plus the lock (version 1 files are still read)


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


@dataclass(frozen=True)
class Lock:
    """lockedValue / lockedRound of one height, as of the latest precommit for a value."""

    height: int
    round: int
    block_hash: bytes


class SigningRecord:
    """The last slot this validator signed, persisted at `path` (None: memory only, for benchmarks)."""

    def __init__(self, path: Path | None, last: SignedSlot | None = None, lock: Lock | None = None) -> None:
        self._path = path
        self._last = last
        self._lock = lock

    @classmethod
    def open(cls, path: Path | str | None) -> SigningRecord:
        if path is None:
            return cls(None)
        path = Path(path)
        if not path.exists():
            return cls(path)
        return cls(path, *_decode(path.read_bytes(), path))

    @property
    def last(self) -> SignedSlot | None:
        return self._last

    def lock_at(self, height: int) -> tuple[bytes, int] | None:
        """(lockedValue, lockedRound) to resume `height` with, or None when not locked there."""
        if self._lock is None or self._lock.height != height:
            return None
        return self._lock.block_hash, self._lock.round

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
        lock = self._lock
        if vote.step == STEP_PRECOMMIT and vote.block_hash != NIL_HASH:
            lock = Lock(vote.height, vote.round, vote.block_hash)
        if self._path is not None:
            fields: list[object] = [RECORD_VERSION, slot.height, slot.round, slot.step, slot.block_hash, slot.signature]
            fields += [lock.height, lock.round, lock.block_hash] if lock is not None else [0, -1, b""]
            _write_atomic(self._path, pack(fields))
        self._last, self._lock = slot, lock


def _decode(data: bytes, path: Path) -> tuple[SignedSlot, Lock | None]:
    try:
        top = unpack(data, 4096)
        if not isinstance(top, list) or not top:
            raise MalformedMessage("signing record is not a non-empty list")
        version = as_int(top[0], "version")
        if version not in (1, RECORD_VERSION):
            raise MalformedMessage(f"unsupported signing record version {version}")
        f = as_list(top, 6 if version == 1 else 9, "signing record")
        slot = SignedSlot(
            as_int(f[1], "height"), as_int(f[2], "round"), as_int(f[3], "step"),
            as_bytes(f[4], "block hash", length=32), as_bytes(f[5], "signature", length=65),
        )
        lock = None
        if version == RECORD_VERSION and as_int(f[7], "lock round", minimum=-1) >= 0:
            lock = Lock(as_int(f[6], "lock height"), as_int(f[7], "lock round", minimum=-1),
                        as_bytes(f[8], "lock hash", length=32))
        return slot, lock
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
