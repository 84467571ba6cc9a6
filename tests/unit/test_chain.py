"""ExecutionChain: build/execute/commit life cycle, header rules, timestamps, reads, envelope."""

from __future__ import annotations

import pytest
import rlp
from eth_utils import keccak

import consensus.chain
from consensus.chain import (
    MAX_FUTURE_DRIFT,
    ExecutionChain,
    GenesisMismatch,
    InvalidBlock,
    UnknownBlock,
    check_timestamp,
    next_timestamp,
)
from consensus.chain_reads import CallFailed, CallRequest, ReadError
from consensus.devtools import address_of, dev_genesis, dev_key, sign_tx
from consensus.envelope import Envelope, EnvelopeError
from consensus.genesis_state import STAKING_ADDRESS

K0, K1 = dev_key(0), dev_key(1)
A0, A1 = address_of(K0), address_of(K1)
TO = b"\x11" * 20
COINBASE = b"\x22" * 20
T0 = 1_000  # genesis time of dev_genesis
DEPOSIT = keccak(b"deposit()")[:4]
STAKE_OF = keccak(b"stakeOf(address)")[:4]
# creation code of a contract whose runtime logs and returns its first calldata word
LOGGER_INIT = bytes.fromhex("6031600c60003960316000f3600035600052") + b"\x7f" + b"\xab" * 32 + bytes.fromhex(
    "60206000a160206000f3")


@pytest.fixture
def genesis():
    return dev_genesis(1, 2)


@pytest.fixture
def chain(tmp_path, genesis):
    c = ExecutionChain.open(tmp_path / "a", genesis)
    yield c
    c.close()


def transfers(chain: ExecutionChain, key: bytes, count: int, start: int = 0, value: int = 1):
    return [chain.decode_transaction(sign_tx(key, chain.chain_id, n, to=TO, value=value))
            for n in range(start, start + count)]


def build_and_commit(chain: ExecutionChain, txs, now: float = T0, cert: bytes = b"cert"):
    executed = chain.build_block(txs, coinbase=COINBASE, now=now)
    chain.commit(executed.hash, cert, b"consensus-bytes")
    return executed


def test_timestamp_rule() -> None:
    assert next_timestamp(100, 50.9) == 101  # faster than 1 block/s: parent + 1
    assert next_timestamp(100, 130.7) == 130  # otherwise wall clock, whole seconds
    check_timestamp(101, 100, now=50)  # the chain clock ahead of the wall: parent + 1 is always allowed
    with pytest.raises(InvalidBlock, match="future"):
        check_timestamp(102, 100, now=50)
    check_timestamp(130 + MAX_FUTURE_DRIFT, 100, now=130.9)
    with pytest.raises(InvalidBlock, match="future"):
        check_timestamp(131 + MAX_FUTURE_DRIFT, 100, now=130.9)
    # a proposer stamping the most it may cannot walk the chain clock away from the wall clock
    ts, now = 100, 100.0
    for _ in range(50):
        nxt = max(ts + 1, int(now) + MAX_FUTURE_DRIFT)
        check_timestamp(nxt, ts, now)
        ts, now = nxt, now + 1.0  # one block a second (old rule: +16 s a block)
    assert ts <= int(now) + MAX_FUTURE_DRIFT + 1
    with pytest.raises(InvalidBlock, match="does not exceed"):
        check_timestamp(100, 100, now=None)
    check_timestamp(10**9, 100, now=None)  # sync of certified blocks: no wall-clock bound


def test_pending_block_is_invisible_until_commit(chain) -> None:
    executed = chain.build_block(transfers(chain, K0, 3), coinbase=COINBASE, now=T0)
    assert executed.number == 1 and chain.height == 0
    assert chain.state_view().get_balance(TO) == 0
    header = chain.commit(executed.hash, b"cert-1", b"cons-1")
    assert header.block_number == 1 and chain.height == 1
    assert chain.state_view().get_balance(TO) == 3
    assert chain.get_certificate(executed.hash) == b"cert-1"
    assert chain.get_consensus_bytes(executed.hash) == b"cons-1"
    assert chain.head.timestamp == T0 + 1


