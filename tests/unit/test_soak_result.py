"""SoakResult's memory trends: least squares after the first quarter, and the attribution of RssAnon's trend
to the chain read cache (the soak reads the cache's bytes over RPC at the same rounds as memory)."""

from __future__ import annotations

import pytest

from swarmnode.node.soak import SoakResult


def _result(anon: list[tuple[int, float]], cache: list[tuple[int, float]]) -> SoakResult:
    return SoakResult(1, 200, 200, 400.0, [2.0] * 199, anon_mb={0: anon}, cache_mb={0: cache})


def test_anon_trend_split_into_the_cache_and_the_rest() -> None:
    rounds = list(range(0, 200, 10))
    anon = [(r, 300 + 0.30 * r) for r in rounds]  # +30 MB per 100 rounds
    cache = [(r, 5 + 0.20 * r) for r in rounds]  # of which the cache +20
    res = _result(anon, cache)
    assert res.memory_slope("anon")[0] == pytest.approx(30.0)
    assert res.memory_slope("cache")[0] == pytest.approx(20.0)
    assert res.memory_slope("anon-less-cache")[0] == pytest.approx(10.0)
    summary = res.summary()
    assert summary["anon_less_cache_mb_per_100_rounds"][0] == pytest.approx(10.0)
    assert summary["cache_mb_per_100_rounds"][0] == pytest.approx(20.0)


def test_a_round_without_a_cache_reading_is_left_out_of_the_rest() -> None:
    rounds = list(range(0, 200, 10))
    anon = [(r, 300 + 0.30 * r) for r in rounds]
    cache = [(r, 0.30 * r) for r in rounds if r != 150]  # an RPC that did not answer at round 150
    anon[15] = (150, 10_000.0)  # a reading that would swing the trend if it were paired with nothing
    res = _result(anon, cache)
    assert res.memory_slope("anon-less-cache")[0] == pytest.approx(0.0, abs=1e-9)
    assert res.memory_slope("anon")[0] > 1000  # the raw trend does see it


def test_no_cache_readings_give_no_rest_trend() -> None:
    res = _result([(r, 300.0) for r in range(0, 200, 10)], [])
    assert res.memory_slope("anon-less-cache") == {}
    assert res.memory_slope("anon")[0] == pytest.approx(0.0)
