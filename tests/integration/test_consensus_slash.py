"""n4f1 equivocation on real execution chains: the evidence becomes a Staking.slash tx that executes."""

from __future__ import annotations

import rlp
import trio
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak

from consensus.chain import ExecutionChain
from consensus.chain_app import ChainApplication
from consensus.chain_reads import CallRequest
from consensus.cluster import Cluster
from consensus.devtools import address_of, dev_genesis, dev_key, sign_tx
from consensus.driver import DriverConfig
from consensus.evidence import slash_calldata, verify_evidence
from consensus.genesis_block import STAKING_ADDRESS
from consensus.memnet import MemNetwork, make_equivocator
from consensus.txpool import TxPool

REPORTER = 4  # dev key 4: a funded account, not a validator


def staking_call(chain: ExecutionChain, signature: str, types: list[str], args: list, out: str):
    data = keccak(signature.encode())[:4] + abi_encode(types, args)
    result = chain.reader.call(CallRequest(to=STAKING_ADDRESS, data=data), chain.head)
    return abi_decode([out], result)[0]


def forge_block(block: bytes) -> bytes:
    """Same block with other extra_data: a different hash (and an invalid block, which is fine)."""
    header, *rest = rlp.decode(block)
    header[12] = b"forged"
    return rlp.encode([header, *rest])


async def test_n4f1_equivocation_is_slashed_on_chain(autojump_clock, tmp_path):
    genesis = dev_genesis(4, 5, chain_id=4242)
    chains = [ExecutionChain.open(tmp_path / f"node{i}", genesis, sync_writes=False) for i in range(4)]
    pools = [TxPool(genesis.chain_id, chains[i].decode_transaction) for i in range(4)]
    apps = [ChainApplication(chains[i], address_of(dev_key(i)), pool=pools[i], clock=lambda: 0.0)
            for i in range(4)]
    config = DriverConfig(chain_id=genesis.chain_id, block_interval=1.0, offload_blocking=False)
    net = MemNetwork(4)
    cluster = Cluster(4, config, net=net, keys=[dev_key(i) for i in range(4)], powers=[1, 1, 1, 1],
                      app_factory=lambda i, vset: apps[i])
    byz, honest = 3, [0, 1, 2]
    offender = cluster.addresses[byz]
    net.set_tamper(byz, make_equivocator(cluster.keys[byz], genesis.chain_id, forge_block, apps[0].block_hash))
    stake_before = staking_call(chains[0], "stakeOf(address)", ["address"], [offender], "uint256")
    try:
        async with cluster.run():
            with trio.fail_after(300):
                await cluster.wait_height(3, honest)
                await cluster.driver(0).wait_evidence()
            evidence = cluster.driver(0).evidence.pending()[0]
            assert verify_evidence(evidence) == offender
            raw = sign_tx(dev_key(REPORTER), genesis.chain_id, 0, to=STAKING_ADDRESS, data=slash_calldata(evidence),
                          gas=500_000, max_fee=10**11, tip=10**9)
            for i in honest:
                pools[i].add_raw(raw, chains[i].state_view(), chains[i].next_base_fee())
            target = max(c.height for c in chains) + 4  # every honest validator proposes within 4 heights
            with trio.fail_after(300):
                await cluster.wait_height(target, honest)
        heads = {bytes(chains[i].reader.block_by_number(target).hash) for i in honest}
        assert len(heads) == 1, "honest chains diverged"
        for i in honest:
            slashed = staking_call(chains[i], "isSlashed(address,uint256,uint256,uint256)",
                                   ["address", "uint256", "uint256", "uint256"],
                                   [offender, evidence.first.height, evidence.first.round, evidence.first.step], "bool")
            assert slashed, f"node {i}: offender not slashed"
            stake = staking_call(chains[i], "stakeOf(address)", ["address"], [offender], "uint256")
            assert stake < stake_before, f"node {i}: stake {stake} not reduced from {stake_before}"
    finally:
        for chain in chains:
            chain.close()