def test_discard_and_commit_of_an_unknown_block(chain) -> None:
    executed = chain.build_block(transfers(chain, K0, 1), coinbase=COINBASE, now=T0)
    chain.discard_pending()
    with pytest.raises(UnknownBlock):
        chain.commit(executed.hash, b"")
    assert chain.height == 0
    again = build_and_commit(chain, transfers(chain, K0, 1))
    assert again.hash == executed.hash  # same inputs, same block


def test_an_invalid_transaction_fails_the_build_and_changes_nothing(chain) -> None:
    good = transfers(chain, K0, 1)
    gap = transfers(chain, K1, 1, start=5)
    with pytest.raises(InvalidBlock, match="cannot build"):
        chain.build_block(good + gap, coinbase=COINBASE, now=T0)
    assert chain.pending is None and chain.height == 0
    assert build_and_commit(chain, good).number == 1


def test_reopen_resumes_at_the_last_commit_and_refuses_another_genesis(tmp_path, genesis) -> None:
    c = ExecutionChain.open(tmp_path / "a", genesis)
    for i in range(3):
        build_and_commit(c, transfers(c, K0, 2, start=2 * i), now=T0 + i)
    root, head_hash = c.head.state_root, c.head.hash
    c.build_block(transfers(c, K0, 1, start=6), coinbase=COINBASE, now=T0 + 9)  # pending, never committed
    c.close()
    c = ExecutionChain.open(tmp_path / "a", genesis)
    assert (c.height, c.head.state_root, c.head.hash) == (3, root, head_hash)
    assert c.state_view().get_nonce(A0) == 6
    c.close()
    with pytest.raises(GenesisMismatch):
        ExecutionChain.open(tmp_path / "a", dev_genesis(1, 2, chain_id=999))


def test_execute_rejects_header_rule_violations(tmp_path, genesis, chain) -> None:
    executed = chain.build_block(transfers(chain, K0, 1), coinbase=COINBASE, now=T0 + 100)
    other = ExecutionChain.open(tmp_path / "b", genesis)
    try:
        with pytest.raises(InvalidBlock, match="future"):
            other.execute_block(executed.encode(), now=T0)
        block = executed.block
        for field, value, message in [
            ("gas_limit", block.header.gas_limit - 1, "gas_limit"),
            ("mix_hash", b"\x01" * 32, "prevrandao"),
            ("block_number", 2, "block number"),
            ("state_root", b"\x02" * 32, "rejected"),
        ]:
            bad = block.copy(header=block.header.copy(**{field: value}))
            with pytest.raises(InvalidBlock, match=message):
                other.execute_block(rlp.encode(bad), now=T0 + 100)
        with pytest.raises(InvalidBlock, match="RLP"):
            other.execute_block(b"\xc3\x01\x02\x03", now=None)
        assert other.height == 0 and other.pending is None
        assert other.execute_block(executed.encode(), now=T0 + 100).hash == executed.hash
    finally:
        other.close()


