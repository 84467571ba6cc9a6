"""A deterministic in-memory Application for tests and benchmarks: blocks are msgpack lists.

A block is [height, parent_hash, timestamp, [payload, ...]]; its hash is keccak256 of its bytes.
Payloads come from a FIFO mempool; with `verify_payload` set, every payload of a proposed block is
checked (the benchmark uses signed dummy transactions).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from eth_utils import keccak

from consensus.certificate import CommitCertificate
from consensus.engine.validators import ValidatorSet
from consensus.interfaces import Application, Verdict
from consensus.wire import MalformedMessage, as_bytes, as_int, as_list, pack, unpack

GENESIS_HASH = b"\x00" * 32
MAX_BLOCK_BYTES = 800 * 1024


class InMemoryApplication(Application):
    def __init__(self, validators: ValidatorSet, *, max_payloads: int = 100,
                 verify_payload: Callable[[bytes], bool] | None = None) -> None:
        self.validators = validators
        self.max_payloads = max_payloads
        self.verify_payload = verify_payload
        self.blocks: list[bytes] = []  # committed, index = height - 1
        self.certificates: list[CommitCertificate] = []
        self.mempool: deque[bytes] = deque()
        self.validated = 0
        self._lock = threading.Lock()  # the driver uses one thread, but tests peek from the loop

    # -- helpers --

    def add_payloads(self, payloads: list[bytes]) -> None:
        with self._lock:
            self.mempool.extend(payloads)

    def parent_hash(self) -> bytes:
        return keccak(self.blocks[-1]) if self.blocks else GENESIS_HASH

    @staticmethod
    def payloads(block: bytes) -> list[bytes]:
        fields = as_list(unpack(block, MAX_BLOCK_BYTES), 4, "block")
        return [as_bytes(p, "payload") for p in as_list(fields[3], None, "payloads")]

    # -- Application --

    def latest_height(self) -> int:
        return len(self.blocks)

    def propose_block(self, height: int, round_: int, timestamp: int) -> bytes:
        with self._lock:
            take = min(self.max_payloads, len(self.mempool))
            payloads = [self.mempool[i] for i in range(take)]
        return pack([height, self.parent_hash(), timestamp, payloads])

    def validate_block(self, height: int, block_bytes: bytes) -> Verdict:
        self.validated += 1
        try:
            fields = as_list(unpack(block_bytes, MAX_BLOCK_BYTES), 4, "block")
            if as_int(fields[0], "height") != height:
                return Verdict(False, f"block height {fields[0]} != {height}")
            if as_bytes(fields[1], "parent", 32) != self.parent_hash():
                return Verdict(False, "wrong parent hash")
            payloads = self.payloads(block_bytes)
        except MalformedMessage as exc:
            return Verdict(False, str(exc))
        if self.verify_payload is not None and not all(self.verify_payload(p) for p in payloads):
            return Verdict(False, "invalid payload")
        return Verdict(True)

    def commit_block(self, height: int, block_bytes: bytes, certificate: CommitCertificate) -> None:
        if height != len(self.blocks) + 1:
            raise ValueError(f"commit of height {height} on top of {len(self.blocks)}")
        included = set(self.payloads(block_bytes))
        with self._lock:
            self.blocks.append(block_bytes)
            self.certificates.append(certificate)
            self.mempool = deque(p for p in self.mempool if p not in included)

    def validator_set(self, height: int) -> ValidatorSet:
        return self.validators

    def block_hash(self, block_bytes: bytes) -> bytes:
        return keccak(block_bytes)

    def committed_block(self, height: int) -> tuple[bytes, CommitCertificate] | None:
        if 1 <= height <= len(self.blocks):
            return self.blocks[height - 1], self.certificates[height - 1]
        return None
