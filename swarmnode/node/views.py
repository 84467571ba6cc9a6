"""Reads of the swarm contracts for the round protocol (chain executor thread only)."""

from __future__ import annotations

from typing import Any

from consensus.chain import ExecutionChain
from consensus.chain_reads import CallFailed
from consensus.rpc_swarm import SwarmViews
from swarmnode.node import txs
from swarmnode.node.machine import CommitInfo, RoundObservation

ZERO32 = b"\x00" * 32


def _b(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text[2:])


def _addr(text: str) -> bytes:
    return bytes.fromhex(text[2:].lower())


def extended(info: dict[str, Any], min_participants: int, skip_under_min: bool, secagg: bool = False) -> bool:
    """Whether the round `info` describes waits for commits whatever the time (SwarmRounds._windowOpen):
    fewer than min_participants committed and skip_under_min off; under secure aggregation only while the
    round has no commit (the first freezes the key set, whose members then have until the deadline)."""
    commits = int(info["commitCount"])
    if skip_under_min or commits >= min_participants:
        return False
    return not secagg or commits == 0


def window_may_take_commits(info: dict[str, Any], head_time: int, min_participants: int, skip_under_min: bool,
                            secagg: bool = False) -> bool:
    """Whether the block after a head stamped `head_time` may still accept commits to the round `info`
    describes (SwarmRounds._windowOpen, evaluated for a block whose timestamp is at least head_time + 1)."""
    if info["finalized"]:
        return False
    if extended(info, min_participants, skip_under_min, secagg):
        return True  # extended until enough commits arrive
    if info["closedEarly"]:
        return False
    return head_time + 1 < int(info["closeTime"])


class RoundReader:
    """Builds RoundObservations, remembering what the contract never changes once written: a round's
    commits (append-only), its base hash, a window once closed, and our attestation once on chain.
    Each contract call is a py-evm execution of a few ms on the chain executor, which the driver's
    validations wait behind, so a block costs as few calls as the round's state allows:
    - the current round is known while getRound(r) says r is not final (only finalizing r opens r + 1);
    - our registry entry and validator status are read when a round opens, every STATIC_REFRESH_BLOCKS
      blocks, and on every block while we are not an active participant (a registration is seen at once);
    - the window is computed from getRound's deadline and the head's timestamp, never from a call;
    - attestationOf only between the window's close and our attestation.
    In steady state that is 1-2 calls per block."""

    STATIC_REFRESH_BLOCKS = 16

    def __init__(self, me: bytes) -> None:
        self.me = me
        self._commits: dict[int, list[CommitInfo]] = {}
        self._closed: set[int] = set()  # rounds whose commit window has closed
        self._attested: set[int] = set()  # rounds our attestation is recorded for
        self._round: int | None = None  # the round last observed as current
        self._me_info: dict[str, Any] | None = None
        self._validator = False
        self._static_height: int | None = None  # height our registry entry and validator status were read at
        self._params: tuple[int, bool, int] | None = None  # minParticipants, skipUnderMin, absentRounds: genesis
        self.calls = 0  # contract calls made (for tests and profiling)

    def observe(self, chain: ExecutionChain) -> RoundObservation:
        """The current round as of the committed head, from this node's point of view."""
        v = SwarmViews(chain)
        me = self.me
        head = chain.head
        height, head_time = int(head.block_number), int(head.timestamp)

        def call(contract: str, fn: str, *args: object) -> Any:
            self.calls += 1
            return v.call_view(contract, fn, *args)

        if self._params is None:
            self._params = (int(call("SwarmRounds", "minParticipants")), bool(call("SwarmRounds", "skipUnderMin")),
                            int(call("SwarmRounds", "absentRounds")), bool(call("SwarmRounds", "secureAggregation")))
        min_participants, skip_under_min, absent_rounds, secagg = self._params
        known = self._round
        if known is not None and not (info := call("SwarmRounds", "getRound", known))["finalized"]:
            r = known
        else:  # first observation, or the round we knew has finalized: a new one is open
            r = int(call("SwarmRounds", "currentRound"))
            info = call("SwarmRounds", "getRound", r)
        new_round = r != known
        self._round = r
        commits = self._commits.setdefault(r, [])
        for i in range(len(commits), int(info["commitCount"])):
            c = call("SwarmRounds", "getCommit", r, i)
            commits.append(CommitInfo(_addr(c["participant"]), _b(c["updateHash"]), int(c["numSamples"])))
        for old in [q for q in self._commits if q < r - 1]:  # bounded: only the rounds still observed
            del self._commits[old]
            self._closed.discard(old)
            self._attested.discard(old)
        me_info = self._me_info
        if (new_round or me_info is None or not me_info["active"] or self._static_height is None
                or not 0 <= height - self._static_height < self.STATIC_REFRESH_BLOCKS):
            me_info = self._me_info = call("SwarmRounds", "getParticipant", me)
            self._validator = bool(call("Staking", "isValidator", me))
            self._static_height = height
        validator = self._validator
        if r not in self._closed and not window_may_take_commits(info, head_time, min_participants, skip_under_min,
                                                                 secagg):
            self._closed.add(r)
        closed = r in self._closed
        if (validator and closed and r not in self._attested
                and _b(call("SwarmRounds", "attestationOf", r, me)) != ZERO32):
            self._attested.add(r)
        registered = bool(me_info["registered"])
        sa: dict[str, Any] = {}
        if secagg and registered:
            keys = call("SwarmRounds", "getMaskKeys", r)
            mine = {_addr(k["participant"]) for k in keys}
            next_keys = {_addr(k["participant"]) for k in call("SwarmRounds", "getMaskKeys", r + 1)}
            revealers = {_addr(x["participant"]) for x in call("SwarmRounds", "getReveals", r)} if closed else set()
            sa = {"secagg": True, "share_key_set": _b(call("SwarmRounds", "shareKeyOf", me)) != ZERO32,
                  "keys_posted": me in mine, "next_keys_posted": me in next_keys, "key_count": len(keys),
                  "revealed": me in revealers,
                  "reveal_open": closed and head_time < int(call("SwarmRounds", "revealDeadline", r))}
        return RoundObservation(
            height=height, head_time=head_time, round=r, base_hash=_b(info["baseHash"]), window_open=not closed,
            skipped=closed and int(info["commitCount"]) < min_participants, commits=tuple(commits),
            close_time=int(info["closeTime"]),
            extended=not closed and extended(info, min_participants, skip_under_min, secagg),
            participant_count=int(info["participantCount"]),
            expected_count=int(info["expectedCount"]),
            participant_index=int(me_info["index"]) if registered else None,
            active=bool(me_info["active"]), expected=int(me_info["expectedRound"]) == r + 1,
            dropped=bool(me_info["active"]) and absent_rounds > 0 and int(me_info["missed"]) >= absent_rounds,
            committed=any(c.participant == me for c in commits),  # the contract's hasCommitted, from its commits
            attested=validator and r in self._attested, validator=validator, **sa,
        )