def test_receipts_logs_calls_and_estimates(chain) -> None:
    """Against the genesis Staking contract (the only code a transaction can reach, see the next tests)."""
    deposited = keccak(b"Deposited(address,uint256,uint256)")
    deposit = chain.decode_transaction(sign_tx(K0, chain.chain_id, 0, to=STAKING_ADDRESS, value=5,
                                               data=DEPOSIT, gas=200_000))
    refused = chain.decode_transaction(sign_tx(K0, chain.chain_id, 1, to=STAKING_ADDRESS, data=DEPOSIT,
                                               gas=200_000))  # zero value: reverts
    build_and_commit(chain, [deposit, refused])
    receipt = chain.reader.receipt(deposit.hash)
    assert receipt.success and receipt.gas_used == receipt.cumulative_gas_used > 21_000
    stake = chain.genesis.validators[0].stake + 5
    assert [(e.address, e.topics, e.data) for e in receipt.logs] == [
        (STAKING_ADDRESS, (deposited, b"\x00" * 12 + A0), (5).to_bytes(32, "big") + stake.to_bytes(32, "big"))]
    assert not chain.reader.receipt(refused.hash).success
    assert len(chain.reader.logs(0, 1, [STAKING_ADDRESS], [[deposited]])) == 1
    assert chain.reader.logs(0, 1, [TO]) == []
    assert chain.reader.logs(0, 1, [], [[b"\x00" * 32]]) == []
    assert chain.reader.logs(0, 0, [STAKING_ADDRESS]) == []

    stake_of = STAKE_OF + b"\x00" * 12 + A0
    assert chain.reader.call(CallRequest(sender=A1, to=STAKING_ADDRESS, data=stake_of), chain.head) == \
        stake.to_bytes(32, "big")
    with pytest.raises(CallFailed, match="reverted"):
        chain.reader.call(CallRequest(sender=A1, to=STAKING_ADDRESS, data=DEPOSIT), chain.head)  # no value
    estimate = chain.reader.estimate_gas(CallRequest(sender=A0, to=STAKING_ADDRESS, data=DEPOSIT, value=5),
                                         chain.head)
    assert 21_000 < estimate <= 200_000
    # view(): the node's own contract reads, the same message without a transaction around it
    assert chain.reader.view(STAKING_ADDRESS, stake_of, chain.head) == stake.to_bytes(32, "big")
    with pytest.raises(CallFailed, match="reverted") as failed:
        chain.reader.view(STAKING_ADDRESS, DEPOSIT, chain.head)
    assert failed.value.reverted
    with pytest.raises(ReadError):
        chain.reader.receipt(b"\x00" * 32)
    with pytest.raises(ReadError):
        chain.reader.block_by_number(99)


# A precompile's running time is not bounded by its gas: MODEXP with a 32-byte base and modulus and a
# 100,000-byte exponent of 0xff bytes is one ~1.2 s pow() for ~4.3M gas (EIP-2565 pricing).
MODEXP_INPUT = ((32).to_bytes(32, "big") + (100_000).to_bytes(32, "big") + (32).to_bytes(32, "big")
                + (3).to_bytes(32, "big") + b"\xff" * 100_000 + (2**255 - 19).to_bytes(32, "big"))


@pytest.mark.parametrize(("to", "data", "what"), [
    (None, LOGGER_INIT, "creates a contract"),
    (b"\x00" * 19 + b"\x05", MODEXP_INPUT, "calls precompile 0x" + "00" * 19 + "05"),
    (b"\x00" * 19 + b"\x01", b"", "calls precompile"),  # the first of Prague's precompiles
    (b"\x00" * 19 + b"\x11", b"", "calls precompile"),  # and the last
])
def test_a_block_may_hold_only_calls_to_non_precompiles(tmp_path, genesis, chain, monkeypatch, to, data,
                                                        what) -> None:
    """A hostile proposer's block with a creation or a precompile call is invalid for every importer, and
    this node's own builder refuses to make one; nothing changes in either chain."""
    bad = chain.decode_transaction(sign_tx(K0, chain.chain_id, 0, to=to, data=data, gas=8_000_000))
    with pytest.raises(InvalidBlock, match=what):
        chain.build_block([bad], coinbase=COINBASE, now=T0)
    assert chain.height == 0 and chain.pending is None
    # a proposer running code without the rule makes a block that is otherwise valid (roots and all); for
    # MODEXP, building it runs the ~1.2 s pow() once
    monkeypatch.setattr(consensus.chain, "target_problem", lambda tx: None)
    hostile = chain.build_block([bad], coinbase=COINBASE, now=T0)
    chain.discard_pending()
    monkeypatch.undo()
    other = ExecutionChain.open(tmp_path / "other", genesis, sync_writes=False)
    try:
        def never(*args: object) -> None:
            raise AssertionError("the block was executed")

        monkeypatch.setattr(other._evm, "import_block", never)  # refused before any of it runs
        with pytest.raises(InvalidBlock, match=f"transaction 0 is not allowed: it {what}"):
            other.execute_block(hostile.encode(), now=None)
        assert other.height == 0 and other.pending is None
    finally:
        other.close()


