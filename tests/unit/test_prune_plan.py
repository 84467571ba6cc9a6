"""Which rounds one prune pass covers: due rounds only, a long backlog in chunks, kept models kept."""

from __future__ import annotations

from swarmnode.node.work import PRUNE_CHUNK_ROUNDS, prune_plan

FRESH = {"through": -1, "models_through": -1}


def test_nothing_is_due_inside_the_keep_windows() -> None:
    assert prune_plan(FRESH, 3, keep_updates=4, keep_models=64) is None
    assert prune_plan(FRESH, 4, keep_updates=4, keep_models=64) == (0, 0, 0, -60, -59), "updates of round 0 due; no model yet"
    assert prune_plan({"through": 0, "models_through": -1}, 4, 4, 64) is None, "round 0 already pruned"


def test_keep_zero_keeps_everything() -> None:
    assert prune_plan(FRESH, 10_000, keep_updates=0, keep_models=0) is None


def test_a_backlog_is_worked_through_in_chunks() -> None:
    chunk = PRUNE_CHUNK_ROUNDS
    marker, final, passes = dict(FRESH), 10_000, 0
    while (plan := prune_plan(marker, final, keep_updates=4, keep_models=64)) is not None:
        u0, u_through, m0, m_through, kept_from = plan
        assert u_through - u0 < chunk and m_through - m0 < chunk, "one pass covers at most a chunk"
        assert kept_from == final - 64 + 1, "the models of the last keep_model_rounds rounds stay"
        assert m_through < kept_from and u_through <= final - 4
        marker = {"through": max(u_through, marker["through"]), "models_through": max(m_through, marker["models_through"])}
        passes += 1
    assert marker == {"through": final - 4, "models_through": final - 64}
    assert passes == -(-(final - 4 + 1) // chunk), "worked through in whole chunks, not all at once"
    # steady state: each newly final round makes exactly one round due
    assert prune_plan(marker, final + 1, keep_updates=4, keep_models=64) == (
        final - 3, final - 3, final - 63, final - 63, final - 62)


def test_exactly_one_chunk_and_one_more_round() -> None:
    chunk = PRUNE_CHUNK_ROUNDS
    assert prune_plan(FRESH, chunk - 1 + 4, keep_updates=4, keep_models=0, chunk=chunk)[:2] == (0, chunk - 1)
    assert prune_plan(FRESH, chunk + 4, keep_updates=4, keep_models=0, chunk=chunk)[:2] == (0, chunk - 1)
