"""RoundReader on a real py-evm chain: after every block its observation equals one built from scratch
with every contract call, its window verdict matches what the contract does with a commit in the next
block, and it makes far fewer calls (each is a py-evm execution on the chain executor)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from consensus.chain import ExecutionChain
from consensus.chain_app import ChainApplication
from consensus.devtools import DEV_ROUNDS, address_of, dev_genesis, dev_key
from consensus.rpc_swarm import SwarmViews
from consensus.txpool import TxPool
from swarmnode.node import txs
from swarmnode.node.machine import CommitInfo, RoundObservation
from swarmnode.node.views import RoundReader, window_may_take_commits
from swarmnode.p2p.identity import peer_id_of

PEER_IDS = [peer_id_of(dev_key(i)).to_base58() for i in range(5)]  # register takes only its own key's id
GENESIS_MODEL = b"\x11" * 32
WINDOW_S = 30


def _b(text: str) -> bytes:
    return bytes.fromhex(text[2:].lower())


def propose_and_commit(chain: ExecutionChain, proposer: bytes, raws: list[bytes], timestamp: int) -> None:
    """The next block from `raws` (signed calls), proposed as a node does and committed; every one included."""
    pool = TxPool(chain.genesis.chain_id, chain.decode_transaction)
    for raw in raws:
        pool.add_raw(raw, chain.state_view(), chain.next_base_fee())
    built = ChainApplication(chain, proposer, pool=pool).propose_block(chain.height + 1, 0, timestamp)
    chain.commit(chain.block_hash(built))
    assert len(chain.reader.block_by_number(chain.height).transactions) == len(raws), "a transaction failed"


def succeeds_next(chain: ExecutionChain, coinbase: bytes, raw: bytes) -> bool:
    """The contract's own answer: does the signed call `raw` succeed in a block stamped head + 1 s?
    (built, then discarded)"""
    pool = TxPool(chain.genesis.chain_id, chain.decode_transaction)
    pool.add_raw(raw, chain.state_view(), chain.next_base_fee())
    executed = chain.build_block(pool.select(chain.state_view(), chain.next_base_fee(), 30_000_000),
                                 coinbase=coinbase, now=int(chain.head.timestamp) + 1)
    ok = executed.receipts is not None and executed.receipts[0].state_root == b"\x01"
    chain.discard_pending()
    return ok


def from_scratch(chain: ExecutionChain, me: bytes) -> tuple[RoundObservation, int]:
    """Every field read afresh with uncached calls; and the call count."""
    v = SwarmViews(chain)
    calls = 0

    def call(contract: str, fn: str, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        return v._call_view(chain.head, contract, fn, *args)  # uncached

    head_time = int(chain.head.timestamp)
    r = int(call("SwarmRounds", "currentRound"))
    info = call("SwarmRounds", "getRound", r)
    commits = []
    for i in range(int(info["commitCount"])):
        c = call("SwarmRounds", "getCommit", r, i)
        commits.append(CommitInfo(_b(c["participant"]), _b(c["updateHash"]), int(c["numSamples"])))
    minimum, skip = int(call("SwarmRounds", "minParticipants")), bool(call("SwarmRounds", "skipUnderMin"))
    absent_rounds = int(call("SwarmRounds", "absentRounds"))
    me_info = call("SwarmRounds", "getParticipant", me)
    validator = bool(call("Staking", "isValidator", me))
    window = window_may_take_commits(info, head_time, minimum, skip)
    attested = validator and call("SwarmRounds", "attestationOf", r, me) != "0x" + "00" * 32
    return RoundObservation(
        height=chain.height, head_time=head_time, round=r, base_hash=_b(info["baseHash"]), window_open=window,
        skipped=not window and len(commits) < minimum, commits=tuple(commits), close_time=int(info["closeTime"]),
        extended=window and not skip and len(commits) < minimum, participant_count=int(info["participantCount"]),
        expected_count=int(info["expectedCount"]),
        participant_index=int(me_info["index"]) if me_info["registered"] else None, active=bool(me_info["active"]),
        expected=int(me_info["expectedRound"]) == r + 1,
        dropped=bool(me_info["active"]) and absent_rounds > 0 and int(me_info["missed"]) >= absent_rounds,
        committed=any(c.participant == me for c in commits),
        attested=attested, validator=validator,
    ), calls


def test_observations_match_a_full_read_and_the_contract_after_every_block(tmp_path: Path) -> None:
    genesis = dev_genesis(3, 5, chain_id=4547, rounds=replace(DEV_ROUNDS, commit_window_s=WINDOW_S),
                          genesis_model_hash=GENESIS_MODEL)
    chain = ExecutionChain.open(tmp_path / "c", genesis, sync_writes=False)
    nonces = [0] * 5
    keys = [dev_key(i) for i in range(5)]
    me = [address_of(k) for k in keys]
    readers = {i: RoundReader(me[i]) for i in (0, 3, 4)}  # validator, participant, latecomer
    scratch_calls = 0
    window_checks = 0
    clock = [genesis.genesis_time]

    def signed(who: int, data: bytes, nonce: int | None = None) -> bytes:
        # attestations sized as a node sizes them (5 participants, 3 validators): three fit in a block
        gas = txs.attest_gas(5, 2, 3) if data[:4] == txs.ATTEST_SELECTOR else None
        return txs.sign_call(keys[who], genesis.chain_id, nonces[who] if nonce is None else nonce, data,
                             chain.next_base_fee(), gas=gas)

    def next_block_takes_a_commit(who: int, round_: int) -> bool:
        return succeeds_next(chain, me[0], signed(who, commit(who, round_)[1]))

    def block(*calls: tuple[int, bytes], dt: int = 5) -> None:
        nonlocal scratch_calls, window_checks
        raws = []
        for who, data in calls:
            raws.append(signed(who, data))
            nonces[who] += 1
        clock[0] += dt
        propose_and_commit(chain, me[0], raws, clock[0])
        for i, reader in readers.items():
            expected, n = from_scratch(chain, me[i])
            scratch_calls += n
            got = reader.observe(chain)
            assert got == expected, f"node {i} at height {chain.height}"
            if got.active and not got.committed and not got.extended:
                window_checks += 1
                assert next_block_takes_a_commit(i, got.round) == got.window_open, f"node {i} h{chain.height}"

    def commit(who: int, round_: int) -> tuple[int, bytes]:
        return who, txs.commit_data(txs.CommitCall(round_, bytes([who + 1, round_ + 1]) * 16, 100 + who,
                                                   500_000, 900_000))

    def attest(round_: int, h: bytes) -> list[tuple[int, bytes]]:
        return [(v, txs.attest_data(round_, h)) for v in range(3)]

    try:
        block(*[(i, txs.register_data(PEER_IDS[i])) for i in range(4)])  # nobody is expected in round 0 yet
        block(commit(0, 0))  # round 0 (extended: no commit yet) restarts its clock and, expecting nobody, closes
        block(*attest(0, b"\xaa" * 32))  # round 1 opens, expecting participants 0-3
        block((4, txs.register_data(PEER_IDS[4])))  # a latecomer sees itself in the very next observation
        block(commit(0, 1), commit(1, 1))
        block()
        block(commit(2, 1))  # 3 of 4 expected: the straggler grace shortens the deadline
        while readers[0].observe(chain).window_open:
            block(dt=1)
        block(*attest(1, b"\xbb" * 32))  # round 2: participant 3 was absent
        block(commit(4, 2))
        for _ in range(WINDOW_S // 5 + 2):  # round 2's window closes at its deadline
            block()
        assert not readers[0].observe(chain).window_open
        block(*attest(2, b"\xcc" * 32))
        block()
        assert readers[0].observe(chain).round == 3
        fast_calls = sum(r.calls for r in readers.values())
        assert fast_calls < 0.5 * scratch_calls, (fast_calls, scratch_calls)
        assert window_checks >= 20, window_checks
        absent = SwarmViews(chain).call_view("SwarmRounds", "getAbsent", 1)
        assert [a.lower() for a in absent] == ["0x" + me[3].hex()], absent
    finally:
        chain.close()


def test_attestation_gas_is_read_from_the_head_and_never_above_the_block_gas_limit(tmp_path: Path) -> None:
    """views.attest_gas: txs.attest_gas of the registry size, the round's attestations and the validator
    count at the committed head; at full gas txs.ATTEST_GAS; both capped at the genesis block gas limit
    (the pool refuses a transaction declaring more)."""
    from swarmnode.node.views import attest_gas

    for limit in (30_000_000, 5_000_000):
        genesis = replace(dev_genesis(3, 5, chain_id=4549, rounds=replace(DEV_ROUNDS, commit_window_s=WINDOW_S),
                                      genesis_model_hash=GENESIS_MODEL), block_gas_limit=limit)
        chain = ExecutionChain.open(tmp_path / f"c{limit}", genesis, sync_writes=False)
        try:
            keys = [dev_key(i) for i in range(5)]
            pool = TxPool(genesis.chain_id, chain.decode_transaction)
            for i in range(4):
                raw = txs.sign_call(keys[i], genesis.chain_id, 0, txs.register_data(PEER_IDS[i]), chain.next_base_fee())
                pool.add_raw(raw, chain.state_view(), chain.next_base_fee())
            built = ChainApplication(chain, address_of(keys[0]), pool=pool).propose_block(1, 0, genesis.genesis_time + 1)
            chain.commit(chain.block_hash(built))
            assert SwarmViews(chain).call_view("SwarmRounds", "registrySize") == 4
            assert attest_gas(chain, 0) == txs.attest_gas(4, 0, 3) == 1_300_000  # under both limits
            assert attest_gas(chain, 0, True) == min(txs.ATTEST_GAS, limit)  # 15M, or 5M under a 5M limit
        finally:
            chain.close()


def test_a_key_set_frozen_below_min_closes_at_the_deadline_for_readers_and_contract_alike(tmp_path: Path) -> None:
    """Secure aggregation, min_participants 2: participant 0 alone posts keys and commits, freezing a set of
    one. Every reader (a member of the set, a registered participant outside it, a validator that is not a
    participant) sees the window open until the deadline, not extended, then closed and skipped; the
    contract takes an attestation of the base hash exactly from then, and the round settles on it."""
    genesis = replace(dev_genesis(3, 5, chain_id=4551, rounds=replace(DEV_ROUNDS, commit_window_s=WINDOW_S,
                                                                      min_participants=2),
                                  genesis_model_hash=GENESIS_MODEL), privacy={"secure_aggregation": True})
    chain = ExecutionChain.open(tmp_path / "c", genesis, sync_writes=False)
    keys = [dev_key(i) for i in range(5)]
    me = [address_of(k) for k in keys]
    nonces = [0] * 5
    clock = [genesis.genesis_time]
    readers = {i: RoundReader(me[i]) for i in (0, 3, 2)}  # in the set, outside it, a validator only

    def signed(who: int, data: bytes) -> bytes:
        gas = txs.attest_gas(5, 3, 3) if data[:4] == txs.ATTEST_SELECTOR else None
        return txs.sign_call(keys[who], genesis.chain_id, nonces[who], data, chain.next_base_fee(), gas=gas)

    def block(*calls: tuple[int, bytes], dt: int = 5) -> None:
        raws = []
        for who, data in calls:
            raws.append(signed(who, data))
            nonces[who] += 1
        clock[0] += dt
        propose_and_commit(chain, me[0], raws, clock[0])

    def attest_would_succeed() -> bool:
        return succeeds_next(chain, me[0], signed(1, txs.attest_data(0, GENESIS_MODEL)))

    try:
        block(*[(i, txs.register_data(PEER_IDS[i])) for i in (0, 3)])
        block(*[(i, txs.share_key_data(bytes([i + 1]) * 32)) for i in (0, 3)])
        block((0, txs.post_keys_data(0, b"\x05" * 32, b"\x06" * 32, b"\x07" * 64)))
        block((0, txs.commit_data(txs.CommitCall(0, b"\x09" * 32, 100, 500_000, 900_000, key_count=1))))
        close = int(SwarmViews(chain).call_view("SwarmRounds", "getRound", 0)["closeTime"])
        saw_open = 0
        while True:
            obs = {i: r.observe(chain) for i, r in readers.items()}
            assert len({(o.window_open, o.extended, o.skipped) for o in obs.values()}) == 1, obs
            o = obs[2]
            assert not o.extended  # the frozen set can never bring the second commit
            assert o.window_open == (int(chain.head.timestamp) + 1 < close)
            assert attest_would_succeed() == (not o.window_open)
            if not o.window_open:
                break
            saw_open += 1
            block(dt=2)
        assert saw_open >= 3 and all(o.skipped for o in obs.values())
        block(*[(v, txs.attest_data(0, GENESIS_MODEL)) for v in range(3)])
        info = SwarmViews(chain).call_view("SwarmRounds", "getRound", 0)
        assert (info["finalized"], info["skipped"], _b(info["finalHash"])) == (True, True, GENESIS_MODEL)
        assert readers[0].observe(chain).round == 1
    finally:
        chain.close()
