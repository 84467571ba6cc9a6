"""Engine transitions (Algorithm 1 line by line), proposer rotation and quorum math."""

from __future__ import annotations

from collections import Counter

import pytest

from consensus import engine as eng
from consensus.cluster import validator_key
from consensus.engine.validators import ProposerRotation, Validator, ValidatorSet, increment_priorities
from consensus.votes import NIL_HASH, address_of, sign_vote

CHAIN = 7
KEYS = [validator_key(i) for i in range(4)]
ADDRS = [address_of(k) for k in KEYS]
VSET = ValidatorSet.from_powers({a: 1 for a in ADDRS})
V = b"\x11" * 32
W = b"\x22" * 32


def key_of(addr: bytes) -> bytes:
    return KEYS[ADDRS.index(addr)]


def started(me: bytes | None, height: int = 1):
    return eng.apply(eng.initial_state(CHAIN, me), eng.StartHeight(height, VSET))


def a_non_proposer(round_: int = 0, height: int = 1) -> bytes:
    rot = ProposerRotation.at_height(VSET, height)
    return next(a for a in ADDRS if a != rot.proposer(round_))


def proposal(state, round_: int, block_hash: bytes, valid_round: int = -1):
    proposer = state.proposer(round_)
    vote = sign_vote(key_of(proposer), CHAIN, state.height, round_, 0, block_hash)
    return eng.ProposalInput(vote, valid_round, proposer)


def vote_input(signer: bytes, height: int, round_: int, step: int, block_hash: bytes):
    return eng.VoteInput(sign_vote(key_of(signer), CHAIN, height, round_, step, block_hash), signer)


def feed(state, *inputs):
    outputs = []
    for inp in inputs:
        state, outs = eng.apply(state, inp)
        outputs.extend(outs)
    return state, outputs


def of_type(outputs, kind):
    return [o for o in outputs if isinstance(o, kind)]


def votes_from(signers, height, round_, step, block_hash):
    return [vote_input(s, height, round_, step, block_hash) for s in signers]


def others(me: bytes) -> list[bytes]:
    return [a for a in ADDRS if a != me]


# ---- quorum math ----


def test_quorum_is_more_than_two_thirds_of_power():
    equal = VSET
    assert equal.has_quorum(3) and not equal.has_quorum(2)
    assert equal.has_one_third(2) and not equal.has_one_third(1)
    unequal = ValidatorSet.from_powers({ADDRS[0]: 50, ADDRS[1]: 20, ADDRS[2]: 20, ADDRS[3]: 10})
    assert not unequal.has_quorum(50 + 10 + 6)  # 66 of 100 is not > 2/3
    assert unequal.has_quorum(50 + 20)
    assert unequal.has_one_third(50) and not unequal.has_one_third(30) and unequal.has_one_third(34)


def test_validator_set_rejects_bad_members():
    with pytest.raises(eng.InvalidValidatorSet):
        ValidatorSet(())
    with pytest.raises(eng.InvalidValidatorSet):
        ValidatorSet((Validator(ADDRS[0], 1), Validator(ADDRS[0], 2)))
    with pytest.raises(eng.InvalidValidatorSet):
        ValidatorSet((Validator(ADDRS[0], 0),))


# ---- proposer rotation ----


def test_equal_power_rotation_is_round_robin_by_address():
    rot = ProposerRotation.at_height(VSET, 1)
    picks = [rot.proposer(r) for r in range(8)]
    assert picks[:4] == sorted(ADDRS)  # ties go to the smaller address
    assert picks[4:] == picks[:4]


def test_weighted_rotation_gives_slots_proportional_to_power():
    vset = ValidatorSet.from_powers({ADDRS[0]: 1, ADDRS[1]: 2, ADDRS[2]: 3, ADDRS[3]: 4})
    rot = ProposerRotation.at_height(vset, 1)
    heights = [rot]
    for _ in range(99):
        heights.append(heights[-1].next_height(vset))
    counts = Counter(r.proposer(0) for r in heights)
    assert counts == {ADDRS[0]: 10, ADDRS[1]: 20, ADDRS[2]: 30, ADDRS[3]: 40}, counts