def privacy_spent(chain: ExecutionChain, me: bytes) -> tuple[int, int]:
    """(micro-epsilon spent, commits made under the budget) of `me`, from the committed head."""
    v = SwarmViews(chain)
    return int(v.call_view("SwarmRounds", "epsilonSpent", me)), int(v.call_view("SwarmRounds", "dpReleases", me))


def final_hash(chain: ExecutionChain, round_: int) -> bytes | None:
    """The finalized global model hash of `round_`, or None while it is not final."""
    try:
        info = SwarmViews(chain).call_view("SwarmRounds", "getRound", round_)
    except CallFailed:
        return None
    return _b(info["finalHash"]) if info["finalized"] else None


def final_hashes(chain: ExecutionChain, first: int, last: int) -> list[tuple[int, bytes]]:
    """(round, final hash) for every finalized round in [first, last]."""
    out = []
    for r in range(max(0, first), last + 1):
        h = final_hash(chain, r)
        if h is not None:
            out.append((r, h))
    return out


def update_hashes(chain: ExecutionChain, round_: int) -> list[bytes]:
    """The update hashes committed in `round_` (empty for a round that does not exist)."""
    v = SwarmViews(chain)
    try:
        info = v.call_view("SwarmRounds", "getRound", round_)
    except CallFailed:
        return []
    return [_b(v.call_view("SwarmRounds", "getCommit", round_, i)["updateHash"]) for i in range(int(info["commitCount"]))]


def round_info(chain: ExecutionChain, round_: int) -> dict[str, Any] | None:
    """SwarmRounds.getRound(round_), or None for a round that has not opened."""
    try:
        return dict(SwarmViews(chain).call_view("SwarmRounds", "getRound", round_))
    except CallFailed:
        return None


def attest_gas(chain: ExecutionChain, round_: int, full: bool = False) -> int:
    """Gas for our attestation of `round_`: sized to the registry, the round's attestations and the validator
    set at the committed head (txs.attest_gas), or with `full` txs.ATTEST_GAS; never above the block gas
    limit (the pool refuses more)."""
    if full:
        return min(txs.ATTEST_GAS, chain.genesis.block_gas_limit)
    v = SwarmViews(chain)
    attested = int(v.call_view("SwarmRounds", "getRound", round_)["attestationCount"])
    gas = txs.attest_gas(int(v.call_view("SwarmRounds", "registrySize")), attested,
                         int(v.call_view("Staking", "validatorCount")))
    return min(gas, chain.genesis.block_gas_limit)


def update_committers(chain: ExecutionChain, round_: int) -> list[bytes]:
    """The addresses that committed to `round_`, in commit order."""
    return [_addr(a) for a in SwarmViews(chain).call_view("SwarmRounds", "getCommitters", round_)]


def reveal_state(chain: ExecutionChain, round_: int) -> tuple[list[bytes], int, int]:
    """(the addresses that revealed for `round_`, its reveal deadline, the head's timestamp)."""
    v = SwarmViews(chain)
    revealers = [_addr(x["participant"]) for x in v.call_view("SwarmRounds", "getReveals", round_)]
    return revealers, int(v.call_view("SwarmRounds", "revealDeadline", round_)), int(chain.head.timestamp)
