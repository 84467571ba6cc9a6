"""The round protocol's decisions (pure): observation + local view -> actions."""

from __future__ import annotations

from dataclasses import replace

from swarmnode.node import rounds
from swarmnode.node.rounds import (
    Aggregate,
    Attest,
    CommitInfo,
    FetchModel,
    LocalView,
    RoundObservation,
    Train,
)

G0, G1, OTHER = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
COMMITS = (CommitInfo(b"\xaa" * 20, b"\x10" * 32, 270), CommitInfo(b"\xbb" * 20, b"\x11" * 32, 270))


def obs(**kw: object) -> RoundObservation:
    base = RoundObservation(height=3, round=0, base_hash=G0, window_open=True, commits=(), participant_count=4,
                            participant_index=1, committed=False, attested=False, validator=True)
    return replace(base, **kw)  # type: ignore[arg-type]


def local(**kw: object) -> LocalView:
    return replace(LocalView(has_base=True, num_clients=4), **kw)  # type: ignore[arg-type]


def test_without_the_base_model_only_fetch_it() -> None:
    assert rounds.decide(obs(round=2, base_hash=G1), local(has_base=False)) == [FetchModel(2, G1)]
    assert rounds.decide(obs(), local(has_base=False, busy=frozenset({("fetch", 0)}))) == []


def test_open_window_registered_participant_trains_once() -> None:
    assert rounds.decide(obs(), local()) == [Train(0, G0, 1)]
    assert rounds.decide(obs(), local(busy=frozenset({("train", 0)}))) == []
    assert rounds.decide(obs(), local(done=frozenset({("train", 0)}))) == []
    assert rounds.decide(obs(committed=True), local()) == []


def test_no_training_without_registration_or_data_partition() -> None:
    assert rounds.decide(obs(participant_index=None), local()) == []
    assert rounds.decide(obs(participant_index=4), local(num_clients=4)) == []


def test_closed_window_aggregates_the_included_commits_then_validators_attest() -> None:
    closed = obs(window_open=False, commits=COMMITS)
    assert rounds.decide(closed, local()) == [Aggregate(0, G0, COMMITS)]
    done = local(done=frozenset({("aggregate", 0)}), aggregates=((0, G1),))
    assert rounds.decide(closed, done) == [Attest(0, G1)]
    assert rounds.decide(replace(closed, attested=True), done) == []
    assert rounds.decide(replace(closed, validator=False), done) == []


def test_closed_window_never_trains() -> None:
    assert all(not isinstance(a, Train) for a in rounds.decide(obs(window_open=False), local()))


def test_mismatch_reports_our_differing_result_only() -> None:
    view = local(aggregates=((0, G1),))
    assert rounds.mismatch(view, 0, OTHER) == G1
    assert rounds.mismatch(view, 0, G1) is None
    assert rounds.mismatch(view, 1, OTHER) is None
