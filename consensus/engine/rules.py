"""The upon-rules of Algorithm 1 (L22-L56), run to a fixpoint after every input.

Each rule returns None when its guard does not hold, else the new state and its outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from consensus.engine.actions import EngineError, Result, decide, start_round, vote
from consensus.engine.state import EngineState
from consensus.engine.types import Output, ProposalInput, ScheduleTimeout, Step
from consensus.votes import NIL_HASH, STEP_PRECOMMIT, STEP_PREVOTE

MAX_RULE_ITERATIONS = 256

Rule = Callable[[EngineState], Result | None]


def _current_proposal(state: EngineState) -> ProposalInput | None:
    return state.proposals.get(state.round)


def _accepts(state: EngineState, block_hash: bytes, lock_ok: bool) -> bytes:
    """id(v) when valid(v) and the lock condition hold, else nil."""
    return block_hash if state.verdicts.get(block_hash) is True and lock_ok else NIL_HASH


def rule_l22(state: EngineState) -> Result | None:
    """L22: proposal with vr = -1 while step = propose: prevote it unless invalid or locked elsewhere."""
    prop = _current_proposal(state)
    if state.step != Step.PROPOSE or prop is None or prop.valid_round != -1:
        return None
    v = prop.vote.block_hash
    if v not in state.verdicts:
        return None  # valid(v) is still being computed; the propose timeout bounds the wait
    choice = _accepts(state, v, state.locked_round == -1 or state.locked_value == v)  # L23-L26
    return vote(replace(state, step=Step.PREVOTE), Step.PREVOTE, choice)  # L24/L26, L27


def rule_l28(state: EngineState) -> Result | None:
    """L28: proposal re-proposing v from round vr < round_p, backed by 2f+1 prevotes for v in vr."""
    prop = _current_proposal(state)
    if state.step != Step.PROPOSE or prop is None or not 0 <= prop.valid_round < state.round:
        return None
    v, vr = prop.vote.block_hash, prop.valid_round
    if not state.validators.has_quorum(state.round_votes(vr, STEP_PREVOTE).power_for(v)):
        return None
    if v not in state.verdicts:
        return None
    choice = _accepts(state, v, state.locked_round <= vr or state.locked_value == v)  # L29-L32
    return vote(replace(state, step=Step.PREVOTE), Step.PREVOTE, choice)  # L30/L32, L33


def rule_l34(state: EngineState) -> Result | None:
    """L34: 2f+1 prevotes of any kind while step = prevote, first time: schedule the prevote timeout."""
    if state.step != Step.PREVOTE or (34, state.round) in state.fired:
        return None
    if not state.validators.has_quorum(state.round_votes(state.round, STEP_PREVOTE).power):
        return None
    duration = state.timeouts.duration(Step.PREVOTE, state.round)
    return state.with_fired(34, state.round), [ScheduleTimeout(state.height, state.round, Step.PREVOTE, duration)]  # L35


def rule_l36(state: EngineState) -> Result | None:
    """L36: proposal + 2f+1 prevotes for v, valid(v), step >= prevote, first time: lock and precommit."""
    prop = _current_proposal(state)
    if state.step < Step.PREVOTE or prop is None or (36, state.round) in state.fired:
        return None
    v = prop.vote.block_hash
    if state.verdicts.get(v) is not True:
        return None
    if not state.validators.has_quorum(state.round_votes(state.round, STEP_PREVOTE).power_for(v)):
        return None
    state = state.with_fired(36, state.round)
    outputs: Result | None = None
    if state.step == Step.PREVOTE:  # L37
        state = replace(state, locked_value=v, locked_round=state.round, step=Step.PRECOMMIT)  # L38-L39, L41
        outputs = vote(state, Step.PRECOMMIT, v)  # L40
    state = replace(state, valid_value=v, valid_round=state.round)  # L42-L43
    return state, (outputs[1] if outputs else [])


def rule_l44(state: EngineState) -> Result | None:
    """L44: 2f+1 nil prevotes while step = prevote: precommit nil."""
    if state.step != Step.PREVOTE:
        return None
    if not state.validators.has_quorum(state.round_votes(state.round, STEP_PREVOTE).power_for(NIL_HASH)):
        return None
    return vote(replace(state, step=Step.PRECOMMIT), Step.PRECOMMIT, NIL_HASH)  # L45-L46


def rule_l47(state: EngineState) -> Result | None:
    """L47: 2f+1 precommits of any kind, first time: schedule the precommit timeout."""
    if (47, state.round) in state.fired:
        return None
    if not state.validators.has_quorum(state.round_votes(state.round, STEP_PRECOMMIT).power):
        return None
    duration = state.timeouts.duration(Step.PRECOMMIT, state.round)
    return state.with_fired(47, state.round), [ScheduleTimeout(state.height, state.round, Step.PRECOMMIT, duration)]  # L48


def rule_l49(state: EngineState) -> Result | None:
    """L49: proposal for v in any round r + 2f+1 precommits for v in r, valid(v), undecided: decide."""
    if state.decision is not None:
        return None
    for r, prop in sorted(state.proposals.items()):
        v = prop.vote.block_hash
        if state.verdicts.get(v) is not True:  # L50
            continue
        if state.validators.has_quorum(state.round_votes(r, STEP_PRECOMMIT).power_for(v)):
            return decide(state, r, v)  # L51 (L52-L54 happen in the shell's StartHeight)
    return None


def rule_l55(state: EngineState) -> Result | None:
    """L55: f+1 messages (by power) from a round > round_p: skip to that round."""
    rounds = {r for (r, _) in state.votes if r > state.round} | {r for r in state.proposals if r > state.round}
    for r in sorted(rounds, reverse=True):
        senders = set(state.round_votes(r, STEP_PREVOTE).votes) | set(state.round_votes(r, STEP_PRECOMMIT).votes)
        if r in state.proposals:
            senders.add(state.proposals[r].signer)
        if state.validators.has_one_third(sum(state.validators.power_of(s) for s in senders)):
            return start_round(state, r)  # L56
    return None


RULES: tuple[Rule, ...] = (rule_l49, rule_l55, rule_l22, rule_l28, rule_l36, rule_l44, rule_l34, rule_l47)


def run_rules(state: EngineState) -> Result:
    """Fire enabled rules until none is; each firing changes step, round, a fired flag or the decision."""
    outputs: list[Output] = []
    for _ in range(MAX_RULE_ITERATIONS):
        if state.step == Step.COMMIT:
            return state, outputs
        for rule in RULES:
            fired = rule(state)
            if fired is not None:
                state, more = fired
                outputs.extend(more)
                break
        else:
            return state, outputs
    raise EngineError(f"upon-rules did not settle after {MAX_RULE_ITERATIONS} firings at height {state.height}")
