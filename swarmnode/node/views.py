"""Reads of the swarm contracts for the round protocol (chain-worker thread only)."""

from __future__ import annotations

from consensus.chain import ExecutionChain
from consensus.chain_reads import CallFailed
from consensus.rpc_swarm import SwarmViews
from swarmnode.node.rounds import CommitInfo, RoundObservation


def _b(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text[2:])


def _addr(text: str) -> bytes:
    return bytes.fromhex(text[2:].lower())


def observe(chain: ExecutionChain, me: bytes, genesis_model_hash: bytes) -> RoundObservation:
    """The current round as of the committed head, from this node's point of view."""
    v = SwarmViews(chain)
    r = int(v.call_view("SwarmRounds", "currentRound"))
    info = v.call_view("SwarmRounds", "getRound", r)
    base = genesis_model_hash if r == 0 else _b(v.call_view("SwarmRounds", "getRound", r - 1)["finalHash"])
    commits = []
    for i in range(int(info["commitCount"])):
        c = v.call_view("SwarmRounds", "getCommit", r, i)
        commits.append(CommitInfo(_addr(c["participant"]), _b(c["updateHash"]), int(c["numSamples"])))
    participants = [_addr(a) for a in v.call_view("SwarmRounds", "getParticipants")]
    index = participants.index(me) if me in participants else None
    attested = _b(v.call_view("SwarmRounds", "attestationOf", r, me)) != b"\x00" * 32
    return RoundObservation(
        height=chain.height, round=r, base_hash=base,
        window_open=bool(v.call_view("SwarmRounds", "windowOpen")),
        commits=tuple(commits), participant_count=len(participants), participant_index=index,
        committed=bool(v.call_view("SwarmRounds", "hasCommitted", r, me)), attested=attested,
        validator=bool(v.call_view("Staking", "isValidator", me)),
    )


def final_hash(chain: ExecutionChain, round_: int) -> bytes | None:
    """The finalized global model hash of `round_`, or None while it is not final."""
    try:
        info = SwarmViews(chain).call_view("SwarmRounds", "getRound", round_)
    except CallFailed:
        return None
    return _b(info["finalHash"]) if info["finalized"] else None


def update_hashes(chain: ExecutionChain, round_: int) -> list[bytes]:
    """The update hashes committed in `round_` (empty for a round that does not exist)."""
    v = SwarmViews(chain)
    try:
        info = v.call_view("SwarmRounds", "getRound", round_)
    except CallFailed:
        return []
    return [_b(v.call_view("SwarmRounds", "getCommit", round_, i)["updateHash"]) for i in range(int(info["commitCount"]))]
