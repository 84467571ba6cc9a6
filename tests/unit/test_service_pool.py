"""The chain service, the proposer and the commit path share one pool: a sender's included transactions
never count against it, however many it sends (the per-sender limit is 64 pending)."""

from __future__ import annotations

from pathlib import Path

import trio

from consensus.certificate import CommitCertificate
from consensus.chain import ExecutionChain
from consensus.chain_app import ChainApplication
from consensus.devtools import address_of, dev_genesis, dev_key, sign_tx
from consensus.service import ChainService, make_pool
from consensus.txpool import MAX_PER_SENDER


async def test_service_admits_into_the_pool_it_was_given_even_when_that_pool_is_empty(tmp_path: Path) -> None:
    # Prepare
    genesis = dev_genesis(1, 2, chain_id=4545)
    chain = ExecutionChain.open(tmp_path / "c", genesis, sync_writes=False)
    try:
        pool = make_pool(chain)
        service = ChainService(chain, pool=pool)
        raw = sign_tx(dev_key(1), genesis.chain_id, 0, to=b"\x11" * 20, value=1, max_fee=10**10, tip=1)
        # Execute
        await service.submit_raw_transaction(raw)
        # Assert
        assert service.pool is pool, "the service must use the (empty) pool it was handed"
        assert len(pool) == 1
    finally:
        chain.close()


def test_one_sender_sends_far_more_than_the_per_sender_limit_over_many_blocks(tmp_path: Path) -> None:
    # Prepare: a node's own account sends two transactions per block, the way the daemon commits and
    # attests every round, for 3x the per-sender limit; blocks are proposed from the shared pool.
    genesis = dev_genesis(1, 2, chain_id=4545)
    chain = ExecutionChain.open(tmp_path / "c", genesis, sync_writes=False)
    try:
        pool = make_pool(chain)
        service = ChainService(chain, pool=pool)
        app = ChainApplication(chain, address_of(dev_key(0)), pool=pool)
        me = address_of(dev_key(1))
        sent = 0
        # Execute
        for height in range(1, 3 * MAX_PER_SENDER // 2 + 2):
            for _ in range(2):
                nonce = pool.next_nonce(me, chain.state_view())
                raw = sign_tx(dev_key(1), genesis.chain_id, nonce, to=b"\x11" * 20, value=1, max_fee=10**10, tip=1)
                trio.run(service.submit_raw_transaction, raw)
                sent += 1
            block = app.propose_block(height, 0, genesis.genesis_time + height)
            app.commit_block(height, block, CommitCertificate(genesis.chain_id, height, 0, app.block_hash(block), ()))
            # Assert (every block): nothing included stays pending
            assert len(pool) == 0, f"height {height}: {len(pool)} included transactions still in the pool"
        assert sent > MAX_PER_SENDER
        assert chain.state_view().get_nonce(me) == sent
    finally:
        chain.close()
