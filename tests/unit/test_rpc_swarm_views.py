"""The swarm_* RPC views cache contract calls per committed head: repeated reads are served from the
cache, and a new block is seen at once."""

from __future__ import annotations

from pathlib import Path

from consensus.chain import ExecutionChain
from consensus.chain_app import ChainApplication
from consensus.devtools import address_of, dev_genesis, dev_key
from consensus.rpc_swarm import SwarmViews
from consensus.txpool import TxPool
from swarmnode.node import txs
from swarmnode.p2p.identity import peer_id_of

PEER_ID = peer_id_of(dev_key(1)).to_base58()  # dev key 1 registers: only its own id is accepted


def test_views_follow_the_head(tmp_path: Path) -> None:
    genesis = dev_genesis(1, 2, chain_id=4545)
    chain = ExecutionChain.open(tmp_path / "c", genesis, sync_writes=False)
    try:
        views = SwarmViews(chain)
        calls: list[str] = []
        real_call = views._call_view

        def counting(head, contract, fn, *args):  # noqa: ANN001, ANN202
            calls.append(fn)
            return real_call(head, contract, fn, *args)

        views._call_view = counting  # type: ignore[method-assign]
        who = address_of(dev_key(1))
        assert views.call_view("SwarmRounds", "participantCount") == 0
        assert views.call_view("SwarmRounds", "isRegistered", who) is False
        round0 = views.round(0)
        assert round0 is not None and round0["commits"] == []
        n = len(calls)
        assert views.round(0) == round0 and views.call_view("SwarmRounds", "participantCount") == 0
        assert len(calls) == n, "same head: served from the cache"

        # a block in which account 1 registers as a participant
        pool = TxPool(genesis.chain_id, chain.decode_transaction)
        raw = txs.sign_call(dev_key(1), genesis.chain_id, 0, txs.register_data(PEER_ID), chain.next_base_fee())
        pool.add_raw(raw, chain.state_view(), chain.next_base_fee())
        block = ChainApplication(chain, address_of(dev_key(0)), pool=pool).propose_block(1, 0, genesis.genesis_time + 5)
        chain.commit(chain.block_hash(block))

        assert views.call_view("SwarmRounds", "participantCount") == 1, "a new head must not be served stale"
        assert views.call_view("SwarmRounds", "isRegistered", who) is True
        assert len(calls) == n + 2
    finally:
        chain.close()


def test_calls_share_one_state_per_head_and_leave_it_untouched(tmp_path: Path) -> None:
    """ChainReader.call keeps one costless state per head: a call that writes (register, run as
    eth_call) must not be visible to the next call, and a new head gets a fresh state."""
    from consensus.chain_reads import CallRequest
    from consensus.genesis_block import ROUNDS_ADDRESS

    genesis = dev_genesis(1, 2, chain_id=4546)
    chain = ExecutionChain.open(tmp_path / "c", genesis, sync_writes=False)
    try:
        views = SwarmViews(chain)
        who = address_of(dev_key(1))
        head = chain.head
        chain.reader.call(CallRequest(to=ROUNDS_ADDRESS, data=txs.register_data(PEER_ID), sender=who), head)
        state = chain.reader._call_state(head)
        assert views._call_view(head, "SwarmRounds", "participantCount") == 0, "a call's writes leaked"
        assert views._call_view(head, "SwarmRounds", "isRegistered", who) is False
        assert chain.reader._call_state(head) is state, "same head: the state is reused"

        pool = TxPool(genesis.chain_id, chain.decode_transaction)
        raw = txs.sign_call(dev_key(1), genesis.chain_id, 0, txs.register_data(PEER_ID), chain.next_base_fee())
        pool.add_raw(raw, chain.state_view(), chain.next_base_fee())
        block = ChainApplication(chain, address_of(dev_key(0)), pool=pool).propose_block(1, 0, genesis.genesis_time + 5)
        chain.commit(chain.block_hash(block))
        assert chain.reader._call_state(chain.head) is not state
        assert views._call_view(chain.head, "SwarmRounds", "participantCount") == 1
        # the old head still answers from its own state
        assert views._call_view(head, "SwarmRounds", "participantCount") == 0
    finally:
        chain.close()
