"""Tendermint's Algorithm 1 as a pure transition function: apply(state, input) -> (state, outputs).

Line numbers (`# L22`) refer to Buchman, Kwon, Milosevic 2018, "The latest gossip on BFT consensus".
Quorums are weighted by voting power: "2f + 1" reads "more than 2/3 of total power" and "f + 1" reads
"more than 1/3". After every input the upon-rules run to a fixpoint, so the order in which messages
arrive does not matter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from consensus.engine.actions import Result, start_round, vote
from consensus.engine.rules import run_rules as _run_rules
from consensus.engine.state import EngineState
from consensus.engine.types import (
    BlockVerdict,
    BroadcastProposal,
    CertifiedCommit,
    CommitBlock,
    Dropped,
    EvidenceFound,
    Input,
    Output,
    ProposalInput,
    StartHeight,
    Step,
    TimeoutInput,
    ValidateBlock,
    ValueReady,
    VoteInput,
)
from consensus.engine.validators import ProposerRotation
from consensus.evidence import make_evidence
from consensus.votes import NIL_HASH, STEP_PRECOMMIT, STEP_PREVOTE, STEP_PROPOSAL

# Messages for rounds further ahead than this are dropped: bounds the log a Byzantine peer can grow.
MAX_ROUNDS_AHEAD = 64


def apply(state: EngineState, inp: Input) -> tuple[EngineState, tuple[Output, ...]]:
    """One transition. Bad or irrelevant inputs yield a Dropped output and leave the state unchanged."""
    handler = _HANDLERS.get(type(inp))
    if handler is None:
        return state, (Dropped("unknown_input", type(inp).__name__),)
    state, outputs = handler(state, inp)
    if state.rotation is not None and state.step != Step.COMMIT:
        state, more = _run_rules(state)
        outputs.extend(more)
    return state, tuple(outputs)


# ---- height changes (L10, L52-L54) ----


def _on_start_height(state: EngineState, inp: StartHeight) -> Result:
    if state.rotation is not None and inp.height <= state.height:
        return state, [Dropped("stale_start_height", f"height {inp.height} <= current {state.height}")]
    if state.rotation is not None and state.rotation.height == inp.height - 1:
        rotation = state.rotation.next_height(inp.validators)
    else:
        rotation = ProposerRotation.at_height(inp.validators, inp.height)
    # L53: reset locks, valid value and the message log
    fresh = replace(
        state, height=inp.height, round=0, step=Step.PROPOSE, rotation=rotation,
        locked_value=None, locked_round=-1, valid_value=None, valid_round=-1,
        proposals={}, verdicts={}, votes={}, fired=frozenset(), decision=None,
    )
    if inp.lock is not None:  # resumed after a restart: the lock survives (safety across crashes)
        fresh = replace(fresh, locked_value=inp.lock[0], locked_round=inp.lock[1])
    return start_round(fresh, 0)  # L10 / L54


# ---- message intake ----


def _check_slot(state: EngineState, chain_id: int, height: int, round_: int) -> Dropped | None:
    if state.rotation is None:
        return Dropped("not_started")
    if chain_id != state.chain_id:
        return Dropped("wrong_chain", f"chain id {chain_id} != {state.chain_id}")
    if height != state.height:
        return Dropped("wrong_height", f"height {height} != current {state.height}")
    if state.step == Step.COMMIT:
        return Dropped("height_decided", f"height {height} already decided")
    if round_ < 0 or round_ > state.round + MAX_ROUNDS_AHEAD:
        return Dropped("round_out_of_range", f"round {round_} (current {state.round})")
    return None


def _on_proposal(state: EngineState, inp: ProposalInput) -> Result:
    vote = inp.vote
    bad = _check_slot(state, vote.chain_id, vote.height, vote.round)
    if bad is not None:
        return state, [bad]
    if vote.step != STEP_PROPOSAL or vote.is_nil:
        return state, [Dropped("bad_proposal", f"step {vote.step}, nil={vote.is_nil}")]
    if inp.signer != state.proposer(vote.round):
        return state, [Dropped("not_proposer", f"0x{inp.signer.hex()} is not proposer of round {vote.round}")]
    if not -1 <= inp.valid_round < vote.round:
        return state, [Dropped("bad_valid_round", f"valid round {inp.valid_round} for round {vote.round}")]
    known = state.proposals.get(vote.round)
    if known is not None:
        if known.vote.block_hash == vote.block_hash:
            return state, [Dropped("duplicate", "proposal")]
        return state, [EvidenceFound(make_evidence(known.vote, vote, inp.signer))]  # double proposal
    state = state.with_proposal(inp)
    if vote.block_hash in state.verdicts:
        return state, []
    return state, [ValidateBlock(state.height, vote.round, vote.block_hash)]


def _on_vote(state: EngineState, inp: VoteInput) -> Result:
    vote = inp.vote
    bad = _check_slot(state, vote.chain_id, vote.height, vote.round)
    if bad is not None:
        return state, [bad]
    if vote.step not in (STEP_PREVOTE, STEP_PRECOMMIT):
        return state, [Dropped("bad_vote_step", f"step {vote.step}")]
    power = state.validators.power_of(inp.signer)
    if power == 0:
        return state, [Dropped("non_validator", f"vote for height {vote.height} from 0x{inp.signer.hex()}")]
    known = state.round_votes(vote.round, vote.step).votes.get(inp.signer)
    if known is not None:
        if known.block_hash == vote.block_hash:
            return state, [Dropped("duplicate", "vote")]
        return state, [EvidenceFound(make_evidence(known, vote, inp.signer))]  # double vote; keep the first
    return state.with_vote(inp.signer, vote, power), []


def _on_verdict(state: EngineState, inp: BlockVerdict) -> Result:
    if inp.height != state.height or state.rotation is None:
        return state, [Dropped("wrong_height", f"verdict for height {inp.height}")]
    if inp.block_hash in state.verdicts:
        return state, []
    return state.with_verdict(inp.block_hash, inp.valid), []


def _on_value_ready(state: EngineState, inp: ValueReady) -> Result:
    current = (state.height, state.round, state.step)
    if (inp.height, inp.round, Step.PROPOSE) != current or not state.is_proposer or state.valid_value is not None:
        return state, [Dropped("stale_value", f"value for {inp.height}/{inp.round}, now at {current}")]
    state = state.with_verdict(inp.block_hash, True)  # our own block is valid by construction
    return state, [BroadcastProposal(state.height, state.round, inp.block_hash, -1)]  # L19


def _on_certified_commit(state: EngineState, inp: CertifiedCommit) -> Result:
    if state.rotation is None or inp.height != state.height or state.decision is not None:
        return state, [Dropped("stale_certificate", f"certificate for height {inp.height}")]
    state = replace(state.with_verdict(inp.block_hash, True), decision=inp.block_hash, step=Step.COMMIT)
    return state, [CommitBlock(state.height, inp.round, inp.block_hash, inp.precommits)]


# ---- timeouts (L57-L67) ----


def _on_timeout(state: EngineState, inp: TimeoutInput) -> Result:
    if inp.height != state.height or inp.round != state.round or state.step == Step.COMMIT:
        return state, []
    if inp.step == Step.PROPOSE and state.step == Step.PROPOSE:  # L57-L58
        return vote(replace(state, step=Step.PREVOTE), Step.PREVOTE, NIL_HASH)  # L59-L60
    if inp.step == Step.PREVOTE and state.step == Step.PREVOTE:  # L61-L62
        return vote(replace(state, step=Step.PRECOMMIT), Step.PRECOMMIT, NIL_HASH)  # L63-L64
    if inp.step == Step.PRECOMMIT:  # L65-L66
        return start_round(state, state.round + 1)  # L67
    return state, []



_HANDLERS: dict[type, Callable[[EngineState, object], Result]] = {
    StartHeight: _on_start_height,  # type: ignore[dict-item]
    ProposalInput: _on_proposal,  # type: ignore[dict-item]
    VoteInput: _on_vote,  # type: ignore[dict-item]
    TimeoutInput: _on_timeout,  # type: ignore[dict-item]
    BlockVerdict: _on_verdict,  # type: ignore[dict-item]
    ValueReady: _on_value_ready,  # type: ignore[dict-item]
    CertifiedCommit: _on_certified_commit,  # type: ignore[dict-item]
}
