"""A proposer cannot mint ether through withdrawals: the chain has no beacon chain, so a block that lists
any is invalid (py-evm itself would credit them, state root and all, on every importing node)."""

from __future__ import annotations

import pytest
import rlp
from eth.vm.forks.shanghai.withdrawals import Withdrawal

from consensus.chain import EXTRA_DATA, ExecutionChain, InvalidBlock, next_timestamp
from consensus.devtools import dev_genesis

THIEF = b"\x66" * 20


@pytest.fixture
def chains(tmp_path):
    genesis = dev_genesis(1, 2)
    pair = [ExecutionChain.open(tmp_path / name, genesis, sync_writes=False) for name in ("proposer", "importer")]
    yield pair
    for chain in pair:
        chain.close()


def _block_with_withdrawal(chain: ExecutionChain, now: int) -> bytes:
    """What a hostile proposer builds: py-evm's own miner with a withdrawal to itself (valid roots)."""
    parent = chain.head
    evm = chain._evm  # noqa: SLF001 - the hostile proposer drives py-evm directly
    evm.header = evm.header.copy(coinbase=THIEF, timestamp=next_timestamp(parent.timestamp, now),
                                 gas_limit=chain.genesis.block_gas_limit, mix_hash=parent.hash,
                                 extra_data=EXTRA_DATA, parent_beacon_block_root=b"\x00" * 32)
    result, _, _ = evm.mine_all([], coinbase=THIEF, withdrawals=[Withdrawal(0, 0, THIEF, 10**18)])
    return rlp.encode(result.imported_block)


def test_a_block_with_a_withdrawal_is_invalid(chains) -> None:
    proposer, importer = chains
    now = proposer.genesis.genesis_time + 1
    block = _block_with_withdrawal(proposer, now)
    with pytest.raises(InvalidBlock, match="withdrawals"):
        importer.execute_block(block, now=now)
    assert importer.pending is None
    assert importer.state_view().get_balance(THIEF) == 0


def test_an_ordinary_block_still_imports(chains) -> None:
    proposer, importer = chains
    now = proposer.genesis.genesis_time + 1
    built = proposer.build_block([], coinbase=b"\x22" * 20, now=now)
    assert importer.execute_block(built.encode(), now=now).hash == built.hash
