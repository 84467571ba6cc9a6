"""ChainApplication's data-availability hook: a block whose committed updates are not held is invalid."""

from __future__ import annotations

from pathlib import Path

from consensus.chain import ExecutionChain
from consensus.chain_app import ChainApplication
from consensus.devtools import address_of, dev_genesis, dev_key
from consensus.interfaces import Verdict
from consensus.txpool import TxPool
from swarmnode.node import txs


def test_validate_block_consults_the_availability_hook(tmp_path: Path) -> None:
    # Prepare: one validator proposes a block holding a commitUpdate call; a second node validates it.
    genesis = dev_genesis(1, 2, chain_id=4545)
    proposer_chain = ExecutionChain.open(tmp_path / "a", genesis, sync_writes=False)
    pool = TxPool(genesis.chain_id, proposer_chain.decode_transaction)
    call = txs.CommitCall(0, b"\x42" * 32, 10, 0, 0)
    raw = txs.sign_call(dev_key(1), genesis.chain_id, 0, txs.commit_data(call), proposer_chain.next_base_fee())
    pool.add_raw(raw, proposer_chain.state_view(), proposer_chain.next_base_fee())
    proposer = ChainApplication(proposer_chain, address_of(dev_key(0)), pool=pool)
    block = proposer.propose_block(1, 0, genesis.genesis_time + 5)
    seen: list[list[txs.CommitCall]] = []

    def missing(height: int, block_txs: object) -> Verdict:
        seen.append(txs.commits_in(block_txs))  # type: ignore[arg-type]
        return Verdict(False, "update 0x4242.. unavailable")

    chains = [proposer_chain] + [ExecutionChain.open(tmp_path / n, genesis, sync_writes=False) for n in "bc"]
    try:
        # Execute
        refusing = ChainApplication(chains[1], address_of(dev_key(0)), availability=missing,
                                    clock=lambda: genesis.genesis_time + 6)
        accepting = ChainApplication(chains[2], address_of(dev_key(0)), availability=lambda h, t: Verdict(True),
                                     clock=lambda: genesis.genesis_time + 6)
        verdict = refusing.validate_block(1, block)
        # Assert
        assert not verdict.valid and "unavailable" in verdict.reason
        assert seen == [[call]], "the hook must see the block's commitUpdate call"
        assert accepting.validate_block(1, block).valid
        # a certified block (sync, catch-up) is final: the availability rule is not applied to it, so a
        # node syncing old rounds never needs updates its peers have pruned
        assert refusing.validate_certified_block(1, block).valid
        assert len(seen) == 1, "the hook must not be consulted for a certified block"
    finally:
        for chain in chains:
            chain.close()


def test_node_application_answers_availability_from_what_it_holds(tmp_path: Path) -> None:
    """The node's data-availability rule runs on the chain executor: it answers from the blobs this node
    holds, at once, and never fetches (fetching happened before, off the executor)."""
    from swarmnode.node.node import SwarmApplication

    genesis = dev_genesis(1, 2, chain_id=4545)
    chains = [ExecutionChain.open(tmp_path / n, genesis, sync_writes=False) for n in "ab"]
    try:
        pool = TxPool(genesis.chain_id, chains[0].decode_transaction)
        call = txs.CommitCall(0, b"\x42" * 32, 10, 0, 0)
        raw = txs.sign_call(dev_key(1), genesis.chain_id, 0, txs.commit_data(call), chains[0].next_base_fee())
        pool.add_raw(raw, chains[0].state_view(), chains[0].next_base_fee())
        block = ChainApplication(chains[0], address_of(dev_key(0)), pool=pool).propose_block(1, 0, genesis.genesis_time + 5)
        held: set[bytes] = set()
        asked: list[bytes] = []

        def holds(cid: bytes) -> bool:
            asked.append(cid)
            return cid in held

        app = SwarmApplication(chains[1], address_of(dev_key(0)), TxPool(genesis.chain_id, chains[1].decode_transaction),
                               held=holds, pending_work=lambda: False)
        app._clock = lambda: genesis.genesis_time + 6
        verdict = app.validate_block(1, block)
        assert not verdict.valid and "0x4242" in verdict.reason and "not held" in verdict.reason
        assert asked == [b"\x42" * 32]
        held.add(b"\x42" * 32)
        assert app.validate_block(1, block).valid
        assert app.counters["da_rejected"] == 1
    finally:
        for chain in chains:
            chain.close()


def test_work_the_node_is_waiting_on_counts_as_pending(tmp_path: Path) -> None:
    """A proposer still fetching a gossiped commit's update, or a round window whose deadline a block would
    now pass, must not idle toward the empty-block interval (the driver asks has_pending_transactions)."""
    from swarmnode.node.node import SwarmApplication

    genesis = dev_genesis(1, 2, chain_id=4545)
    chain = ExecutionChain.open(tmp_path / "a", genesis, sync_writes=False)
    try:
        pool = TxPool(genesis.chain_id, chain.decode_transaction)
        waiting = [False]
        app = SwarmApplication(chain, address_of(dev_key(0)), pool, held=lambda cid: True,
                               pending_work=lambda: waiting[0])
        assert not app.has_pending_transactions()
        waiting[0] = True
        assert app.has_pending_transactions(), "work the node waits on is pending work"
        waiting[0] = False
        raw = txs.sign_call(dev_key(1), genesis.chain_id, 0, txs.attest_data(0, b"\x01" * 32), chain.next_base_fee())
        pool.add_raw(raw, chain.state_view(), chain.next_base_fee())
        assert app.has_pending_transactions(), "a pooled transaction is pending work"
    finally:
        chain.close()
