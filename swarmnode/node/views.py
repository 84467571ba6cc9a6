"""Reads of the swarm contracts for the round protocol (chain-worker thread only)."""

from __future__ import annotations

from typing import Any

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
    execution of a few ms, made by every node after every block while holding the chain lock (the driver
    waits on that lock to validate blocks), so a block costs as few calls as the round's state allows:
    - the current round is known while getRound(r) says r is not final (only finalizing r opens r + 1);
    - the participant registry (for our index: it is append-only) and our validator status are read when
      a round opens, every STATIC_REFRESH_BLOCKS blocks (a stake change mid-round is seen within that
      many), and on every block while we are not registered (our own registration is seen at once);
      the participant count is the round's own (participants when it opened, from getRound);
    - windowOpen only while the window is open, attestationOf only between its close and our
      attestation (the contract accepts no attestation while the window is open).
    In steady state that is 2 calls per block (getRound plus one of windowOpen/attestationOf) instead of 6."""

    STATIC_REFRESH_BLOCKS = 16

    def __init__(self, me: bytes, genesis_model_hash: bytes) -> None:
        self.me = me
        self.genesis_model_hash = genesis_model_hash
        self._commits: dict[int, list[CommitInfo]] = {}
        self._bases: dict[int, bytes] = {0: genesis_model_hash}
        self._closed: set[int] = set()  # rounds whose commit window has closed
        self._attested: set[int] = set()  # rounds our attestation is recorded for
        self._round: int | None = None  # the round last observed as current
        self._participants: list[bytes] = []
        self._validator = False
        self._static_height: int | None = None  # height the registry and validator status were read at
        self.calls = 0  # contract calls made (for tests and profiling)

    def observe(self, chain: ExecutionChain) -> RoundObservation:
        """The current round as of the committed head, from this node's point of view."""
        v = SwarmViews(chain)
        me = self.me
        height = chain.height

        def call(contract: str, fn: str, *args: object) -> Any:
            self.calls += 1
            return v.call_view(contract, fn, *args)

        known = self._round
        if known is not None and not (info := call("SwarmRounds", "getRound", known))["finalized"]:
            r = known
        else:  # first observation, or the round we knew has finalized: a new one is open
            r = int(call("SwarmRounds", "currentRound"))
            info = call("SwarmRounds", "getRound", r)
        new_round = r != known
        self._round = r
        if r not in self._bases:
            self._bases[r] = _b(call("SwarmRounds", "getRound", r - 1)["finalHash"])
        commits = self._commits.setdefault(r, [])
        for i in range(len(commits), int(info["commitCount"])):
            c = call("SwarmRounds", "getCommit", r, i)
            commits.append(CommitInfo(_addr(c["participant"]), _b(c["updateHash"]), int(c["numSamples"])))
        for old in [q for q in self._commits if q < r - 1]:  # bounded: only the rounds still observed
            del self._commits[old]
            self._bases.pop(old, None)
            self._closed.discard(old)
            self._attested.discard(old)
        if (new_round or self._static_height is None or me not in self._participants
                or not 0 <= height - self._static_height < self.STATIC_REFRESH_BLOCKS):
            self._participants = [_addr(a) for a in call("SwarmRounds", "getParticipants")]
            self._validator = bool(call("Staking", "isValidator", me))
            self._static_height = height
        participants, validator = self._participants, self._validator
        index = participants.index(me) if me in participants else None
        if r not in self._closed and not call("SwarmRounds", "windowOpen"):
            self._closed.add(r)
        if (validator and r in self._closed and r not in self._attested
                and _b(call("SwarmRounds", "attestationOf", r, me)) != b"\x00" * 32):
            self._attested.add(r)
        return RoundObservation(
            height=height, round=r, base_hash=self._bases[r], window_open=r not in self._closed,
            commits=tuple(commits), participant_count=int(info["participantCount"]), participant_index=index,
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