@pytest.mark.parametrize("to", [b"\x00" * 20, b"\x00" * 19 + b"\x12", TO])
def test_calls_next_to_the_precompile_range_are_allowed(chain, to) -> None:
    """The other side of the rule: address zero, 0x12 (one past Prague's last precompile) and any account
    without code take a plain transfer."""
    tx = chain.decode_transaction(sign_tx(K0, chain.chain_id, 0, to=to, value=7))
    build_and_commit(chain, [tx])
    assert chain.reader.receipt(tx.hash).success
    assert chain.state_view().get_balance(to) >= 7


def test_validator_set_comes_from_the_staking_contract(chain, genesis) -> None:
    expected = tuple((v.address, v.stake) for v in genesis.validators)
    assert chain.reader.validator_set_for_height(1) == expected
    with pytest.raises(ReadError):
        chain.reader.validator_set_for_height(0)


def test_envelope_round_trip_and_errors(chain) -> None:
    executed = build_and_commit(chain, transfers(chain, K0, 1))
    env = chain.get_envelope(1)
    assert env == Envelope(executed.encode(), b"consensus-bytes")
    assert Envelope.decode(env.encode()) == env
    for junk in (b"", b"\x80", rlp.encode([9, b"a", b"b"]), rlp.encode([1, [b"a"], b"b"])):
        with pytest.raises(EnvelopeError):
            Envelope.decode(junk)


def test_leveldb_atomic_batch_is_all_or_nothing(tmp_path) -> None:
    from consensus.db import LevelDB

    db = LevelDB(tmp_path / "db")
    try:
        db[b"k"] = b"v0"
        with pytest.raises(RuntimeError):
            with db.atomic_batch() as batch:
                batch[b"k"] = b"v1"
                batch[b"new"] = b"x"
                assert batch[b"k"] == b"v1"
                raise RuntimeError("abort")
        assert db[b"k"] == b"v0" and b"new" not in db
        with db.atomic_batch() as batch:
            batch[b"k"] = b"v2"
            del batch[b"k"]
            batch[b"new"] = b"y"
        assert b"k" not in db and db[b"new"] == b"y"
    finally:
        db.close()
    reopened = LevelDB(tmp_path / "db")
    assert reopened[b"new"] == b"y"
    reopened.close()


def test_staged_db_writes_nothing_until_flush(tmp_path) -> None:
    from consensus.db import LevelDB, StagedDB

    base = LevelDB(tmp_path / "db")
    try:
        staged = StagedDB(base)
        base[b"old"] = b"1"
        staged[b"a"] = b"1"
        with staged.atomic_batch() as batch:
            batch[b"b"] = b"2"
            del batch[b"old"]
        assert staged[b"b"] == b"2" and b"old" not in staged
        assert b"a" not in base and b"b" not in base and base[b"old"] == b"1"
        staged.flush({b"cert": b"c"})
        assert (base[b"a"], base[b"b"], base[b"cert"]) == (b"1", b"2", b"c") and b"old" not in base
        staged[b"z"] = b"9"
        staged.discard()
        assert b"z" not in staged and b"z" not in base
    finally:
        base.close()


