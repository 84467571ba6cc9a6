"""Actions shared by the handlers and the upon-rules: StartRound, casting a vote, deciding."""

from __future__ import annotations

from dataclasses import replace

from consensus.engine.state import EngineState
from consensus.engine.types import (
    BroadcastProposal,
    BroadcastVote,
    CommitBlock,
    Output,
    RequestValue,
    ScheduleTimeout,
    Step,
)
from consensus.errors import ConsensusError
from consensus.votes import STEP_PRECOMMIT

Result = tuple[EngineState, list[Output]]


class EngineError(ConsensusError):
    """The state machine reached an impossible state (a bug, never a peer's fault)."""


def start_round(state: EngineState, round_: int) -> Result:
    state = replace(state, round=round_, step=Step.PROPOSE)  # L12-L13
    outputs: list[Output] = []
    if state.is_proposer:  # L14
        if state.valid_value is not None:  # L15-L16
            outputs.append(BroadcastProposal(state.height, round_, state.valid_value, state.valid_round))  # L19
        else:
            outputs.append(RequestValue(state.height, round_))  # L18 getValue(); L19 on ValueReady
    # L21. The proposer schedules it too: if its own proposal never materialises (slow app, or a
    # restart whose signing record forbids it) it must still move on.
    duration = state.timeouts.duration(Step.PROPOSE, round_)
    outputs.append(ScheduleTimeout(state.height, round_, Step.PROPOSE, duration))
    return state, outputs


def vote(state: EngineState, step: Step, block_hash: bytes) -> Result:
    if not state.is_validator:
        return state, []
    return state, [BroadcastVote(state.height, state.round, step, block_hash)]


def decide(state: EngineState, round_: int, block_hash: bytes) -> Result:
    """L51: decision_p[h_p] = v. The shell commits, then starts height + 1 (L52-L54) after the block
    interval, because the next validator set is only known once the block is executed."""
    precommits = tuple(
        v for _, v in sorted(state.round_votes(round_, STEP_PRECOMMIT).votes.items()) if v.block_hash == block_hash
    )
    state = replace(state, decision=block_hash, step=Step.COMMIT)
    return state, [CommitBlock(state.height, round_, block_hash, precommits)]
