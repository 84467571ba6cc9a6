"""The engine's state: Algorithm 1's per-process variables plus the message log, as frozen data.

Mappings inside the frozen dataclasses are never mutated: every change builds a new mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from consensus.engine.types import ProposalInput, Step, TimeoutConfig
from consensus.engine.validators import ProposerRotation, ValidatorSet
from consensus.votes import SignedVote


@dataclass(frozen=True)
class RoundVotes:
    """Votes of one (round, step): one per validator, with power tallied per block hash."""

    votes: Mapping[bytes, SignedVote] = field(default_factory=dict)  # signer -> vote
    power_by_hash: Mapping[bytes, int] = field(default_factory=dict)
    power: int = 0  # total power that voted (any hash, nil included)

    def add(self, signer: bytes, vote: SignedVote, power: int) -> RoundVotes:
        votes = dict(self.votes)
        votes[signer] = vote
        tally = dict(self.power_by_hash)
        tally[vote.block_hash] = tally.get(vote.block_hash, 0) + power
        return RoundVotes(votes, tally, self.power + power)

    def power_for(self, block_hash: bytes) -> int:
        return self.power_by_hash.get(block_hash, 0)


EMPTY_ROUND_VOTES = RoundVotes()


@dataclass(frozen=True)
class EngineState:
    """h_p, round_p, step_p, lockedValue/Round, validValue/Round and the message log of one height.

    Values are identified by block hash (id(v)); the shell keeps the block bytes.
    """

    chain_id: int
    address: bytes | None  # None: an observer that follows but never votes
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    height: int = 0
    round: int = 0
    step: Step = Step.COMMIT
    rotation: ProposerRotation | None = None
    locked_value: bytes | None = None
    locked_round: int = -1
    valid_value: bytes | None = None
    valid_round: int = -1
    proposals: Mapping[int, ProposalInput] = field(default_factory=dict)  # round -> first proposal seen
    verdicts: Mapping[bytes, bool] = field(default_factory=dict)  # block hash -> valid(v)
    votes: Mapping[tuple[int, int], RoundVotes] = field(default_factory=dict)  # (round, step) -> votes
    fired: frozenset[tuple[int, int]] = frozenset()  # (paper line, round) of "for the first time" rules
    decision: bytes | None = None

    @property
    def validators(self) -> ValidatorSet:
        if self.rotation is None:
            raise RuntimeError("engine has not started a height")
        return self.rotation.vset

    def proposer(self, round_: int) -> bytes:
        if self.rotation is None:
            raise RuntimeError("engine has not started a height")
        return self.rotation.proposer(round_)

    @property
    def is_proposer(self) -> bool:
        return self.address is not None and self.proposer(self.round) == self.address

    @property
    def is_validator(self) -> bool:
        return self.address is not None and self.validators.power_of(self.address) > 0

    def round_votes(self, round_: int, step: int) -> RoundVotes:
        return self.votes.get((round_, step), EMPTY_ROUND_VOTES)

    def with_vote(self, signer: bytes, vote: SignedVote, power: int) -> EngineState:
        key = (vote.round, vote.step)
        votes = dict(self.votes)
        votes[key] = self.round_votes(vote.round, vote.step).add(signer, vote, power)
        return replace(self, votes=votes)

    def with_proposal(self, proposal: ProposalInput) -> EngineState:
        proposals = dict(self.proposals)
        proposals[proposal.vote.round] = proposal
        return replace(self, proposals=proposals)

    def with_verdict(self, block_hash: bytes, valid: bool) -> EngineState:
        verdicts = dict(self.verdicts)
        verdicts[block_hash] = valid
        return replace(self, verdicts=verdicts)

    def with_fired(self, line: int, round_: int) -> EngineState:
        return replace(self, fired=self.fired | {(line, round_)})


def initial_state(chain_id: int, address: bytes | None, timeouts: TimeoutConfig | None = None) -> EngineState:
    """State before the first StartHeight input."""
    return EngineState(chain_id=chain_id, address=address, timeouts=timeouts or TimeoutConfig())
