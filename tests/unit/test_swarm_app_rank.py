"""SwarmApplication ranks the round's own SwarmRounds calls first only when they come from the swarm's
members (found in review: ranked by selector alone, 1,024 strangers' reverting rejoin() calls at a higher
tip filled the budgeted block and left a validator's attestation out). Real py-evm chain on LevelDB."""

from __future__ import annotations

from pathlib import Path

from eth_utils import keccak

from consensus.chain import ExecutionChain
from consensus.devtools import address_of, dev_genesis, dev_key, sign_tx
from consensus.genesis_state import SWARM_ROUNDS_ADDRESS
from consensus.txpool import TxPool
from swarmnode.node import txs
from swarmnode.node.node import SwarmApplication

STRANGERS = range(1, 17)  # funded accounts, neither validators nor participants
PER_STRANGER = 64  # the pool's per-sender bound


def test_strangers_round_selectors_buy_no_rank_over_a_validators_attestation(tmp_path: Path) -> None:
    genesis = dev_genesis(1, 17)
    chain = ExecutionChain.open(tmp_path / "c", genesis, sync_writes=False)
    try:
        pool = TxPool(genesis.chain_id, chain.decode_transaction)
        state, fee = chain.state_view(), chain.next_base_fee()
        for k in STRANGERS:
            for n in range(PER_STRANGER):
                pool.add_raw(sign_tx(dev_key(k), genesis.chain_id, n, to=SWARM_ROUNDS_ADDRESS,
                                     data=txs.REJOIN_SELECTOR, gas=60_000, tip=2), state, fee)
        attest = sign_tx(dev_key(0), genesis.chain_id, 0, to=SWARM_ROUNDS_ADDRESS,
                         data=txs.attest_data(0, b"\x01" * 32), gas=2_000_000, tip=1)
        pool.add_raw(attest, state, fee)
        app = SwarmApplication(chain, address_of(dev_key(0)), pool, held=lambda cid: True, pending_work=lambda: False)
        app.propose_block(1, 0, genesis.genesis_time + 1)
        included = [bytes(t.hash) for t in chain.pending.block.transactions]
        assert keccak(attest) == included[0], "the validator's attestation goes first"
        chain.discard_pending()
        # a member's cancel of a stuck nonce (a zero-value transfer to itself) ranks like its round calls
        cancel = sign_tx(dev_key(0), genesis.chain_id, 1, to=address_of(dev_key(0)), tip=1)
        pool.add_raw(cancel, state, fee)
        app.propose_block(1, 0, genesis.genesis_time + 1)
        included = [bytes(t.hash) for t in chain.pending.block.transactions]
        assert included[:2] == [keccak(attest), keccak(cancel)], included[:3]
        # a stranger counted as a member (what a participant's cache says) would rank with it, by tip
        chain.discard_pending()
        app.participant = lambda address: True
        app.propose_block(1, 0, genesis.genesis_time + 1)
        included = [bytes(t.hash) for t in chain.pending.block.transactions]
        assert included[0] != keccak(attest)
    finally:
        chain.close()
