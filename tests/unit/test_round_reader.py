"""RoundReader on a real py-evm chain: after every block its observation equals one built from scratch
with every contract call, while it makes far fewer calls (each is a py-evm execution under the chain lock)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from consensus.chain import ExecutionChain
from consensus.chain_app import ChainApplication
from consensus.devtools import address_of, dev_genesis, dev_key
from consensus.genesis import RoundsParams
from consensus.rpc_swarm import SwarmViews
from consensus.txpool import TxPool
from swarmnode.node import txs
from swarmnode.node.rounds import CommitInfo, RoundObservation
from swarmnode.node.views import RoundReader

PEER_IDS = [
    "16Uiu2HAmFQfvhrGfw35jX2RuGUZ9DoiwS52fiokpejS559gsLcGb",
    "16Uiu2HAmGFCHBZyuQBwFw3ubX7PKjrEKC6zumXV22C2jhmDT9mcz",
    "16Uiu2HAkwTUKLuDf8e6ezMzoF1HXaoUSnL9JkGN4fxY3V3MRboep",
    "16Uiu2HAmJKnPTGvEKbzN2xWiR2vEm97G7Hq1S9maGuBzuQMoCbQb",
    "16Uiu2HAm1FT42nifXcb7Y52DJWHewKZiA2uAMbiUepbs1jB6SBk6",
]
GENESIS_MODEL = b"\x11" * 32


def from_scratch(chain: ExecutionChain, me: bytes) -> tuple[RoundObservation, int]:
    """Every field read afresh (the reader before it kept anything between blocks); and the call count."""
    v = SwarmViews(chain)
    calls = 0

    def call(contract: str, fn: str, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        return v._call_view(chain.head, contract, fn, *args)  # uncached

    r = int(call("SwarmRounds", "currentRound"))
    info = call("SwarmRounds", "getRound", r)
    base = GENESIS_MODEL if r == 0 else bytes.fromhex(call("SwarmRounds", "getRound", r - 1)["finalHash"][2:])
    commits = []
    for i in range(int(info["commitCount"])):
        c = call("SwarmRounds", "getCommit", r, i)
        commits.append(CommitInfo(bytes.fromhex(c["participant"][2:].lower()), bytes.fromhex(c["updateHash"][2:]),
                                  int(c["numSamples"])))
    participants = [bytes.fromhex(a[2:].lower()) for a in call("SwarmRounds", "getParticipants")]
    validator = bool(call("Staking", "isValidator", me))
    attested = validator and call("SwarmRounds", "attestationOf", r, me) != "0x" + "00" * 32
    return RoundObservation(
        height=chain.height, round=r, base_hash=base, window_open=bool(call("SwarmRounds", "windowOpen")),
        commits=tuple(commits), participant_count=int(info["participantCount"]),
        participant_index=participants.index(me) if me in participants else None,
        committed=any(c.participant == me for c in commits), attested=attested, validator=validator,
    ), calls


def test_observations_match_a_full_read_after_every_block(tmp_path: Path) -> None:
    genesis = replace(dev_genesis(3, 5, chain_id=4547), rounds=RoundsParams(commit_window=6),
                      genesis_model_hash=GENESIS_MODEL)
    chain = ExecutionChain.open(tmp_path / "c", genesis, sync_writes=False)
    nonces = [0] * 5
    keys = [dev_key(i) for i in range(5)]
    me = [address_of(k) for k in keys]
    readers = {i: RoundReader(me[i], GENESIS_MODEL) for i in (0, 3, 4)}  # validator, participant, latecomer
    scratch_calls = 0

    def block(*calls: tuple[int, bytes]) -> None:
        nonlocal scratch_calls
        pool = TxPool(genesis.chain_id, chain.decode_transaction)
        for who, data in calls:
            raw = txs.sign_call(keys[who], genesis.chain_id, nonces[who], data, chain.next_base_fee())
            nonces[who] += 1
            pool.add_raw(raw, chain.state_view(), chain.next_base_fee())
        app = ChainApplication(chain, me[0], pool=pool)
        built = app.propose_block(chain.height + 1, 0, genesis.genesis_time + 5 * (chain.height + 1))
        chain.commit(chain.block_hash(built))
        assert len(chain.reader.block_by_number(chain.height).transactions) == len(calls), "a transaction failed"
        for i, reader in readers.items():
            expected, n = from_scratch(chain, me[i])
            scratch_calls += n
            assert reader.observe(chain) == expected, f"node {i} at height {chain.height}"

    def commit(who: int, round_: int) -> tuple[int, bytes]:
        return who, txs.commit_data(txs.CommitCall(round_, bytes([who + 1]) * 32, 100 + who, 500_000, 900_000))

    try:
        block(*[(i, txs.register_data(PEER_IDS[i])) for i in range(4)])
        block(commit(0, 0), commit(1, 0))
        block()
        block(commit(2, 0), commit(3, 0))  # everyone registered has committed: the window closes early
        block((0, txs.attest_data(0, b"\xaa" * 32)))
        block((4, txs.register_data(PEER_IDS[4])))  # a latecomer sees itself in the very next observation
        block((1, txs.attest_data(0, b"\xaa" * 32)), (2, txs.attest_data(0, b"\xaa" * 32)))  # final: round 1
        block(commit(0, 1))
        for _ in range(6):  # round 1's window closes by height
            block()
        block(*[(v, txs.attest_data(1, b"\xbb" * 32)) for v in range(3)])  # round 2 opens
        block()
        assert readers[0].observe(chain).round == 2
        fast_calls = sum(r.calls for r in readers.values())
        assert fast_calls < 0.5 * scratch_calls, (fast_calls, scratch_calls)
    finally:
        chain.close()