def test_rotation_walk_matches_step_by_step_and_is_deterministic():
    vset = ValidatorSet.from_powers({ADDRS[0]: 5, ADDRS[1]: 1, ADDRS[2]: 1, ADDRS[3]: 100})
    step = ProposerRotation.at_height(vset, 1)
    for _ in range(2, 30):
        step = step.next_height(vset)
    walked = ProposerRotation.at_height(vset, 29)
    assert walked == step
    assert [walked.proposer(r) for r in range(5)] == [step.proposer(r) for r in range(5)]


def test_priorities_are_rescaled_and_centered_like_cometbft():
    vset = ValidatorSet.from_powers({ADDRS[0]: 1, ADDRS[1]: 1000})
    prios, _ = increment_priorities(vset, (10_000, -10_000), 1)
    assert max(prios) - min(prios) <= 2 * vset.total_power + vset.total_power  # window then one step
    assert abs(sum(prios)) < len(prios)


# ---- transitions ----


def test_start_round_proposer_requests_value_others_schedule_timeout():
    proposer = ProposerRotation.at_height(VSET, 1).proposer(0)
    _, outs = started(proposer)
    assert of_type(outs, eng.RequestValue) == [eng.RequestValue(1, 0)]  # L18
    _, outs = started(a_non_proposer())
    assert not of_type(outs, eng.RequestValue)
    (timeout,) = of_type(outs, eng.ScheduleTimeout)  # L21
    assert (timeout.step, timeout.round) == (eng.Step.PROPOSE, 0)


def test_value_ready_broadcasts_proposal():
    proposer = ProposerRotation.at_height(VSET, 1).proposer(0)
    state, _ = started(proposer)
    state, outs = feed(state, eng.ValueReady(1, 0, V))
    assert outs == [eng.BroadcastProposal(1, 0, V, -1)]  # L19


def test_valid_proposal_is_prevoted_invalid_one_gets_nil():
    me = a_non_proposer()
    state, _ = started(me)
    state, outs = feed(state, proposal(state, 0, V))
    assert of_type(outs, eng.ValidateBlock) == [eng.ValidateBlock(1, 0, V)]
    assert not of_type(outs, eng.BroadcastVote)  # waits for valid(v)
    s1, outs = feed(state, eng.BlockVerdict(1, V, True))
    assert of_type(outs, eng.BroadcastVote) == [eng.BroadcastVote(1, 0, eng.Step.PREVOTE, V)]  # L24
    assert s1.step == eng.Step.PREVOTE  # L27
    _, outs = feed(state, eng.BlockVerdict(1, V, False))
    assert of_type(outs, eng.BroadcastVote) == [eng.BroadcastVote(1, 0, eng.Step.PREVOTE, NIL_HASH)]  # L26


def test_proposal_from_non_proposer_is_dropped():
    me = a_non_proposer()
    state, _ = started(me)
    vote = sign_vote(key_of(me), CHAIN, 1, 0, 0, V)
    after, outs = feed(state, eng.ProposalInput(vote, -1, me))
    assert outs == [eng.Dropped("not_proposer", f"0x{me.hex()} is not proposer of round 0")]
    assert after == state


def test_propose_timeout_prevotes_nil():
    state, _ = started(a_non_proposer())
    state, outs = feed(state, eng.TimeoutInput(1, 0, eng.Step.PROPOSE))
    assert outs == [eng.BroadcastVote(1, 0, eng.Step.PREVOTE, NIL_HASH)]  # L59
    _, outs = feed(state, eng.TimeoutInput(1, 0, eng.Step.PROPOSE))  # stale: step is prevote now
    assert outs == []


def _prevoted(me: bytes):
    state, _ = started(me)
    state, _ = feed(state, proposal(state, 0, V), eng.BlockVerdict(1, V, True))
    return state


def test_prevote_quorum_locks_and_precommits():
    me = a_non_proposer()
    state = _prevoted(me)
    state, outs = feed(state, *votes_from(others(me)[:2], 1, 0, 1, V))
    assert not of_type(outs, eng.BroadcastVote)  # 2 of 4 is no quorum
    state, outs = feed(state, vote_input(me, 1, 0, 1, V))
    assert eng.BroadcastVote(1, 0, eng.Step.PRECOMMIT, V) in outs  # L40
    assert (state.locked_value, state.locked_round) == (V, 0)  # L38-L39
    assert (state.valid_value, state.valid_round) == (V, 0)  # L42-L43
    assert state.step == eng.Step.PRECOMMIT


