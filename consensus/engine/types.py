"""Plain data of the consensus engine: steps, timeout schedule, inputs and outputs."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NewType

from consensus.engine.validators import ValidatorSet
from consensus.evidence import Evidence
from consensus.votes import SignedVote

Height = NewType("Height", int)
Round = NewType("Round", int)


class Step(IntEnum):
    """step_p of Algorithm 1, plus COMMIT: decided, waiting for the next height to start."""

    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2
    COMMIT = 3


@dataclass(frozen=True)
class TimeoutConfig:
    """timeoutX(round) = base + delta * round: grows with the round so that eventually all timeouts
    exceed the (unknown) message delay, which is what gives liveness after GST."""

    propose: float = 3.0
    propose_delta: float = 0.5
    prevote: float = 1.0
    prevote_delta: float = 0.5
    precommit: float = 1.0
    precommit_delta: float = 0.5

    def duration(self, step: Step, round_: int) -> float:
        if step == Step.PROPOSE:
            return self.propose + self.propose_delta * round_
        if step == Step.PREVOTE:
            return self.prevote + self.prevote_delta * round_
        return self.precommit + self.precommit_delta * round_


# ---- inputs ----


@dataclass(frozen=True)
class StartHeight:
    """Begin `height` with the validator set in force there (at start, and after each commit)."""

    height: int
    validators: ValidatorSet
    # (lockedValue, lockedRound) this node held at `height` before a restart (from its signing record)
    lock: tuple[bytes, int] | None = None


@dataclass(frozen=True)
class ProposalInput:
    """⟨PROPOSAL, h, r, id(v), vr⟩: `vote` is the proposer's signed step-0 vote over the block hash;
    `signer` was recovered from its signature by the shell."""

    vote: SignedVote
    valid_round: int
    signer: bytes


@dataclass(frozen=True)
class VoteInput:
    """A signed prevote or precommit with its recovered signer."""

    vote: SignedVote
    signer: bytes


@dataclass(frozen=True)
class TimeoutInput:
    height: int
    round: int
    step: Step


@dataclass(frozen=True)
class BlockVerdict:
    """valid(v): the application's verdict on a proposed block."""

    height: int
    block_hash: bytes
    valid: bool


@dataclass(frozen=True)
class ValueReady:
    """getValue() returned: the block this node proposes at (height, round)."""

    height: int
    round: int
    block_hash: bytes


@dataclass(frozen=True)
class CertifiedCommit:
    """A decision learnt from a verified commit certificate (sync); the shell has verified it."""

    height: int
    round: int
    block_hash: bytes
    precommits: tuple[SignedVote, ...]


Input = StartHeight | ProposalInput | VoteInput | TimeoutInput | BlockVerdict | ValueReady | CertifiedCommit

# ---- outputs ----


@dataclass(frozen=True)
class RequestValue:
    """getValue(): build a block for (height, round) and answer with ValueReady."""

    height: int
    round: int


@dataclass(frozen=True)
class BroadcastProposal:
    height: int
    round: int
    block_hash: bytes
    valid_round: int


@dataclass(frozen=True)
class BroadcastVote:
    """Sign (crash-safely) and broadcast a prevote or precommit; nil is the zero hash."""

    height: int
    round: int
    step: Step
    block_hash: bytes


@dataclass(frozen=True)
class ScheduleTimeout:
    height: int
    round: int
    step: Step
    duration: float


@dataclass(frozen=True)
class ValidateBlock:
    """Ask the application whether the proposed block is valid; answer with BlockVerdict."""

    height: int
    round: int
    block_hash: bytes


@dataclass(frozen=True)
class CommitBlock:
    """decision_p[h] = v: the precommits (> 2/3 of power) form its commit certificate."""

    height: int
    round: int
    block_hash: bytes
    precommits: tuple[SignedVote, ...]


@dataclass(frozen=True)
class EvidenceFound:
    evidence: Evidence


@dataclass(frozen=True)
class Dropped:
    """An input the engine ignored, with the reason (counted by the shell)."""

    reason: str
    detail: str = ""


Output = (
    RequestValue | BroadcastProposal | BroadcastVote | ScheduleTimeout | ValidateBlock | CommitBlock
    | EvidenceFound | Dropped
)