def test_validator_set_changes_only_at_epoch_boundaries(tmp_path) -> None:
    from consensus.genesis import ConsensusParams, Genesis

    base = dev_genesis(1, 3)
    genesis = Genesis(**{**base.__dict__, "consensus": ConsensusParams(epoch_length=3)})
    chain = ExecutionChain.open(tmp_path / "epochs", genesis)
    try:
        deposit = chain.decode_transaction(sign_tx(K1, chain.chain_id, 0, to=bytes(18) + b"\x10\x00",
                                                   value=5 * 10**18, data=bytes.fromhex("d0e30db0"), gas=300_000))
        build_and_commit(chain, [deposit])  # block 1, epoch 0
        assert chain.reader.receipt(deposit.hash).success
        for n in (2, 3):
            build_and_commit(chain, [], now=T0 + n)
        genesis_set = ((A0, 32 * 10**18),)
        assert chain.reader.validator_set_for_height(2) == genesis_set  # epoch 0: genesis
        assert chain.reader.validator_set_for_height(3) == (*genesis_set, (A1, 5 * 10**18))  # epoch 1
        assert chain.reader.validator_set_for_height(5) == chain.reader.validator_set_for_height(3)
    finally:
        chain.close()


def test_a_call_the_sender_cannot_afford_is_a_call_failure(chain) -> None:
    with pytest.raises(CallFailed, match="invalid call"):
        chain.reader.call(CallRequest(sender=b"\x99" * 20, to=TO, value=10**30), chain.head)


def test_epoch_starts_follow_staking_epoch_of(tmp_path) -> None:
    from consensus.genesis import ConsensusParams, Genesis

    base = dev_genesis(1, 1)
    chain = ExecutionChain.open(tmp_path / "e", Genesis(**{**base.__dict__, "consensus": ConsensusParams(epoch_length=10)}))
    try:
        starts = [chain.reader.epoch_start(h) for h in (1, 9, 10, 19, 20, 25)]
        assert starts == [1, 1, 10, 10, 20, 20]
    finally:
        chain.close()


# ---------------------------------------------------------------- a proposer's execution-time budget


def _register_calls(chain: ExecutionChain, count: int, key: bytes | None = None, start: int = 0) -> list:
    """SwarmRounds.register with a well-formed peer id of another key: the on-chain base58 decoding runs,
    then the call reverts (about 71K gas of opcode-heavy code each, the slowest per gas found)."""
    from consensus.genesis_state import SWARM_ROUNDS_ADDRESS
    from swarmnode.node import txs as swarm_txs
    from swarmnode.p2p.identity import peer_id_of

    other = peer_id_of(dev_key(9)).to_base58()
    data = swarm_txs.register_data(other)
    if key is not None:
        return [chain.decode_transaction(sign_tx(key, chain.chain_id, start + i, to=SWARM_ROUNDS_ADDRESS, data=data,
                                                 gas=200_000)) for i in range(count)]
    return [chain.decode_transaction(sign_tx(K0 if i % 2 == 0 else K1, chain.chain_id, i // 2, to=SWARM_ROUNDS_ADDRESS,
                                             data=data, gas=200_000)) for i in range(count)]


def test_a_budgeted_build_is_the_same_block_as_an_unbudgeted_one(tmp_path, genesis) -> None:
    """With a budget it never reaches, a build applies every transaction, one at a time, and makes the very
    block py-evm's mine_all makes (same hash: same state, receipts and header)."""
    a = ExecutionChain.open(tmp_path / "a", genesis, sync_writes=False)
    b = ExecutionChain.open(tmp_path / "b", genesis, sync_writes=False)
    try:
        for height in range(2):
            txs = transfers(a, K0, 3, start=3 * height) + _register_calls(a, 2, K1, 2 * height)
            plain = a.build_block(txs, coinbase=COINBASE, now=T0 + height)
            timed = b.build_block(txs, coinbase=COINBASE, now=T0 + height, time_budget_s=1e9)
            assert timed.hash == plain.hash and len(timed.block.transactions) == len(txs)
            assert [r.gas_used for r in timed.receipts] == [r.gas_used for r in plain.receipts]
            a.commit(plain.hash)
            b.commit(timed.hash)
    finally:
        a.close()
        b.close()


