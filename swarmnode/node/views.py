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


class RoundReader:
    """Builds RoundObservations, remembering what the contract never changes once written: a round's
    commits (append-only), the final hash a round was opened on, a round's window once it has closed, and
    our attestation once it is on chain (neither ever reverts). Each contract call is a py-evm
    execution of ~5 ms, and the round loop observes on every block while holding the chain lock, so
    late in a round this halves the calls (the driver waits on that lock to validate blocks)."""

    def __init__(self, me: bytes, genesis_model_hash: bytes) -> None:
        self.me = me
        self.genesis_model_hash = genesis_model_hash
        self._commits: dict[int, list[CommitInfo]] = {}
        self._bases: dict[int, bytes] = {0: genesis_model_hash}
        self._closed: set[int] = set()  # rounds whose commit window has closed
        self._attested: set[int] = set()  # rounds our attestation is recorded for

    def observe(self, chain: ExecutionChain) -> RoundObservation:
        """The current round as of the committed head, from this node's point of view."""
        v = SwarmViews(chain)
        me = self.me
        r = int(v.call_view("SwarmRounds", "currentRound"))
        info = v.call_view("SwarmRounds", "getRound", r)
        if r not in self._bases:
            self._bases[r] = _b(v.call_view("SwarmRounds", "getRound", r - 1)["finalHash"])
        commits = self._commits.setdefault(r, [])
        for i in range(len(commits), int(info["commitCount"])):
            c = v.call_view("SwarmRounds", "getCommit", r, i)
            commits.append(CommitInfo(_addr(c["participant"]), _b(c["updateHash"]), int(c["numSamples"])))
        for old in [q for q in self._commits if q < r - 1]:  # bounded: only the rounds still observed
            del self._commits[old]
            self._bases.pop(old, None)
            self._closed.discard(old)
            self._attested.discard(old)
        participants = [_addr(a) for a in v.call_view("SwarmRounds", "getParticipants")]
        index = participants.index(me) if me in participants else None
        validator = bool(v.call_view("Staking", "isValidator", me))
        if validator and r not in self._attested and _b(v.call_view("SwarmRounds", "attestationOf", r, me)) != b"\x00" * 32:
            self._attested.add(r)
        if r not in self._closed and not v.call_view("SwarmRounds", "windowOpen"):
            self._closed.add(r)
        return RoundObservation(
            height=chain.height, round=r, base_hash=self._bases[r], window_open=r not in self._closed,
            commits=tuple(commits), participant_count=len(participants), participant_index=index,
            committed=any(c.participant == me for c in commits),  # the contract's hasCommitted, from its commits
            attested=validator and r in self._attested, validator=validator,
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