def test_mixed_prevote_quorum_schedules_prevote_timeout_then_precommits_nil():
    me = a_non_proposer()
    state = _prevoted(me)
    prevotes = [vote_input(me, 1, 0, 1, V)] + votes_from(others(me)[:2], 1, 0, 1, NIL_HASH)
    state, outs = feed(state, *prevotes)
    (timeout,) = of_type(outs, eng.ScheduleTimeout)  # L34-L35
    assert timeout.step == eng.Step.PREVOTE
    state, outs = feed(state, eng.TimeoutInput(1, 0, eng.Step.PREVOTE))
    assert outs == [eng.BroadcastVote(1, 0, eng.Step.PRECOMMIT, NIL_HASH)]  # L63
    assert state.locked_value is None


def test_nil_prevote_quorum_precommits_nil():
    me = a_non_proposer()
    state = _prevoted(me)
    state, outs = feed(state, *votes_from(others(me), 1, 0, 1, NIL_HASH))
    assert eng.BroadcastVote(1, 0, eng.Step.PRECOMMIT, NIL_HASH) in outs  # L45


def test_precommit_quorum_commits_with_certificate_votes():
    me = a_non_proposer()
    state = _prevoted(me)
    state, outs = feed(state, *votes_from(ADDRS[:3], 1, 0, 2, V))
    (commit,) = of_type(outs, eng.CommitBlock)  # L49-L51
    assert (commit.height, commit.round, commit.block_hash) == (1, 0, V)
    assert len(commit.precommits) == 3 and all(p.block_hash == V for p in commit.precommits)
    assert state.step == eng.Step.COMMIT and state.decision == V
    state, outs = feed(state, eng.StartHeight(2, VSET))  # L52-L54
    assert (state.height, state.round, state.locked_round, state.valid_value) == (2, 0, -1, None)


def test_precommit_quorum_in_any_round_schedules_timeout_and_next_round():
    me = a_non_proposer()
    state = _prevoted(me)
    state, outs = feed(state, *votes_from(ADDRS[:3], 1, 0, 2, NIL_HASH))
    assert any(o.step == eng.Step.PRECOMMIT for o in of_type(outs, eng.ScheduleTimeout))  # L47-L48
    state, outs = feed(state, eng.TimeoutInput(1, 0, eng.Step.PRECOMMIT))
    assert (state.round, state.step) == (1, eng.Step.PROPOSE)  # L65-L67


def _locked_on_v_then_round_1(me: bytes):
    state = _prevoted(me)
    state, _ = feed(state, *votes_from(ADDRS[:3], 1, 0, 1, V))  # lock V in round 0
    state, _ = feed(state, *votes_from(ADDRS[:3], 1, 0, 2, NIL_HASH))  # others precommit nil
    state, _ = feed(state, eng.TimeoutInput(1, 0, eng.Step.PRECOMMIT))
    assert state.round == 1 and state.locked_value == V
    return state


def test_locked_validator_prevotes_nil_for_a_different_new_value():
    me = next(a for a in ADDRS if a not in (ProposerRotation.at_height(VSET, 1).proposer(0),
                                            ProposerRotation.at_height(VSET, 1).proposer(1)))
    state = _locked_on_v_then_round_1(me)
    state, outs = feed(state, proposal(state, 1, W), eng.BlockVerdict(1, W, True))
    assert eng.BroadcastVote(1, 1, eng.Step.PREVOTE, NIL_HASH) in outs  # L23 lock blocks W


def test_locked_validator_prevotes_reproposed_value_with_valid_round():
    me = next(a for a in ADDRS if a not in (ProposerRotation.at_height(VSET, 1).proposer(0),
                                            ProposerRotation.at_height(VSET, 1).proposer(1)))
    state = _locked_on_v_then_round_1(me)
    state, outs = feed(state, proposal(state, 1, V, valid_round=0))
    assert eng.BroadcastVote(1, 1, eng.Step.PREVOTE, V) in outs  # L28-L30


def test_valid_round_proposal_without_prevote_quorum_waits_for_timeout():
    me = a_non_proposer(1)
    state, _ = started(me)
    state, _ = feed(state, eng.TimeoutInput(1, 0, eng.Step.PROPOSE))
    state, _ = feed(state, *votes_from(ADDRS[:3], 1, 0, 2, NIL_HASH), eng.TimeoutInput(1, 0, eng.Step.PRECOMMIT))
    state, outs = feed(state, proposal(state, 1, W, valid_round=0), eng.BlockVerdict(1, W, True))
    assert not of_type(outs, eng.BroadcastVote)  # L28 needs 2f+1 prevotes for W in round 0