def test_the_budget_cuts_the_block_and_the_rest_goes_in_the_next(tmp_path, genesis, chain) -> None:
    """A clock that advances one second per reading, a 2.5 s budget: the build reads it at the start and
    before each transaction after the first, so it takes 3 and stops; the cut block is valid for another
    node, and the transactions left over make the next block."""
    ticks = iter(range(1_000))
    txs = transfers(chain, K0, 6)
    built = chain.build_block(txs, coinbase=COINBASE, now=T0, time_budget_s=2.5, clock=lambda: float(next(ticks)))
    assert [bytes(t.hash) for t in built.block.transactions] == [bytes(t.hash) for t in txs[:3]]
    other = ExecutionChain.open(tmp_path / "other", genesis, sync_writes=False)
    try:
        imported = other.execute_block(built.encode(), now=None)
        assert imported.hash == built.hash
        chain.commit(built.hash)
        rest = chain.build_block(txs[3:], coinbase=COINBASE, now=T0 + 1, time_budget_s=2.5,
                                 clock=lambda: float(next(ticks)))
        assert len(rest.block.transactions) == 3
        chain.commit(rest.hash)
        assert chain.state_view().get_nonce(A0) == 6
    finally:
        other.close()


def test_a_budget_bounds_a_block_of_slow_contract_calls(tmp_path, genesis, chain) -> None:
    """Found in review: reverting register calls cost ~250-300 ns per gas, so 120 of them (8.5M gas here;
    a 30M-gas block holds 420) take an importer seconds. With a 0.2 s CPU budget the proposer's block
    holds only some of them, and an importer spends about the budget on it."""
    import time

    calls = _register_calls(chain, 120)
    built = chain.build_block(calls, coinbase=COINBASE, now=T0, time_budget_s=0.2)
    taken = len(built.block.transactions)
    assert 1 <= taken < len(calls), taken
    assert all(r.state_root == b"" for r in built.receipts)  # each reverted (status 0), as the attack's do
    other = ExecutionChain.open(tmp_path / "other", genesis, sync_writes=False)
    try:
        start = time.thread_time()
        other.execute_block(built.encode(), now=None)
        spent = time.thread_time() - start
        print(f"\n{taken} of {len(calls)} register calls in the block; an importer spent {spent * 1000:.0f} ms CPU")
        assert spent < 1.0, spent  # the budget (0.2 s) plus one call (~20 ms), with room for a slow machine
    finally:
        other.close()


def test_round_calls_get_into_a_budgeted_block_ahead_of_a_better_paying_flood(tmp_path) -> None:
    """A pool holding 120 slow reverting register calls at tip 1 and one attestation at tip 0: proposed
    within BLOCK_CPU_BUDGET_S the block is cut; with the node's priority (txs.round_priority) the
    attestation is in it, ranked by tip alone it is left out."""
    from consensus.chain_app import ChainApplication
    from consensus.genesis_state import SWARM_ROUNDS_ADDRESS
    from consensus.txpool import TxPool
    from swarmnode.node import txs as swarm_txs

    genesis = dev_genesis(1, 4)
    for ranked in (True, False):
        chain = ExecutionChain.open(tmp_path / f"c{ranked}", genesis, sync_writes=False)
        try:
            pool = TxPool(genesis.chain_id, chain.decode_transaction)
            for k in (1, 2, 3):
                for call in _register_calls(chain, 40, dev_key(k)):
                    pool.add_raw(call.encode(), chain.state_view(), chain.next_base_fee())
            attest = sign_tx(K0, genesis.chain_id, 0, to=SWARM_ROUNDS_ADDRESS,
                             data=swarm_txs.attest_data(0, b"\x01" * 32), gas=2_000_000, tip=0)
            pool.add_raw(attest, chain.state_view(), chain.next_base_fee())
            app = ChainApplication(chain, COINBASE, pool=pool,
                                   priority=(lambda tx, sender: swarm_txs.round_priority(tx)) if ranked else None)
            app.propose_block(1, 0, T0 + 1)
            hashes = [bytes(t.hash) for t in chain.pending.block.transactions]
            assert len(hashes) < 121, len(hashes)  # the budget cut the block
            assert (keccak(attest) in hashes) is ranked, (ranked, len(hashes))
        finally:
            chain.close()
