"""The node CLI: init writes a 0600 key and a config; user errors are one line, exit 2, no traceback."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from consensus.devtools import dev_key
from swarmnode.cli.main import main
from swarmnode.node.config import load_config
from swarmnode.node.keys import write_key

GENESIS = Path(__file__).resolve().parents[2] / "genesis" / "minimal.toml"


def test_init_creates_a_private_key_and_a_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--genesis", str(GENESIS), "--data-dir", str(tmp_path / "n"), "--rpc-port", "0"]) == 0
    key = tmp_path / "n" / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cfg = load_config(tmp_path / "n" / "config.toml")
    assert cfg.key_file == key and cfg.rpc_port == 0 and cfg.genesis.exists()
    assert "follower" in capsys.readouterr().out  # a fresh key is not a genesis validator


def test_init_imports_a_validator_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "k.key"
    write_key(src, dev_key(0))
    assert main(["init", "--genesis", str(GENESIS), "--data-dir", str(tmp_path / "n"), "--key", str(src)]) == 0
    assert "validator" in capsys.readouterr().out
    assert main(["init", "--genesis", str(GENESIS), "--data-dir", str(tmp_path / "n"), "--key", str(src)]) == 2
    assert "exists" in capsys.readouterr().err


def test_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("nothex\n")
    assert main(["init", "--genesis", str(GENESIS), "--data-dir", str(tmp_path / "n"), "--key", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("swarmnode: error:") and "Traceback" not in err
    assert main(["run", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["chain", "head", "--rpc", "http://127.0.0.1:1"]) == 2
    assert "cannot reach the node" in capsys.readouterr().err


def test_chain_participants_flags_a_peer_id_that_is_not_the_participants_own() -> None:
    """register(peerId) stores whatever the sender claims: the CLI checks it against the address's key."""
    from swarmnode.cli.chain_cmd import _peer_id_matches
    from swarmnode.node.keys import address_of
    from swarmnode.p2p.identity import peer_id_of

    mine, other = b"\x01" * 32, b"\x02" * 32
    address = "0x" + address_of(mine).hex()
    assert _peer_id_matches(str(peer_id_of(mine)), address)
    assert _peer_id_matches(str(peer_id_of(mine)), address.upper().replace("0X", "0x"))
    assert not _peer_id_matches(str(peer_id_of(other)), address), "someone else's peer id"
    assert not _peer_id_matches("", address) and not _peer_id_matches("not base58 !", address)
    assert not _peer_id_matches("Qm" + "1" * 44, address), "a peer id without a secp256k1 key"
