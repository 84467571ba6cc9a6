"""SwarmRounds' privacy ledger and secure-aggregation key sets, on a real py-evm chain (both sides of every
bound: the budget, the key-set freeze, the key count, the reveal window)."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from tests.unit.test_contracts import (
    GENESIS_TIME,
    K0,
    K1,
    K2,
    OUTSIDER_KEY,
    ROUNDS,
    WINDOW,
    attest,
    commit,
    make_chain,
    ok,
    reverts,
    round_info,
    with_params,
)

BUDGET = 3_000_000  # 3.0 epsilon
REVEAL_S = 20


def dp_chain():
    return make_chain(with_params(epsilon_budget=BUDGET, privacy_delta=10**13))


def secagg_chain(**extra):
    return make_chain(with_params(**{"secure_aggregation": True, "reveal_window_s": REVEAL_S, "min_participants": 2,
                                     **extra}))


def test_without_a_budget_commits_report_no_epsilon():
    evm = make_chain()
    assert evm.call(ROUNDS, "epsilonBudget") == 0
    reverts(commit(evm, K0, epsilon=1), "commitUpdate: epsilon, no budget")
    ok(commit(evm, K0, epsilon=0))
    assert evm.call(ROUNDS, "epsilonSpent", K0.public_key.to_canonical_address()) == 0


def test_the_budget_refuses_a_spend_beyond_it_and_takes_one_at_it():
    evm = dp_chain()
    me = K0.public_key.to_canonical_address()
    assert evm.call(ROUNDS, "epsilonBudget") == BUDGET
    reverts(commit(evm, K0, epsilon=0), "commitUpdate: epsilon not grown")
    reverts(commit(evm, K0, epsilon=BUDGET + 1), "commitUpdate: budget exhausted")
    result = ok(commit(evm, K0, epsilon=BUDGET))
    assert result.events_named("UpdateCommitted")[0]["epsilonSpent"] == BUDGET
    assert (evm.call(ROUNDS, "epsilonSpent", me), evm.call(ROUNDS, "dpReleases", me)) == (BUDGET, 1)
    assert evm.call(ROUNDS, "getCommit", 0, 0)[-1] == BUDGET


def test_epsilon_must_grow_with_every_commit():
    evm = dp_chain()
    me = K0.public_key.to_canonical_address()
    ok(commit(evm, K0, epsilon=1_000_000))
    ok(commit(evm, K1, epsilon=1_000_000))  # budgets are per participant
    close = round_info(evm)["closeTime"]
    for i, k in enumerate((K0, K1, K2)):
        ok(attest(evm, k, model_hash=keccak(b"m0"), timestamp=close + i))
    assert evm.call(ROUNDS, "currentRound") == 1
    reverts(commit(evm, K0, round_=1, epsilon=1_000_000), "commitUpdate: epsilon not grown")
    ok(commit(evm, K0, round_=1, epsilon=1_000_001))
    assert (evm.call(ROUNDS, "epsilonSpent", me), evm.call(ROUNDS, "dpReleases", me)) == (1_000_001, 2)


# ---------------------------------------------------------------- secure aggregation

MASK = [keccak(bytes([i])) for i in range(4)]
SEED = [keccak(b"seed" + bytes([i])) for i in range(4)]
BUNDLE = b"\x01" * 300


def post(evm, key, round_=0, i=0, bundle=BUNDLE, timestamp=None):
    return evm.transact(key, ROUNDS, "postMaskKeys", round_, MASK[i], SEED[i], bundle, timestamp=timestamp)


def reveal(evm, key, round_=0, shares=b"\x02" * 100, timestamp=None):
    return evm.transact(key, ROUNDS, "revealShares", round_, shares, timestamp=timestamp)


def test_secagg_calls_are_refused_when_it_is_off():
    evm = make_chain()
    reverts(evm.transact(K0, ROUNDS, "setShareKey", MASK[0]), "setShareKey: secagg off")
    reverts(post(evm, K0), "postMaskKeys: secagg off")
    reverts(reveal(evm, K0), "revealShares: secagg off")
    reverts(commit(evm, K0, key_count=1), "commitUpdate: keyCount not 0")


def test_a_key_set_is_built_then_frozen_by_the_first_commit():
    evm = secagg_chain()
    reverts(post(evm, K0), "postMaskKeys: no share key set")
    reverts(evm.transact(OUTSIDER_KEY, ROUNDS, "setShareKey", MASK[0]), "setShareKey: not registered")
    reverts(evm.transact(K0, ROUNDS, "setShareKey", b"\x00" * 32), "setShareKey: empty key")
    for k in (K0, K1):
        ok(evm.transact(k, ROUNDS, "setShareKey", keccak(k.to_bytes())))
    reverts(post(evm, K0, round_=2), "postMaskKeys: wrong round")
    reverts(post(evm, K0, bundle=b""), "postMaskKeys: empty bundle")
    reverts(commit(evm, K0, key_count=0), "commitUpdate: no mask keys")
    ok(post(evm, K0, i=0))
    reverts(post(evm, K0, i=0), "postMaskKeys: already posted")
    ok(post(evm, K0, round_=1, i=2))  # the next round's set may be built during this one
    reverts(commit(evm, K0, key_count=2), "commitUpdate: wrong key count")
    ok(post(evm, K1, i=1))
    reverts(commit(evm, K0, key_count=1), "commitUpdate: wrong key count")  # masked before K1's key came
    ok(commit(evm, K0, key_count=2))
    reverts(post(evm, K1, i=3), "postMaskKeys: key set frozen")
    keys = evm.call(ROUNDS, "getMaskKeys", 0)
    assert [(k[1], k[2], k[3], k[4]) for k in keys] == [(0, MASK[0], SEED[0], keccak(BUNDLE)),
                                                        (1, MASK[1], SEED[1], keccak(BUNDLE))]
    assert len(evm.call(ROUNDS, "getMaskKeys", 1)) == 1


def test_the_first_commit_freezes_the_set_for_late_posters():
    evm = secagg_chain()
    for k in (K0, K1):
        ok(evm.transact(k, ROUNDS, "setShareKey", keccak(k.to_bytes())))
    ok(post(evm, K0))
    ok(commit(evm, K0, key_count=1))
    reverts(post(evm, K1, i=1), "postMaskKeys: key set frozen")


def test_reveals_are_taken_after_the_window_until_the_deadline():
    evm = secagg_chain(straggler_grace_pct=0)
    for k in (K0, K1):
        ok(evm.transact(k, ROUNDS, "setShareKey", keccak(k.to_bytes())))
    reverts(evm.transact(K2, ROUNDS, "setShareKey", MASK[2]), "setShareKey: not registered")  # a validator only
    ok(post(evm, K0, i=0))
    ok(post(evm, K1, i=1))
    ok(commit(evm, K0, key_count=2))
    reverts(reveal(evm, K0), "revealShares: window open")  # one commit, min 2: the window is open
    t = GENESIS_TIME + WINDOW - 5  # the second commit, before the deadline, closes the window now
    ok(commit(evm, K1, key_count=2, timestamp=t))
    close = t
    assert evm.call(ROUNDS, "revealDeadline", 0) == close + REVEAL_S
    reverts(reveal(evm, K0, shares=b"", timestamp=t + 1), "revealShares: empty shares")
    reverts(reveal(evm, K0, round_=1, timestamp=t + 2), "revealShares: wrong round")
    ok(reveal(evm, K0, timestamp=t + 3))
    reverts(reveal(evm, K0, timestamp=t + 4), "revealShares: already revealed")
    reverts(reveal(evm, K2, timestamp=t + 5), "revealShares: not registered")
    ok(reveal(evm, K1, timestamp=close + REVEAL_S - 1))  # the last second of the reveal window
    got = evm.call(ROUNDS, "getReveals", 0)
    assert [(r[1], r[2]) for r in got] == [(0, keccak(b"\x02" * 100)), (1, keccak(b"\x02" * 100))]


def test_nothing_is_revealed_at_the_deadline():
    evm = secagg_chain(straggler_grace_pct=0)
    for k in (K0, K1):
        ok(evm.transact(k, ROUNDS, "setShareKey", keccak(k.to_bytes())))
        ok(post(evm, k, i=0 if k is K0 else 1))
    ok(commit(evm, K0, key_count=2))
    t = GENESIS_TIME + 9
    ok(commit(evm, K1, key_count=2, timestamp=t))  # both expected committed: closes early at t
    reverts(reveal(evm, K1, timestamp=t + REVEAL_S), "revealShares: too late")


def test_a_round_below_min_participants_is_never_revealed():
    evm = secagg_chain(min_participants=2, skip_under_min=True)
    for k in (K0, K1):
        ok(evm.transact(k, ROUNDS, "setShareKey", keccak(k.to_bytes())))
        ok(post(evm, k, i=0 if k is K0 else 1))
    first = ok(commit(evm, K0, key_count=2))
    close = first.events_named("WindowRestarted")[0]["closeTime"]  # secagg: a window from the first commit
    reverts(reveal(evm, K1, timestamp=close), "revealShares: too few commits")  # skipped: the "sum" is K0's update


def test_a_share_key_is_set_once():
    evm = secagg_chain()
    ok(evm.transact(K0, ROUNDS, "setShareKey", MASK[0]))
    reverts(evm.transact(K0, ROUNDS, "setShareKey", MASK[1]), "setShareKey: already set")
    assert evm.call(ROUNDS, "shareKeyOf", K0.public_key.to_canonical_address()) == MASK[0]


def test_an_early_close_starts_the_reveal_window_at_once():
    evm = secagg_chain()
    for k in (K0, K1):
        ok(evm.transact(k, ROUNDS, "setShareKey", keccak(k.to_bytes())))
        ok(post(evm, k, i=0 if k is K0 else 1))
    ok(commit(evm, K0, key_count=2))
    t = GENESIS_TIME + 7
    last = ok(commit(evm, K1, key_count=2, timestamp=t))  # both expected committed: closes early
    assert last.events_named("WindowClosedEarly")
    assert evm.call(ROUNDS, "revealDeadline", 0) == t + REVEAL_S
    ok(reveal(evm, K1, timestamp=t + REVEAL_S - 1))
    reverts(reveal(evm, K0, timestamp=t + REVEAL_S), "revealShares: too late")


@pytest.mark.parametrize("size", [12288, 12289])
def test_the_bundle_size_bound(size):
    evm = secagg_chain()
    ok(evm.transact(K0, ROUNDS, "setShareKey", keccak(K0.to_bytes())))
    result = post(evm, K0, bundle=b"\x07" * size)
    assert result.success is (size <= 12288)


@pytest.mark.parametrize("size", [6144, 6145])
def test_the_reveal_size_bound(size):
    evm = secagg_chain(straggler_grace_pct=0)
    for k in (K0, K1):
        ok(evm.transact(k, ROUNDS, "setShareKey", keccak(k.to_bytes())))
        ok(post(evm, k, i=0 if k is K0 else 1))
    for k in (K0, K1):
        ok(commit(evm, k, key_count=2))
    result = reveal(evm, K0, shares=b"\x07" * size)  # the window closed early at the second commit
    assert result.success is (size <= 6144)


def test_a_key_set_frozen_below_min_participants_closes_at_the_deadline_and_the_round_is_skipped():
    """One key poster commits (min 2): its set can never bring a second commit, so the round is not extended
    for ever; it closes at closeTime, settles on its base model, and the next round builds a set as usual."""
    evm = secagg_chain(straggler_grace_pct=0)
    for k in (K0, K1):
        ok(evm.transact(k, ROUNDS, "setShareKey", keccak(k.to_bytes())))
    ok(post(evm, K0))
    first = ok(commit(evm, K0, key_count=1))
    close = first.events_named("WindowRestarted")[0]["closeTime"]  # a window from the set's first commit
    assert evm.call(ROUNDS, "windowOpen", timestamp=close - 1) is True
    assert evm.call(ROUNDS, "windowOpen", timestamp=close) is False
    reverts(post(evm, K1, i=1, timestamp=close - 3), "postMaskKeys: key set frozen")
    reverts(commit(evm, K1, key_count=1, timestamp=close - 2), "commitUpdate: no mask keys")
    base = round_info(evm)["baseHash"]
    reverts(attest(evm, K2, model_hash=base, timestamp=close - 1), "attestAggregate: commit window still open")
    reverts(attest(evm, K2, model_hash=keccak(b"m0"), timestamp=close),
            "attestAggregate: skipped round must attest its base hash")
    reverts(reveal(evm, K0, timestamp=close + 1), "revealShares: too few commits")  # never unmasked
    for i, k in enumerate((K0, K1, K2)):
        last = ok(attest(evm, k, model_hash=base, timestamp=close + 2 + i))
    assert last.events_named("RoundSkipped") == [{"round": 0, "commitCount": 1}]
    assert not last.events_named("ContributorRewarded")  # a skipped round's commit is not paid
    info = round_info(evm)
    assert (info["finalized"], info["skipped"], info["finalHash"]) == (True, True, base)
    assert evm.call(ROUNDS, "currentRound") == 1
    t = close + 10
    ok(post(evm, K0, round_=1, i=0, timestamp=t))
    ok(post(evm, K1, round_=1, i=1, timestamp=t + 1))
    ok(commit(evm, K0, round_=1, key_count=2, timestamp=t + 2))
    ok(commit(evm, K1, round_=1, key_count=2, timestamp=t + 3))
    assert round_info(evm, 1)["commitCount"] == 2


def two_member_set_and_a_first_commit():
    """K0 and K1 post keys for round 0 (min 2, no straggler grace) and K0 commits: the set is frozen."""
    evm = secagg_chain(straggler_grace_pct=0)
    for k in (K0, K1):
        ok(evm.transact(k, ROUNDS, "setShareKey", keccak(k.to_bytes())))
    ok(post(evm, K0, i=0))
    ok(post(evm, K1, i=1))
    return evm, ok(commit(evm, K0, key_count=2))


def test_a_silent_key_poster_cannot_hold_a_round_open():
    """Two identities post keys and one commits at once, freezing a set that holds min members: the other
    stays silent (and even leaves). The round is not extended for it: the set's members have until the
    deadline, and the round is then skipped."""
    evm, first = two_member_set_and_a_first_commit()
    ok(evm.transact(K1, ROUNDS, "leave"))
    close = first.events_named("WindowRestarted")[0]["closeTime"]
    assert evm.call(ROUNDS, "windowOpen", timestamp=close - 1) is True
    assert evm.call(ROUNDS, "windowOpen", timestamp=close) is False
    assert evm.call(ROUNDS, "windowOpen", timestamp=close + 10_000) is False
    base = round_info(evm)["baseHash"]
    reverts(attest(evm, K2, model_hash=base, timestamp=close - 1), "attestAggregate: commit window still open")
    for i, k in enumerate((K0, K1, K2)):
        ok(attest(evm, k, model_hash=base, timestamp=close + i))
    assert round_info(evm)["skipped"] is True and evm.call(ROUNDS, "currentRound") == 1


def test_a_frozen_set_whose_members_commit_in_the_window_aggregates_as_usual():
    """The other side: the second member of the set commits before the deadline, the round reaches min
    and closes early (both expected committed); it is not skipped."""
    evm, first = two_member_set_and_a_first_commit()
    close = first.events_named("WindowRestarted")[0]["closeTime"]
    ok(commit(evm, K1, key_count=2, timestamp=close - 1))  # the last second of the window
    info = round_info(evm)
    assert (info["commitCount"], info["closedEarly"]) == (2, True)
    ok(attest(evm, K2, model_hash=keccak(b"aggregate"), timestamp=close + 1))  # a real aggregate, not the base
    assert round_info(evm)["skipped"] is False


def test_a_late_first_commit_over_a_set_below_min_restarts_the_clock_then_closes():
    """An extended round (no commit by its deadline) whose first commit freezes a set of one: the commit
    restarts the window's clock, as any late first commit does, and the round closes a window after it."""
    evm = secagg_chain(straggler_grace_pct=0)
    ok(evm.transact(K0, ROUNDS, "setShareKey", keccak(K0.to_bytes())))
    ok(post(evm, K0))
    t = GENESIS_TIME + WINDOW + 500
    assert evm.call(ROUNDS, "windowOpen", timestamp=t) is True  # no commit yet: extended
    result = ok(commit(evm, K0, key_count=1, timestamp=t))
    assert result.events_named("WindowRestarted")[0]["closeTime"] == t + WINDOW
    assert evm.call(ROUNDS, "windowOpen", timestamp=t + WINDOW - 1) is True
    assert evm.call(ROUNDS, "windowOpen", timestamp=t + WINDOW) is False
    base = round_info(evm)["baseHash"]
    for i, k in enumerate((K0, K1, K2)):
        ok(attest(evm, k, model_hash=base, timestamp=t + WINDOW + i))
    assert round_info(evm)["skipped"] is True


