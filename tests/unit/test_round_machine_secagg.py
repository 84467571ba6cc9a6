"""The round machine with secure aggregation on: share key, key posts (this round and the next), training
only inside the key set, a re-mask when the key set grew under a commit, reveals until the deadline."""

from __future__ import annotations

from swarmnode.node.machine import (
    CommitCall,
    CommitInfo,
    MaskKeysCall,
    Report,
    RevealCall,
    SendTx,
    ShareKeyCall,
    Train,
    Trained,
    TxIncluded,
    TxSubmitted,
)
from tests.unit.test_round_machine import COMMITS, G0, Run


def sa(**kw: object) -> dict[str, object]:
    return {"secagg": True, "share_key_set": True, **kw}


def test_without_a_share_key_the_node_sets_one_and_does_not_train() -> None:
    run = Run()
    acts = run.block(**sa(share_key_set=False))
    assert SendTx("sharekey", ShareKeyCall(0)) in acts
    assert not [a for a in acts if isinstance(a, Train)]


def test_keys_are_posted_before_training_and_training_waits_for_them() -> None:
    run = Run()
    acts = run.block(**sa())
    assert SendTx("keys", MaskKeysCall(0)) in acts
    assert not [a for a in acts if isinstance(a, Train)], "no training outside the round's key set"
    acts = run.block(**sa(keys_posted=True, key_count=3))
    assert Train(0, G0, 1) in acts


def test_a_round_whose_key_set_is_frozen_without_us_makes_us_join_the_next() -> None:
    run = Run()
    acts = run.block(**sa(commits=COMMITS[1:], key_count=2))
    assert SendTx("keys", MaskKeysCall(0)) not in acts  # the first commit froze it: the contract would refuse
    assert SendTx("keys", MaskKeysCall(1)) in acts
    assert not [a for a in acts if isinstance(a, Train)]


def test_after_committing_the_next_rounds_keys_go_out_once() -> None:
    run = Run()
    acts = run.block(**sa(keys_posted=True, committed=True, commits=COMMITS, key_count=2))
    assert SendTx("keys", MaskKeysCall(1)) in acts
    run.done(("keys", 1), TxSubmitted(b"\x01" * 32))
    acts = run.block(**sa(keys_posted=True, committed=True, commits=COMMITS, key_count=2, height=4))
    assert not [a for a in acts if a == SendTx("keys", MaskKeysCall(1))]
    acts = run.block(**sa(keys_posted=True, committed=True, commits=COMMITS, key_count=2, next_keys_posted=True,
                          height=5))
    assert ("keys", 1) in run.state.done


def test_a_commit_masked_over_a_smaller_key_set_is_masked_again() -> None:
    run = Run()
    run.block(**sa(keys_posted=True, key_count=2))
    call = CommitCall(0, b"\x10" * 32, 270, 1, 1, key_count=2)
    acts = run.done(("train", 0), Trained(call))
    assert SendTx("commit", call) in acts
    run.done(("commit", 0), TxSubmitted(b"\x02" * 32))
    run.block(**sa(keys_posted=True, key_count=3, commits=(CommitInfo(b"\xbb" * 20, b"\x11" * 32, 5),)))
    acts = run.feed(TxIncluded(("commit", 0), False, "commitUpdate: wrong key count", run.now))
    assert Report("remask", 0, (("masked_over", 2), ("key_set", 3))) in acts
    assert Train(0, G0, 1) in acts, "masked again over the set as it is now"


def test_a_reverted_commit_for_another_reason_is_not_retried() -> None:
    run = Run()
    run.block(**sa(keys_posted=True, key_count=2))
    call = CommitCall(0, b"\x10" * 32, 270, 1, 1, key_count=2)
    run.done(("train", 0), Trained(call))
    run.done(("commit", 0), TxSubmitted(b"\x02" * 32))
    acts = run.feed(TxIncluded(("commit", 0), False, "commitUpdate: commit window closed", run.now))
    assert [a for a in acts if isinstance(a, Report)][0].event == "tx_reverted"
    assert not [a for a in acts if isinstance(a, Train)]


def test_reveals_go_out_while_the_reveal_window_is_open_only() -> None:
    run = Run()
    closed = sa(keys_posted=True, committed=True, next_keys_posted=True, commits=COMMITS, key_count=2,
                window_open=False)
    acts = run.block(**closed, reveal_open=True)
    assert SendTx("reveal", RevealCall(0)) in acts
    run2 = Run()
    acts = run2.block(**closed, reveal_open=False)
    assert SendTx("reveal", RevealCall(0)) not in acts
    run3 = Run()
    acts = run3.block(**closed, reveal_open=True, revealed=True)
    assert SendTx("reveal", RevealCall(0)) not in acts


def test_secagg_off_changes_nothing() -> None:
    run = Run()
    acts = run.block()
    assert Train(0, G0, 1) in acts
    assert not [a for a in acts if isinstance(a, SendTx)]


def test_a_skipped_round_is_never_revealed() -> None:
    run = Run()
    acts = run.block(**sa(keys_posted=True, committed=True, next_keys_posted=True, commits=COMMITS[:1], key_count=2,
                          window_open=False, skipped=True, reveal_open=True))
    assert SendTx("reveal", RevealCall(0)) not in acts