def test_f_plus_one_messages_from_a_later_round_skip_ahead():
    me = a_non_proposer()
    state, _ = started(me)
    state, outs = feed(state, vote_input(others(me)[0], 1, 3, 1, NIL_HASH))
    assert state.round == 0  # 1 of 4 is not > 1/3
    state, outs = feed(state, vote_input(others(me)[1], 1, 3, 2, NIL_HASH))
    assert state.round == 3 and state.step == eng.Step.PROPOSE  # L55-L56


def test_double_vote_yields_evidence_and_first_vote_stays():
    me = a_non_proposer()
    state = _prevoted(me)
    byz = others(me)[0]
    state, _ = feed(state, vote_input(byz, 1, 0, 1, V))
    state, outs = feed(state, vote_input(byz, 1, 0, 1, W))
    (found,) = of_type(outs, eng.EvidenceFound)
    assert found.evidence.validator == byz
    assert {found.evidence.first.block_hash, found.evidence.second.block_hash} == {V, W}
    assert state.round_votes(0, 1).votes[byz].block_hash == V


def test_double_proposal_yields_evidence():
    state, _ = started(a_non_proposer())
    state, _ = feed(state, proposal(state, 0, V))
    state, outs = feed(state, proposal(state, 0, W))
    assert len(of_type(outs, eng.EvidenceFound)) == 1
    assert state.proposals[0].vote.block_hash == V


def test_bad_votes_are_dropped_without_state_change():
    me = a_non_proposer()
    state, _ = started(me)
    outsider = address_of(validator_key(99))
    cases = {
        "non_validator": eng.VoteInput(sign_vote(validator_key(99), CHAIN, 1, 0, 1, V), outsider),
        "wrong_height": vote_input(others(me)[0], 5, 0, 1, V),
        "wrong_chain": eng.VoteInput(sign_vote(key_of(others(me)[0]), 8, 1, 0, 1, V), others(me)[0]),
        "round_out_of_range": vote_input(others(me)[0], 1, 10_000, 1, V),
    }
    for reason, inp in cases.items():
        after, outs = eng.apply(state, inp)
        assert [o.reason for o in outs] == [reason]
        assert after == state


def test_timeouts_grow_with_round():
    t = eng.TimeoutConfig()
    for step in (eng.Step.PROPOSE, eng.Step.PREVOTE, eng.Step.PRECOMMIT):
        assert t.duration(step, 5) > t.duration(step, 1) > t.duration(step, 0) > 0


def test_observer_follows_without_voting():
    state, outs = started(None)
    state, outs = feed(state, proposal(state, 0, V), eng.BlockVerdict(1, V, True), *votes_from(ADDRS[:3], 1, 0, 2, V))
    assert not of_type(outs, eng.BroadcastVote)
    assert len(of_type(outs, eng.CommitBlock)) == 1


def test_restarted_validator_resumes_its_lock_and_prevotes_nil_for_another_value():
    me = a_non_proposer(0)
    state = eng.apply(eng.initial_state(CHAIN, me), eng.StartHeight(1, VSET, (V, 0)))[0]
    assert (state.locked_value, state.locked_round) == (V, 0)
    state, outs = feed(state, proposal(state, 0, W), eng.BlockVerdict(1, W, True))
    assert eng.BroadcastVote(1, 0, eng.Step.PREVOTE, NIL_HASH) in outs  # without the lock: W
    fresh, _ = started(me)
    _, outs = feed(fresh, proposal(fresh, 0, W), eng.BlockVerdict(1, W, True))
    assert eng.BroadcastVote(1, 0, eng.Step.PREVOTE, W) in outs


def test_resumed_lock_does_not_leak_into_the_next_height():
    me = a_non_proposer(0)
    state = eng.apply(eng.initial_state(CHAIN, me), eng.StartHeight(1, VSET, (V, 0)))[0]
    state = eng.apply(state, eng.StartHeight(2, VSET))[0]
    assert (state.locked_value, state.locked_round) == (None, -1)
