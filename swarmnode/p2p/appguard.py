"""SerializedApplication: one lock around every call into an Application shared by several callers.

The consensus driver and the sync server both call the Application from worker threads, each with its
own CapacityLimiter; py-evm is not thread-safe, so their calls must never overlap. (A daemon that can
hand the sync server the driver's own limiter does not need this.)
"""

from __future__ import annotations

import threading

from consensus.certificate import CommitCertificate
from consensus.engine.validators import ValidatorSet
from consensus.interfaces import Application, Verdict


class SerializedApplication(Application):
    def __init__(self, inner: Application) -> None:
        self.inner = inner
        self._lock = threading.RLock()

    def latest_height(self) -> int:
        with self._lock:
            return self.inner.latest_height()

    def propose_block(self, height: int, round_: int, timestamp: int) -> bytes:
        with self._lock:
            return self.inner.propose_block(height, round_, timestamp)

    def validate_block(self, height: int, block_bytes: bytes) -> Verdict:
        with self._lock:
            return self.inner.validate_block(height, block_bytes)

    def validate_certified_block(self, height: int, block_bytes: bytes) -> Verdict:
        with self._lock:
            return self.inner.validate_certified_block(height, block_bytes)

    def commit_block(self, height: int, block_bytes: bytes, certificate: CommitCertificate) -> None:
        with self._lock:
            self.inner.commit_block(height, block_bytes, certificate)

    def validator_set(self, height: int) -> ValidatorSet:
        with self._lock:
            return self.inner.validator_set(height)

    def block_hash(self, block_bytes: bytes) -> bytes:
        return self.inner.block_hash(block_bytes)  # pure: hashes bytes only

    def committed_block(self, height: int) -> tuple[bytes, CommitCertificate] | None:
        with self._lock:
            return self.inner.committed_block(height)

    def has_pending_transactions(self) -> bool:
        return self.inner.has_pending_transactions()  # documented lock-free and cheap
