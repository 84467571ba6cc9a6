"""The block envelope: an EVM block (RLP, a valid py-evm block) plus opaque consensus bytes beside it.

The BFT engine puts the proposer's signature and the previous block's commit certificate into
`consensus`; the execution layer never interprets them. Wire form: RLP list [version, block_rlp, consensus].
"""

from __future__ import annotations

from dataclasses import dataclass

import rlp
from rlp.exceptions import DecodingError

from consensus.errors import ConsensusError
from consensus.rlp_guard import MalformedRLP, scan

ENVELOPE_VERSION = 1
MAX_BLOCK_RLP = 16 * 1024 * 1024
MAX_CONSENSUS_BYTES = 256 * 1024


class EnvelopeError(ConsensusError):
    """An envelope is malformed, of an unknown version, or too large."""


@dataclass(frozen=True)
class Envelope:
    block_rlp: bytes
    consensus: bytes = b""

    def __post_init__(self) -> None:
        if len(self.block_rlp) > MAX_BLOCK_RLP:
            raise EnvelopeError(f"block is {len(self.block_rlp)} bytes, limit {MAX_BLOCK_RLP}")
        if len(self.consensus) > MAX_CONSENSUS_BYTES:
            raise EnvelopeError(f"consensus data is {len(self.consensus)} bytes, limit {MAX_CONSENSUS_BYTES}")

    def encode(self) -> bytes:
        return rlp.encode([ENVELOPE_VERSION, self.block_rlp, self.consensus])

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        """Strict decoding; raises EnvelopeError."""
        if not isinstance(data, bytes | bytearray):
            raise EnvelopeError(f"expected bytes, got {type(data).__name__}")
        if len(data) > MAX_BLOCK_RLP + MAX_CONSENSUS_BYTES + 64:
            raise EnvelopeError(f"envelope is {len(data)} bytes, too large")
        try:
            scan(data, max_depth=1, max_items=4)  # [version, block, consensus]: bounded before pyrlp recurses
            items = rlp.decode(data)
        except (MalformedRLP, DecodingError) as exc:
            raise EnvelopeError(f"envelope is not valid RLP: {exc}") from exc
        if not isinstance(items, list) or len(items) != 3 or not all(isinstance(i, bytes) for i in items):
            raise EnvelopeError("envelope must be an RLP list [version, block, consensus] of byte strings")
        version = int.from_bytes(items[0], "big")
        if version != ENVELOPE_VERSION:
            raise EnvelopeError(f"unknown envelope version {version}, expected {ENVELOPE_VERSION}")
        return cls(block_rlp=items[1], consensus=items[2])
