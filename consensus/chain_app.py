"""ChainApplication: the execution chain (consensus.chain) behind the consensus driver's Application.

Blocks on the consensus wire are Prague block RLP; id(v) is the block (header) hash. Validator sets
come from the Staking contract as of the last block of the previous epoch, so they change only at
epoch boundaries. Every method runs on the driver's single worker thread (py-evm is not thread-safe),
except block_hash, which only hashes bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import rlp
from eth.abc import SignedTransactionAPI
from eth_utils import keccak

from consensus.certificate import CommitCertificate
from consensus.chain import BLOCK_CPU_BUDGET_S, MAX_BLOCK_TX_BYTES, ChainError, ExecutionChain
from consensus.engine.validators import ValidatorSet
from consensus.interfaces import Application, Verdict
from consensus.rlp_guard import MalformedRLP, header_rlp
from consensus.txpool import TxPool
from consensus.wire import MalformedMessage

# Data availability: given a block's height and transactions (already executed), say whether this node
# holds (or has just fetched and verified) everything the block commits to. The daemon supplies it.
AvailabilityCheck = Callable[[int, Sequence[object]], Verdict]


def block_hash_of(block_bytes: bytes) -> bytes:
    """The id of an encoded block: keccak of its header's RLP slice; MalformedMessage if there is none.

    Read iteratively (consensus.rlp_guard), never decoded and re-encoded: re-encoding a list nested a few
    thousand levels deep (20 KB from any peer) overflowed the C stack. Equal to keccak(rlp.encode(header))
    of the decoded block. Only the header is checked here (cheap: the driver calls this on the event loop
    for every proposal and synced block); the body is bounded and checked when the block is validated."""
    try:
        return keccak(header_rlp(block_bytes))
    except MalformedRLP as exc:
        raise MalformedMessage(f"block is not RLP with a header list: {exc}") from exc


class ChainApplication(Application):
    def __init__(self, chain: ExecutionChain, coinbase: bytes, *, pool: TxPool | None = None,
                 max_txs: int | None = None, clock: Callable[[], float] = time.time,
                 availability: AvailabilityCheck | None = None,
                 priority: Callable[[SignedTransactionAPI, bytes], int] | None = None) -> None:
        self.chain = chain
        self.priority = priority  # ranks transactions before their tip when a block is proposed
        self.availability = availability
        self.coinbase = coinbase
        self.pool = pool
        self.max_txs = max_txs
        self._clock = clock

    def latest_height(self) -> int:
        return self.chain.height

    def has_pending_transactions(self) -> bool:
        return self.pool is None or len(self.pool) > 0  # len() of the pool's dict: atomic, lock-free

    def propose_block(self, height: int, round_: int, timestamp: int) -> bytes:
        txs = []
        if self.pool is not None:
            txs = self.pool.select(self.chain.state_view(), self.chain.next_base_fee(),
                                   self.chain.genesis.block_gas_limit, self.max_txs, self.priority,
                                   max_bytes=MAX_BLOCK_TX_BYTES)
        return self.chain.build_block(txs, coinbase=self.coinbase, now=timestamp,
                                      time_budget_s=BLOCK_CPU_BUDGET_S).encode()

    def validate_block(self, height: int, block_bytes: bytes) -> Verdict:
        return self._validate(height, block_bytes, check_availability=True)

    def validate_certified_block(self, height: int, block_bytes: bytes) -> Verdict:
        # a certified block is final: the data-availability rule was the voters' condition, and a node
        # syncing old rounds must not need updates that every peer has since pruned
        return self._validate(height, block_bytes, check_availability=False)

    def _validate(self, height: int, block_bytes: bytes, *, check_availability: bool) -> Verdict:
        if height != self.chain.height + 1:
            return Verdict(False, f"block for height {height} on top of {self.chain.height}")
        try:
            executed = self.chain.execute_block(block_bytes, now=self._clock())
        except ChainError as exc:
            return Verdict(False, str(exc))
        if executed.number != height:
            return Verdict(False, f"block number {executed.number} != {height}")
        if check_availability and self.availability is not None:
            return self.availability(height, tuple(executed.block.transactions))
        return Verdict(True)

    def commit_block(self, height: int, block_bytes: bytes, certificate: CommitCertificate) -> None:
        block_hash = self.block_hash(block_bytes)
        pending = self.chain.pending
        if pending is None or pending.hash != block_hash:
            self.chain.execute_block(block_bytes, now=None)  # final and certified: no wall-clock bound
        self.chain.commit(block_hash, certificate.encode())
        if self.pool is not None:
            self.pool.prune(self.chain.state_view())

    def validator_set(self, height: int) -> ValidatorSet:
        members = {address: stake for address, stake in self.chain.reader.validator_set_for_height(height) if stake > 0}
        return ValidatorSet.from_powers(members, epoch_start=self.chain.reader.epoch_start(height))

    def block_hash(self, block_bytes: bytes) -> bytes:
        return block_hash_of(block_bytes)

    def committed_block(self, height: int) -> tuple[bytes, CommitCertificate] | None:
        if not 1 <= height <= self.chain.height:
            return None
        block = self.chain.reader.block_by_number(height)
        cert = self.chain.get_certificate(bytes(block.hash))
        if not cert:
            return None
        return rlp.encode(block), CommitCertificate.decode(cert)
