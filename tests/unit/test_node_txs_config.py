"""SwarmRounds call encoding/decoding and the node config file."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from consensus.contracts import SWARM_ROUNDS_ADDRESS, load_artifact
from swarmnode.node import txs
from swarmnode.node.config import NodeConfig, NodeConfigError, dump_config, load_config


def test_selectors_match_the_contract_abi() -> None:
    names = {f["name"] for f in load_artifact("SwarmRounds")["abi"] if f.get("type") == "function"}
    assert {"commitUpdate", "attestAggregate", "register"} <= names
    ids = load_artifact("SwarmRounds").get("method_identifiers", {})
    if ids:
        assert ids[txs.COMMIT_SIG] in ("0x" + txs.COMMIT_SELECTOR.hex(), txs.COMMIT_SELECTOR.hex())


def test_commit_roundtrip_and_block_scan() -> None:
    call = txs.CommitCall(3, b"\x42" * 32, 270, txs.fixed(1.25), txs.fixed(0.5))
    data = txs.commit_data(call)
    assert txs.decode_commit(data) == call
    assert txs.decode_commit(data[:20]) is None
    assert txs.decode_commit(txs.attest_data(3, b"\x01" * 32)) is None
    block = [SimpleNamespace(to=SWARM_ROUNDS_ADDRESS, data=data), SimpleNamespace(to=b"\x00" * 20, data=data),
             SimpleNamespace(to=SWARM_ROUNDS_ADDRESS, data=txs.attest_data(3, b"\x01" * 32))]
    assert txs.commits_in(block) == [call]


def test_commit_with_a_held_out_score_roundtrips() -> None:
    held_out = txs.held_out_fields((0.75, 0.8125, 40), max_count=600)
    assert held_out == (750_000, 812_500, 40)
    call = txs.CommitCall(3, b"\x42" * 32, 270, txs.fixed(1.25), txs.fixed(0.5), *held_out)
    data = txs.commit_data(call)
    assert data[:4] == txs.selector("commitUpdate(uint256,bytes32,uint256,uint256,uint256,uint256,uint256,uint256,"
                                    "uint256,uint256)")
    assert txs.decode_commit(data) == call
    old_style = txs.CommitCall(3, b"\x42" * 32, 270, 1, 2)  # no held-out split: the defaults
    assert txs.decode_commit(txs.commit_data(old_style)) == txs.CommitCall(3, b"\x42" * 32, 270, 1, 2, 0, 0, 0, 0, 0)


def test_held_out_fields_are_what_the_contract_accepts() -> None:
    assert txs.held_out_fields(None, 600) == (0, 0, 0), "no held-out split: not scored"
    assert txs.held_out_fields((0.5, 0.5, 0), 600) == (0, 0, 0), "no examples: not scored"
    assert txs.held_out_fields((float("nan"), 1.5, 900), 600) == (0, txs.FIXED_ONE, 600)
    assert txs.held_out_fields((1e20, 0.25, 10), 600) == (txs.MAX_REPORTED, 250_000, 10)
    # commit_data itself never sends what commitUpdate refuses: scores without a count, or above a bound
    unscored = txs.CommitCall(0, b"\x01" * 32, 10, 0, 0, held_out_loss=5, held_out_accuracy=7, held_out_count=0)
    assert txs.decode_commit(txs.commit_data(unscored)) == txs.CommitCall(0, b"\x01" * 32, 10, 0, 0)
    over = txs.CommitCall(0, b"\x01" * 32, 10, 2**70, 2 * txs.FIXED_ONE, 2**70, 2 * txs.FIXED_ONE, 3)
    assert txs.decode_commit(txs.commit_data(over)) == txs.CommitCall(
        0, b"\x01" * 32, 10, txs.MAX_REPORTED, txs.FIXED_ONE, txs.MAX_REPORTED, txs.FIXED_ONE, 3)


def test_fixed_point_clamps_nonsense() -> None:
    assert txs.fixed(float("nan")) == 0 and txs.fixed(-1.0) == 0 and txs.fixed(float("inf")) == 0
    assert txs.fixed(0.123456789) == 123457


def test_config_roundtrip(tmp_path: Path) -> None:
    cfg = NodeConfig(data_dir=tmp_path / "d", genesis=tmp_path / "g.toml", key_file=tmp_path / "d" / "node.key",
                     bootstrap=("/ip4/127.0.0.1/tcp/1/p2p/x",), rpc_port=0, torch_threads=2,
                     keep_update_rounds=5, compute_niceness=3)
    path = tmp_path / "config.toml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    with pytest.raises(NodeConfigError, match="does not exist"):
        load_config(path)
    path.write_text('[node]\ndata_dir = "d"\ngenesis = "g"\nkey_file = "k"\n[rpc]\nport = 70000\n')
    with pytest.raises(NodeConfigError, match="rpc.port"):
        load_config(path)
    path.write_text('[node]\ndata_dir = "d"\n')
    with pytest.raises(NodeConfigError, match="node.genesis"):
        load_config(path)
    path.write_text('[node]\ndata_dir = "d"\ngenesis = "g"\nkey_file = "k"\nkeep_update_rounds = -1\n')
    with pytest.raises(NodeConfigError, match="node.keep_update_rounds"):
        load_config(path)
    path.write_text('[node]\ndata_dir = "d"\ngenesis = "g"\nkey_file = "k"\n[learning]\ncompute_niceness = 20\n')
    with pytest.raises(NodeConfigError, match="learning.compute_niceness"):
        load_config(path)


def test_node_approvals_admit_a_newcomer_on_a_real_chain(tmp_path: Path) -> None:
    """`swarmnode admit` / `register --approval` (txs.sign_admission, sort_approvals, register_data) against
    the real contract: validators holding exactly 2/3 of the stake are not enough, all three are; the
    approvals may come in any order and repeated."""
    from dataclasses import replace

    from consensus.chain import ExecutionChain
    from consensus.devtools import DEV_ROUNDS, address_of, dev_genesis, dev_key
    from consensus.rpc_swarm import SwarmViews
    from consensus.txpool import TxPool

    genesis = dev_genesis(3, 5, chain_id=4548, rounds=replace(DEV_ROUNDS, admission="allowlist"))
    chain = ExecutionChain.open(tmp_path / "c", genesis, sync_writes=False)
    newcomer = address_of(dev_key(4))

    def register(approvals: list[bytes], nonce: int) -> bool:
        pool = TxPool(genesis.chain_id, chain.decode_transaction)
        data = txs.register_data("16Uiu2HAm1FT42nifXcb7Y52DJWHewKZiA2uAMbiUepbs1jB6SBk6", approvals)
        pool.add_raw(txs.sign_call(dev_key(4), genesis.chain_id, nonce, data, chain.next_base_fee()),
                     chain.state_view(), chain.next_base_fee())
        built = chain.build_block(pool.select(chain.state_view(), chain.next_base_fee(), 30_000_000),
                                  coinbase=address_of(dev_key(0)), now=chain.head.timestamp + 1)
        chain.commit(built.hash)
        return built.receipts is not None and built.receipts[0].state_root == b"\x01"

    try:
        two = [txs.sign_admission(dev_key(i), genesis.chain_id, newcomer) for i in (1, 0)]
        assert not register(txs.sort_approvals(two, genesis.chain_id, newcomer), 0), "2/3 of stake admitted"
        three = [txs.sign_admission(dev_key(i), genesis.chain_id, newcomer) for i in (2, 0, 1, 0)]
        ordered = txs.sort_approvals(three, genesis.chain_id, newcomer)
        assert len(ordered) == 3, "a repeated approval must count once"
        signers = [txs.admission_signer(a, genesis.chain_id, newcomer) for a in ordered]
        assert signers == sorted(signers, key=lambda a: int.from_bytes(a, "big"))
        assert register(ordered, 1), "approvals of every validator must admit the newcomer"
        info = SwarmViews(chain).call_view("SwarmRounds", "getParticipant", newcomer)
        assert info["active"] and info["index"] == 0
        with pytest.raises(ValueError, match="65 bytes"):
            txs.sort_approvals([b"\x01" * 64], genesis.chain_id, newcomer)
    finally:
        chain.close()