def test_every_first_commit_gives_the_key_set_a_whole_window():
    """Found in review: with the deadline left where it was, a member that committed early left the other
    members only the rest of the window, and under secure aggregation the round is no longer extended,
    so a slower honest member missed it and the round was skipped. Every first commit now restarts the
    clock: a member committing past the original deadline, within a window of the first commit, is in;
    at that window's end it is not."""
    for late_by in (5, WINDOW // 2):
        evm = secagg_chain(straggler_grace_pct=0)
        for k in (K0, K1):
            ok(evm.transact(k, ROUNDS, "setShareKey", keccak(k.to_bytes())))
        ok(post(evm, K0, i=0))
        ok(post(evm, K1, i=1))
        original = round_info(evm)["closeTime"]
        t = GENESIS_TIME + WINDOW // 2
        first = ok(commit(evm, K0, key_count=2, timestamp=t))
        assert first.events_named("WindowRestarted")[0]["closeTime"] == t + WINDOW > original
        second = original + late_by
        if second < t + WINDOW:
            ok(commit(evm, K1, key_count=2, timestamp=second))
            assert round_info(evm)["commitCount"] == 2
        else:
            reverts(commit(evm, K1, key_count=2, timestamp=second), "commitUpdate: commit window closed")


def test_without_secure_aggregation_an_early_first_commit_keeps_the_deadline():
    evm = make_chain(with_params(min_participants=1))
    original = round_info(evm)["closeTime"]
    result = ok(commit(evm, K0, timestamp=GENESIS_TIME + WINDOW // 2))
    assert not result.events_named("WindowRestarted") and round_info(evm)["closeTime"] == original
