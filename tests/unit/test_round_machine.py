"""The round state machine (pure): event sequences in, actions out, every failure path included.

Scenario tests in the style of the consensus engine's: each feeds `step` a sequence of events and checks
the actions that come out and the state left behind. Time is an argument: no clock, no sleeps.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from swarmnode.node import machine as m
from swarmnode.node.machine import (
    ActionDone,
    ActionFailed,
    Aggregate,
    Aggregated,
    AttestCall,
    BlockObserved,
    CommitCall,
    CommitInfo,
    DeadlinePassed,
    FetchModel,
    Finished,
    MachineConfig,
    ModelReady,
    Prune,
    RejoinCall,
    Report,
    RoundFinalized,
    RoundObservation,
    Score,
    SendTx,
    Train,
    Trained,
    TxIncluded,
    TxLost,
    TxSubmitted,
)

G0, G1, G2, OTHER = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x0f" * 32
ME, PEER = b"\xaa" * 20, b"\xbb" * 20
COMMITS = (CommitInfo(ME, b"\x10" * 32, 270), CommitInfo(PEER, b"\x11" * 32, 270))
CALL0 = CommitCall(0, b"\x10" * 32, 270, 500_000, 900_000)
CFG = MachineConfig(num_clients=4, retry_base=0.5, retry_cap=4.0, max_train_attempts=3)


def obs(**kw: object) -> RoundObservation:
    base = RoundObservation(height=3, head_time=1003, round=0, base_hash=G0, window_open=True, skipped=False,
                            commits=(), close_time=1060, extended=False, participant_count=4, expected_count=4,
                            participant_index=1, active=True, expected=True, dropped=False, committed=False,
                            attested=False, validator=True)
    return replace(base, **kw)  # type: ignore[arg-type]


class Run:
    """Feeds events to the machine, keeping the state and every action that came out."""

    def __init__(self, config: MachineConfig = CFG) -> None:
        self.state = m.initial_state(config)
        self.now = 0.0
        self.log: list[m.Action] = []

    def feed(self, event: m.Event) -> list[m.Action]:
        self.state, actions = m.step(self.state, event)
        self.log += actions
        return actions

    def block(self, has_base: bool = True, **kw: object) -> list[m.Action]:
        return self.feed(BlockObserved(obs(**kw), has_base, self.now))

    def done(self, key: m.Key, result: m.Result) -> list[m.Action]:
        return self.feed(ActionDone(key, result, self.now))

    def fail(self, key: m.Key, error: str = "boom", retry: bool = True) -> list[m.Action]:
        return self.feed(ActionFailed(key, error, retry, self.now))

    def tick(self, now: float) -> list[m.Action]:
        self.now = now
        return self.feed(DeadlinePassed(now))


# ---------------------------------------------------------------- step 1: the base model


def test_without_the_base_model_only_fetch_it_and_train_once_it_is_held() -> None:
    run = Run()
    assert run.block(has_base=False) == [FetchModel(0, G0)]
    assert run.block(has_base=False) == [], "one fetch at a time"
    assert run.done(("fetch", 0), ModelReady(G0)) == [Train(0, G0, 1)]


def test_a_fetched_model_that_is_not_the_base_does_not_count_as_the_base() -> None:
    run = Run()
    run.block(has_base=False)
    assert run.done(("fetch", 0), ModelReady(OTHER)) == []
    assert not run.state.has_base


def test_fetch_failures_are_retried_with_backoff_never_given_up() -> None:
    run = Run()
    run.block(has_base=False)
    delays = []
    for _ in range(6):
        assert run.fail(("fetch", 0), "no provider") == []
        due = run.state.next_wakeup()
        assert due is not None
        delays.append(due - run.now)
        assert run.tick(due - 0.01) == [], "not before the retry is due"
        assert run.tick(due) == [FetchModel(0, G0)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0], "doubling, capped at retry_cap"


def test_a_base_model_lost_after_it_was_fetched_is_fetched_again() -> None:
    """The store can lose the base after a successful fetch (a damaged file is quarantined): the next
    observation that says it is missing starts a fetch again instead of waiting for ever."""
    run = Run()
    run.block(has_base=False)
    assert run.done(("fetch", 0), ModelReady(G0)) == [Train(0, G0, 1)]
    run.fail(("train", 0), "DamagedModel: base unreadable")
    assert run.block(has_base=False) == [FetchModel(0, G0)]
    assert run.block(has_base=False) == [], "one fetch at a time"


# ---------------------------------------------------------------- step 2: train and commit


def test_train_then_commit_then_wait_for_inclusion() -> None:
    run = Run()
    assert run.block() == [Train(0, G0, 1)]
    assert run.block() == [], "training is running"
    assert run.done(("train", 0), Trained(CALL0)) == [SendTx("commit", CALL0)]
    assert run.done(("commit", 0), TxSubmitted(b"\x77" * 32)) == []
    assert run.block() == [], "a sent commit is waited for, never raced by a second copy"
    assert run.feed(TxIncluded(("commit", 0), True, "block 5", run.now)) == []
    assert run.block() == []
    assert run.block(committed=True) == []


def test_an_inclusion_reported_before_the_submission_leaves_nothing_waiting() -> None:
    run = Run()
    run.block()
    run.done(("train", 0), Trained(CALL0))
    assert run.feed(TxIncluded(("commit", 0), True, "block 5", run.now)) == []
    assert run.done(("commit", 0), TxSubmitted(b"\x77" * 32)) == []
    assert ("commit", 0) not in run.state.sent and run.state.status(("commit", 0)) == "done"


def test_a_lost_commit_is_sent_again_without_training_again() -> None:
    run = Run()
    run.block()
    run.done(("train", 0), Trained(CALL0))
    run.done(("commit", 0), TxSubmitted(b"\x77" * 32))
    # a wallet took the nonce: the sender reports the transaction lost
    assert run.feed(TxLost(("commit", 0), "nonce 5 used by another transaction", run.now)) == [
        SendTx("commit", CALL0)]
    assert Train(0, G0, 1) not in run.log[1:], "the update is kept, not retrained"


def test_a_commit_lost_after_the_window_closed_is_not_sent_again() -> None:
    run = Run()
    run.block()
    run.done(("train", 0), Trained(CALL0))
    run.done(("commit", 0), TxSubmitted(b"\x77" * 32))
    run.block(window_open=False, commits=COMMITS[1:])
    out = run.feed(TxLost(("commit", 0), "dropped from the pool", run.now))
    assert not any(isinstance(a, SendTx) and a.what == "commit" for a in out)


def test_the_chain_showing_our_commit_ends_the_commit_whatever_copy_got_in() -> None:
    run = Run()
    run.block()
    run.done(("train", 0), Trained(CALL0))
    run.done(("commit", 0), TxSubmitted(b"\x77" * 32))
    run.block(committed=True)
    assert run.feed(TxLost(("commit", 0), "replaced", run.now)) == []


def test_a_reverted_commit_is_reported_and_not_sent_again() -> None:
    run = Run()
    run.block()
    run.done(("train", 0), Trained(CALL0))
    run.done(("commit", 0), TxSubmitted(b"\x77" * 32))
    out = run.feed(TxIncluded(("commit", 0), False, "commitUpdate: commit window closed", run.now))
    assert out == [Report("tx_reverted", 0, (("what", "commit"), ("reason", "commitUpdate: commit window closed")))]
    assert run.block() == []


def test_a_rejected_submission_is_retried_after_backoff() -> None:
    run = Run()
    run.block()
    run.done(("train", 0), Trained(CALL0))
    assert run.fail(("commit", 0), "sender-limit") == []
    assert run.tick(0.5) == [SendTx("commit", CALL0)]


def test_training_gives_up_after_max_attempts_and_says_so() -> None:
    run = Run()
    run.block()
    for attempt in range(1, CFG.max_train_attempts):
        assert run.fail(("train", 0), "CUDA out of memory") == []
        assert run.tick(run.state.next_wakeup() or 0) == [Train(0, G0, 1)], f"attempt {attempt + 1}"
    out = run.fail(("train", 0), "CUDA out of memory")
    assert [a.event for a in out if isinstance(a, Report)] == ["gave_up"]
    assert run.tick(run.now + 100) == [] and run.block() == []


def test_a_failure_that_cannot_succeed_is_not_retried() -> None:
    run = Run()
    run.block()
    out = run.fail(("train", 0), "base model has the wrong shape", retry=False)
    assert out[0] == Report("gave_up", 0, (("action", "train"), ("attempts", 1),
                                           ("error", "base model has the wrong shape")))
    assert run.tick(60) == []


@pytest.mark.parametrize("who", [
    {"participant_index": None},  # not registered
    {"active": False},  # left
    {"participant_index": 4},  # no data partition (num_clients = 4)
    {"window_open": False},
    {"committed": True},
])
def test_no_training_without_a_reason_to(who: dict[str, object]) -> None:
    assert not any(isinstance(a, Train) for a in Run().block(**who))


def test_a_participant_dropped_from_the_expected_set_still_trains_to_come_back() -> None:
    assert Run().block(expected=False) == [Train(0, G0, 1)]


def test_a_dropped_participant_rejoins_once_and_keeps_training() -> None:
    run = Run()
    out = run.block(expected=False, dropped=True)
    assert out == [Train(0, G0, 1), SendTx("rejoin", RejoinCall(0))]
    run.done(("rejoin", 0), TxSubmitted(b"\x79" * 32))
    assert run.block(expected=False, dropped=True) == [], "one rejoin in flight at a time"
    run.feed(TxIncluded(("rejoin", 0), True, "block 9", run.now))
    assert run.block(expected=False, dropped=False) == []
    assert run.block(round=1, base_hash=G1, height=9, expected=True) == [Train(1, G1, 1)]


@pytest.mark.parametrize("who", [{"participant_index": None}, {"active": False}, {"participant_index": 4}])
def test_only_a_participant_that_can_contribute_rejoins(who: dict[str, object]) -> None:
    assert not any(isinstance(a, SendTx) for a in Run().block(dropped=True, **who))


def test_training_that_finishes_after_the_round_moved_on_is_not_committed() -> None:
    run = Run()
    run.block()
    run.block(round=1, base_hash=G1, height=9, has_base=False)
    assert run.done(("train", 0), Trained(CALL0)) == []
    assert all(not (isinstance(a, SendTx) and a.round == 0) for a in run.log)


# ---------------------------------------------------------------- step 4: aggregate and attest


def test_closed_window_aggregates_then_a_validator_attests_its_result() -> None:
    run = Run()
    assert run.block(window_open=False, commits=COMMITS) == [Aggregate(0, G0, COMMITS)]
    assert run.done(("aggregate", 0), Aggregated(G1)) == [SendTx("attest", AttestCall(0, G1))]
    run.done(("attest", 0), TxSubmitted(b"\x78" * 32))
    assert run.block(window_open=False, commits=COMMITS) == []
    assert run.block(window_open=False, commits=COMMITS, attested=True) == []


def test_a_follower_aggregates_but_never_attests() -> None:
    run = Run()
    run.block(window_open=False, commits=COMMITS, validator=False, participant_index=None)
    assert run.done(("aggregate", 0), Aggregated(G1)) == []


def test_a_skipped_round_aggregates_nothing() -> None:
    run = Run()
    assert run.block(window_open=False, skipped=True, commits=COMMITS[:1]) == [Aggregate(0, G0, ())]


def test_aggregation_failures_are_retried_until_the_updates_arrive() -> None:
    run = Run()
    run.block(window_open=False, commits=COMMITS)
    for _ in range(8):
        run.fail(("aggregate", 0), "update 0x11.. unavailable")
        assert run.tick(run.state.next_wakeup() or 0) == [Aggregate(0, G0, COMMITS)]
    assert run.done(("aggregate", 0), Aggregated(G1)) == [SendTx("attest", AttestCall(0, G1))]


def test_a_lost_attestation_is_sent_again_until_the_chain_has_it() -> None:
    run = Run()
    run.block(window_open=False, commits=COMMITS)
    run.done(("aggregate", 0), Aggregated(G1))
    run.done(("attest", 0), TxSubmitted(b"\x78" * 32))
    assert run.feed(TxLost(("attest", 0), "dropped from the pool", run.now)) == [SendTx("attest", AttestCall(0, G1))]


def test_an_attestation_reverted_while_the_round_is_open_goes_again_once_at_full_gas() -> None:
    run = Run()
    run.block(window_open=False, commits=COMMITS)
    run.done(("aggregate", 0), Aggregated(G1))
    run.done(("attest", 0), TxSubmitted(b"\x78" * 32))
    # out of the gas sized to the registry when it was sent (registrations got in before it): once more
    out = run.feed(TxIncluded(("attest", 0), False, "ran out of gas in block 7", run.now, out_of_gas=True))
    assert out == [Report("attest_full_gas", 0, (("reason", "ran out of gas in block 7"),)),
                   SendTx("attest", AttestCall(0, G1, full_gas=True))]
    run.done(("attest", 0), TxSubmitted(b"\x79" * 32))
    # a second one at full gas is not retried: it is reported
    out = run.feed(TxIncluded(("attest", 0), False, "ran out of gas in block 8", run.now, out_of_gas=True))
    assert out == [Report("tx_reverted", 0, (("what", "attest"), ("reason", "ran out of gas in block 8")))]
    assert run.block(window_open=False, commits=COMMITS) == []
    # the next round starts at the sized gas again
    run.block(round=1, base_hash=G1, height=12, window_open=False, commits=COMMITS)
    assert run.done(("aggregate", 1), Aggregated(G2)) == [SendTx("attest", AttestCall(1, G2))]
    assert run.state.full_gas == frozenset({0})


def test_an_attestation_reverted_for_another_reason_is_not_sent_again() -> None:
    run = Run()
    run.block(window_open=False, commits=COMMITS)
    run.done(("aggregate", 0), Aggregated(G1))
    run.done(("attest", 0), TxSubmitted(b"\x78" * 32))
    # e.g. late: the round finalized in a block newer than the observation (gas left over: not out of gas)
    out = run.feed(TxIncluded(("attest", 0), False, "reverted in block 7", run.now))
    assert out == [Report("tx_reverted", 0, (("what", "attest"), ("reason", "reverted in block 7")))]
    assert run.state.full_gas == frozenset()


def test_an_attestation_reverted_after_the_round_moved_on_is_late_not_retried() -> None:
    run = Run()
    run.block(window_open=False, commits=COMMITS)
    run.done(("aggregate", 0), Aggregated(G1))
    run.done(("attest", 0), TxSubmitted(b"\x78" * 32))
    run.block(round=1, base_hash=G1, height=9)  # the others' attestations finalized round 0 first
    out = run.feed(TxIncluded(("attest", 0), False, "attestAggregate: round already finalized", run.now,
                              out_of_gas=True))
    assert out == [Report("tx_reverted", 0, (("what", "attest"),
                                             ("reason", "attestAggregate: round already finalized")))]
    assert run.state.full_gas == frozenset()


# ---------------------------------------------------------------- step 5: finalization


def test_final_round_that_agrees_is_reported_scored_and_pruned_behind() -> None:
    run = Run()
    run.block(round=5, base_hash=G0, window_open=False, commits=COMMITS)
    run.done(("aggregate", 5), Aggregated(G1))
    out = run.feed(RoundFinalized(5, G1, run.now))
    assert out == [Report("round_final", 5, (("final", G1), ("agrees", True))), Score(5, G1), Prune(5)]


def test_mismatch_is_reported_and_the_next_round_fetches_the_final_model() -> None:
    run = Run()
    run.block(window_open=False, commits=COMMITS)
    run.done(("aggregate", 0), Aggregated(OTHER))
    out = run.feed(RoundFinalized(0, G1, run.now))
    assert out[0] == Report("MODEL_MISMATCH", 0, (("ours", OTHER), ("final", G1)))
    assert not any(isinstance(a, Score) for a in out), "our model is not the final one: nothing to score"
    assert run.block(round=1, base_hash=G1, height=9, has_base=False) == [FetchModel(1, G1)]


def test_an_aggregation_finishing_after_the_round_finalized_is_still_checked() -> None:
    run = Run()
    run.block(window_open=False, commits=COMMITS)
    assert run.feed(RoundFinalized(0, G1, run.now)) == [
        Report("round_final", 0, (("final", G1), ("agrees", None))), Prune(0)]
    run.block(round=1, base_hash=G1, height=9)
    assert run.done(("aggregate", 0), Aggregated(OTHER))[0].event == "MODEL_MISMATCH"


def test_housekeeping_results_and_failures_change_nothing() -> None:
    run = Run()
    run.block()
    before = run.state
    assert run.done(("score", 0), Finished()) == [] and run.fail(("prune", 3)) == []
    assert run.state.retries == before.retries and run.state.done == before.done


# ---------------------------------------------------------------- restarts, stale input, bounds


def test_a_restarted_node_works_out_what_is_left_from_the_chain_alone() -> None:
    # it had trained and sent its commit before the restart; the chain does not have it yet
    fresh = Run()
    assert fresh.block() == [Train(0, G0, 1)], "the update is gone with the process: train again"
    closed = Run()
    assert closed.block(window_open=False, commits=COMMITS, attested=False) == [Aggregate(0, G0, COMMITS)]


def test_an_older_observation_is_ignored() -> None:
    run = Run()
    run.block(round=3, base_hash=G2, has_base=False)
    assert run.block(round=2, base_hash=G1) == []
    assert run.state.obs is not None and run.state.obs.round == 3


def test_repeated_observations_start_nothing_twice() -> None:
    run = Run()
    first = run.block()
    assert first and all(run.block() == [] for _ in range(5))


def test_memory_stays_bounded_over_a_thousand_rounds_with_failures() -> None:
    run = Run()
    for r in range(1000):
        base = r.to_bytes(32, "big")
        run.now = float(r * 10)
        run.block(round=r, base_hash=base, height=3 * r, has_base=False)
        run.done(("fetch", r), ModelReady(base))
        run.fail(("train", r), "transient")
        run.tick(run.now + 1)
        call = CommitCall(r, base, 10, 0, 0)
        run.done(("train", r), Trained(call))
        run.done(("commit", r), TxSubmitted(base))
        run.block(round=r, base_hash=base, height=3 * r + 1, window_open=False, commits=COMMITS, committed=True)
        run.done(("aggregate", r), Aggregated(base))
        run.done(("attest", r), TxSubmitted(base))
        run.feed(RoundFinalized(r, base, run.now))
    s = run.state
    assert len(s.aggregates) == m.KEEP_ROUNDS and len(s.finals) == m.KEEP_ROUNDS
    assert len(s.done) <= 12 and len(s.sent) <= 4 and len(s.retries) <= 4 and len(s.trained) <= 2
    assert sum(isinstance(a, Report) and a.event == "round_final" for a in run.log) == 1000
