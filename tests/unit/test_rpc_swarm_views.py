"""The swarm_* RPC views cache contract calls per committed head: repeated reads are served from the
cache, and a new block is seen at once."""

from __future__ import annotations

from pathlib import Path

from consensus.chain import ExecutionChain
from consensus.chain_app import ChainApplication
from consensus.devtools import address_of, dev_genesis, dev_key
from consensus.genesis import RoundsParams
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


def test_round_commits_carry_the_held_out_score(tmp_path: Path) -> None:
    """swarm_getRound's commit objects include the committer's held-out score of the round's base model."""
    # Prepare: dev key 1 registers, then commits to round 0 with a score; dev key 2 registers, commits without
    # two commits per round: nobody is expected in round 0, so the first would close it
    genesis = dev_genesis(1, 3, chain_id=4547, rounds=RoundsParams(participant_bond=0, min_participants=2))
    chain = ExecutionChain.open(tmp_path / "c", genesis, sync_writes=False)
    try:
        nonces = {1: 0, 2: 0}
        clock = [genesis.genesis_time]

        def block(*calls: tuple[int, bytes]) -> None:
            pool = TxPool(genesis.chain_id, chain.decode_transaction)
            for who, data in calls:
                raw = txs.sign_call(dev_key(who), genesis.chain_id, nonces[who], data, chain.next_base_fee())
                pool.add_raw(raw, chain.state_view(), chain.next_base_fee())
                nonces[who] += 1
            clock[0] += 5
            built = ChainApplication(chain, address_of(dev_key(0)), pool=pool).propose_block(chain.height + 1, 0,
                                                                                             clock[0])
            chain.commit(chain.block_hash(built))

        scored = txs.CommitCall(0, b"\x11" * 32, 50, 400_000, 870_000, held_out_loss=620_000,
                                held_out_accuracy=812_500, held_out_count=16)
        unscored = txs.CommitCall(0, b"\x22" * 32, 60, 300_000, 880_000)
        block((1, txs.register_data(PEER_ID)), (2, txs.register_data(peer_id_of(dev_key(2)).to_base58())))
        # Execute
        block((1, txs.commit_data(scored)), (2, txs.commit_data(unscored)))
        commits = SwarmViews(chain).round(0)["commits"]
        # Assert
        assert [(c["updateHash"], c["heldOutLoss"], c["heldOutAccuracy"], c["heldOutCount"]) for c in commits] == [
            ("0x" + "11" * 32, 620_000, 812_500, 16), ("0x" + "22" * 32, 0, 0, 0)], commits
    finally:
        chain.close()
