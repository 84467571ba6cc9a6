"""Tendermint BFT consensus engine: a pure state machine, (state, input) -> (state, outputs).

No I/O, clock or trio: the driver (consensus.driver) feeds inputs and carries out outputs.
"""

from consensus.engine.actions import EngineError
from consensus.engine.machine import apply
from consensus.engine.state import EngineState, RoundVotes, initial_state
from consensus.engine.types import (
    BlockVerdict,
    BroadcastProposal,
    BroadcastVote,
    CertifiedCommit,
    CommitBlock,
    Dropped,
    EvidenceFound,
    Height,
    Input,
    Output,
    ProposalInput,
    RequestValue,
    Round,
    ScheduleTimeout,
    StartHeight,
    Step,
    TimeoutConfig,
    TimeoutInput,
    ValidateBlock,
    ValueReady,
    VoteInput,
)
from consensus.engine.validators import InvalidValidatorSet, ProposerRotation, Validator, ValidatorSet

__all__ = [
    "BlockVerdict", "BroadcastProposal", "BroadcastVote", "CertifiedCommit", "CommitBlock", "Dropped",
    "EngineError", "EngineState", "EvidenceFound", "Height", "Input", "InvalidValidatorSet", "Output",
    "ProposalInput", "ProposerRotation", "RequestValue", "Round", "RoundVotes", "ScheduleTimeout",
    "StartHeight", "Step", "TimeoutConfig", "TimeoutInput", "ValidateBlock", "Validator", "ValidatorSet",
    "ValueReady", "VoteInput", "apply", "initial_state",
]
