"""The async face of the execution layer: an ExecutionChain + TxPool driven from ONE thread.

py-evm is not thread-safe, so every call that touches the chain or the pool runs on the node's
ChainExecutor (consensus.executor) when it has one, else on this service's single worker thread. The
sync helpers `propose_from_pool` and `after_commit` are what such calls run; benchmarks and tests
without trio call them directly.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio
from eth.abc import BlockHeaderAPI, SignedTransactionAPI

from consensus.chain import BLOCK_CPU_BUDGET_S, MAX_BLOCK_TX_BYTES, ZERO32, ExecutedBlock, ExecutionChain
from consensus.executor import ChainExecutor, Priority
from consensus.txpool import PoolLimits, TxPool

T = TypeVar("T")


def propose_from_pool(chain: ExecutionChain, pool: TxPool, *, coinbase: bytes, now: float,
                      consensus_root: bytes = ZERO32, max_txs: int | None = None) -> ExecutedBlock:
    """Select valid transactions from the pool and build the next block (pending) from them."""
    txs = pool.select(chain.state_view(), chain.next_base_fee(), chain.genesis.block_gas_limit, max_txs,
                      max_bytes=MAX_BLOCK_TX_BYTES)
    return chain.build_block(txs, coinbase=coinbase, now=now, consensus_root=consensus_root,
                             time_budget_s=BLOCK_CPU_BUDGET_S)


def after_commit(chain: ExecutionChain, pool: TxPool, txs: tuple[SignedTransactionAPI, ...]) -> None:
    """Drop the block's transactions and everything they made stale from the pool."""
    pool.remove(bytes(tx.hash) for tx in txs)
    pool.prune(chain.state_view())


def submit_raw(chain: ExecutionChain, pool: TxPool, raw: bytes) -> bytes:
    """Admit a raw transaction (raises a TxRejected subclass); returns its hash."""
    tx = pool.add_raw(raw, chain.state_view(), chain.next_base_fee())
    return bytes(tx.hash)


def make_pool(chain: ExecutionChain, limits: PoolLimits | None = None) -> TxPool:
    limits = limits or PoolLimits(block_gas_limit=chain.genesis.block_gas_limit)
    return TxPool(chain.chain_id, chain.decode_transaction, limits)


class ChainService:
    """Owns the chain and the pool; every method runs the work in the single chain worker."""

    def __init__(self, chain: ExecutionChain, pool: TxPool | None = None,
                 clock: Callable[[], float] = time.time,
                 on_transaction: Callable[[bytes], Awaitable[None]] | None = None,
                 executor: ChainExecutor | None = None) -> None:
        """`on_transaction(raw)` is awaited for every transaction admitted through
        submit_raw_transaction (e.g. the daemon gossips it). With `executor`, every chain call runs on it
        (the node's one chain thread); without, on a worker thread of this service's own."""
        self.chain = chain
        # `is None`, not `or`: a TxPool has __len__, so an empty pool is falsy and `pool or ...` silently
        # gave the service a second pool that no proposer selected from and no commit pruned
        self.pool = pool if pool is not None else make_pool(chain)
        self.on_transaction = on_transaction
        self.executor = executor
        self.limiter = trio.CapacityLimiter(1)
        self.clock = clock
        self._committed = trio.Event()

    async def run(self, fn: Callable[..., T], *args: Any, priority: Priority = Priority.RPC) -> T:
        """Run `fn(*args)` on the chain's executor (serialised with every other chain call)."""
        if self.executor is not None:
            return await self.executor.run(fn, *args, priority=priority)
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def submit_raw_transaction(self, raw: bytes) -> bytes:
        """Admit a raw transaction (TxRejected says why not); returns its hash."""
        tx_hash = await self.run(submit_raw, self.chain, self.pool, raw)
        if self.on_transaction is not None:
            await self.on_transaction(raw)
        return tx_hash

    async def propose(self, coinbase: bytes, consensus_root: bytes = ZERO32) -> ExecutedBlock:
        now = self.clock()
        return await self.run(lambda: propose_from_pool(self.chain, self.pool, coinbase=coinbase, now=now,
                                                        consensus_root=consensus_root))

    async def execute(self, block_rlp: bytes) -> ExecutedBlock:
        now = self.clock()
        return await self.run(lambda: self.chain.execute_block(block_rlp, now=now))

    async def commit(self, block_hash: bytes, certificate: bytes = b"", consensus: bytes = b"") -> BlockHeaderAPI:
        def work() -> BlockHeaderAPI:
            pending = self.chain.pending
            header = self.chain.commit(block_hash, certificate, consensus)
            if pending is not None:
                after_commit(self.chain, self.pool, tuple(pending.block.transactions))
            return header

        header = await self.run(work)
        self._committed.set()
        self._committed = trio.Event()
        return header

    async def height(self) -> int:
        return await self.run(lambda: self.chain.height)

    async def wait_height(self, height: int) -> None:
        """Return once the committed head is at least `height`."""
        while True:
            committed = self._committed  # taken before the check, so a commit in between is not missed
            if await self.height() >= height:
                return
            await committed.wait()
