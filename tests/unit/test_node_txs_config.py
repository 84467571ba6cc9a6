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
