"""The consensus driver's two boundaries: the Application it finalizes and the Network it talks over.

The driver never imports an implementation: the execution chain (consensus.chain_app), the in-memory
test application (consensus.memapp), libp2p gossip and the in-memory network (consensus.memnet) all
plug in here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import trio

from consensus.certificate import CommitCertificate
from consensus.engine.validators import ValidatorSet


@dataclass(frozen=True)
class Verdict:
    """valid(v) with the reason when it is not."""

    valid: bool
    reason: str = ""


class Application(ABC):
    """The state machine being replicated. All methods are blocking and called from ONE worker thread
    (the driver runs them through trio.to_thread.run_sync with a CapacityLimiter(1)), never on the loop.
    """

    @abstractmethod
    def latest_height(self) -> int:
        """Height of the last committed block (0 = only genesis)."""

    @abstractmethod
    def propose_block(self, height: int, round_: int, timestamp: int) -> bytes:
        """Build the block this validator proposes at (height, round), possibly empty; return its bytes."""

    @abstractmethod
    def validate_block(self, height: int, block_bytes: bytes) -> Verdict:
        """Decide valid(v) for a proposed block at `height` (execute it if that is what validity takes)."""

    @abstractmethod
    def commit_block(self, height: int, block_bytes: bytes, certificate: CommitCertificate) -> None:
        """Make the block final and store its certificate with it; must be durable when it returns."""

    @abstractmethod
    def validator_set(self, height: int) -> ValidatorSet:
        """Validators in force at `height` (known once height - 1 is committed); changes only at epochs."""

    @abstractmethod
    def block_hash(self, block_bytes: bytes) -> bytes:
        """The 32-byte id(v) that votes sign."""

    @abstractmethod
    def committed_block(self, height: int) -> tuple[bytes, CommitCertificate] | None:
        """A committed block with its certificate, to serve syncing peers; None if unknown."""

    def validate_certified_block(self, height: int, block_bytes: bytes) -> Verdict:
        """valid(v) for a block that already carries a verified commit certificate (sync, catch-up): 2/3
        of the stake decided it, so only what makes it executable here is checked, not this validator's
        own voting conditions (such as holding the data it commits to). Default: validate_block."""
        return self.validate_block(height, block_bytes)

    def has_pending_transactions(self) -> bool:
        """Whether a block built now would carry transactions. Called on the event loop: must be cheap
        and safe without the Application's lock. The default (True) makes every block worth building."""
        return True


class Network(ABC):
    """Best-effort broadcast to all peers. Messages may be lost, delayed, duplicated or forged: the
    driver authenticates everything it receives and re-broadcasts what matters."""

    @abstractmethod
    async def broadcast(self, data: bytes) -> None:
        """Send `data` to every other peer; must not block for long (drop rather than wait)."""

    @property
    @abstractmethod
    def inbound(self) -> trio.MemoryReceiveChannel[bytes]:
        """Bounded channel of messages from peers (never our own broadcasts)."""
