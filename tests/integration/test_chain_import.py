"""Two chains on real LevelDB dirs: one builds, the other imports; tampering; reopen; SIGKILL mid-import."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import rlp
from eth_utils import keccak

from consensus.chain import SECP256K1_N, ExecutionChain, InvalidBlock
from consensus.devtools import address_of, dev_genesis, dev_key, sign_tx
from consensus.envelope import Envelope
from consensus.genesis import dump_genesis
from consensus.genesis_block import STAKING_ADDRESS

KEYS = [dev_key(i) for i in range(4)]
COINBASE = address_of(KEYS[0])
T0 = 1_000


def transfer_blocks(chain: ExecutionChain, blocks: int, per_block: int) -> list[Envelope]:
    """Build and commit `blocks` blocks of transfers from 4 senders; returns their envelopes."""
    envelopes = []
    for b in range(blocks):
        txs = []
        for i in range(per_block):
            key = KEYS[i % 4]
            nonce = chain.state_view().get_nonce(address_of(key)) + i // 4
            raw = sign_tx(key, chain.chain_id, nonce, to=keccak(bytes([b, i % 256]))[:20], value=1000 + i)
            txs.append(chain.decode_transaction(raw))
        executed = chain.build_block(txs, coinbase=COINBASE, now=T0 + b)
        envelopes.append(Envelope(executed.encode(), f"proposer-sig-{b}".encode()))
        chain.commit(executed.hash, f"cert-{b + 1}".encode(), envelopes[-1].consensus)
    return envelopes


@pytest.fixture
def genesis():
    return dev_genesis(2, 4)


def test_importer_reaches_identical_state_roots(tmp_path, genesis) -> None:
    builder = ExecutionChain.open(tmp_path / "builder", genesis)
    importer = ExecutionChain.open(tmp_path / "importer", genesis)
    try:
        assert builder.genesis_hash == importer.genesis_hash
        envelopes = transfer_blocks(builder, 3, 20)
        # a contract call too: Staking.getValidators() as a transaction, re-executed by the importer
        call = sign_tx(KEYS[1], builder.chain_id, builder.state_view().get_nonce(address_of(KEYS[1])),
                       to=STAKING_ADDRESS, data=keccak(b"getValidators()")[:4], gas=200_000)
        executed = builder.build_block([builder.decode_transaction(call)], coinbase=COINBASE, now=T0 + 10)
        builder.commit(executed.hash, b"cert-4")
        envelopes.append(builder.get_envelope(4))
        for n, env in enumerate(envelopes, start=1):
            header = importer.import_envelope(Envelope.decode(env.encode()), f"cert-{n}".encode(), now=T0 + 10)
            assert header.state_root == builder.reader.header_by_number(n).state_root, f"block {n}"
        assert importer.head.hash == builder.head.hash
        assert importer.get_certificate(builder.head.hash) == b"cert-4"
        envelope, certificate = importer.committed_block(2)
        assert certificate == b"cert-2" and envelope.consensus == b"proposer-sig-1"
        assert importer.block_hash(envelope.block_rlp) == builder.reader.header_by_number(2).hash
        assert importer.committed_block(5) is None
        assert builder.reader.receipt(keccak(call)).success
    finally:
        builder.close()
        importer.close()


def test_tampered_blocks_are_rejected_and_the_importer_is_intact(tmp_path, genesis) -> None:
    builder = ExecutionChain.open(tmp_path / "builder", genesis)
    importer = ExecutionChain.open(tmp_path / "importer", genesis)
    try:
        (env,) = transfer_blocks(builder, 1, 8)
        block = rlp.decode(env.block_rlp, sedes=type(builder.reader.block_by_number(1)))
        victim = block.transactions[0]
        richer = victim.copy(value=victim.value * 1000)  # signature no longer matches the contents
        swapped = block.copy(transactions=(richer, *block.transactions[1:]))
        dropped = block.copy(transactions=block.transactions[1:])
        coinbase = block.copy(header=block.header.copy(coinbase=b"\x66" * 20))
        junk_sig = block.copy(transactions=(victim.copy(r=victim.r ^ 1), *block.transactions[1:]))
        high_s = block.copy(transactions=(victim.copy(s=SECP256K1_N - victim.s), *block.transactions[1:]))
        for tampered in (swapped, dropped, coinbase, junk_sig, high_s):
            with pytest.raises(InvalidBlock):
                importer.execute_block(rlp.encode(tampered), now=T0)
            assert importer.height == 0 and importer.pending is None
        assert importer.import_envelope(env, b"cert-1", now=T0).state_root == builder.head.state_root
    finally:
        builder.close()
        importer.close()


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from consensus.chain import ExecutionChain
    from consensus.envelope import Envelope
    from consensus.genesis import load_genesis

    work = Path(sys.argv[1])
    chain = ExecutionChain.open(work / "node", load_genesis(work / "genesis.toml"))
    for n in range(1, int(sys.argv[2]) + 1):
        print(f"importing {n}", flush=True)
        chain.import_envelope(Envelope.decode((work / f"{n}.env").read_bytes()), b"cert")
    print("done", flush=True)
    """
)


def test_sigkill_during_import_leaves_a_committed_block(tmp_path, genesis) -> None:
    blocks, kill_at = 6, 3
    builder = ExecutionChain.open(tmp_path / "builder", genesis)
    try:
        envelopes = transfer_blocks(builder, blocks, 100)
        roots = {n: builder.reader.header_by_number(n).state_root for n in range(blocks + 1)}
    finally:
        builder.close()
    (tmp_path / "genesis.toml").write_text(dump_genesis(genesis))
    for n, env in enumerate(envelopes, start=1):
        (tmp_path / f"{n}.env").write_bytes(env.encode())

    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(blocks)],
                             stdout=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:  # type: ignore[union-attr]
            if line.strip() == f"importing {kill_at}":
                child.send_signal(signal.SIGKILL)
                break
        assert child.wait(timeout=60) == -signal.SIGKILL, "the child finished before it could be killed"
    finally:
        child.kill()
        child.wait()

    node = ExecutionChain.open(tmp_path / "node", genesis)
    try:
        height = node.height
        assert kill_at - 1 <= height < blocks, f"reopened at height {height}"
        assert node.head.state_root == roots[height]
        assert node.state_view().get_balance(address_of(KEYS[0])) > 0  # the state trie is readable
        for n in range(height + 1, blocks + 1):  # and the node carries on from there
            node.import_envelope(envelopes[n - 1], b"cert")
        assert node.head.state_root == roots[blocks]
    finally:
        node.close()
