"""The daemon's low-priority compute threads: results and errors come back, and the threads really run at
a higher nice value than the event loop (Linux)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from swarmnode.node.compute import ComputeThreads


def _nice_of_this_thread() -> tuple[str, int]:
    return threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _os_name_of_this_thread() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


async def test_results_errors_and_priority() -> None:
    pool = ComputeThreads(workers=2, niceness=5)
    try:
        assert await pool.run(sum, [1, 2, 3]) == 6
        with pytest.raises(ZeroDivisionError):
            await pool.run(lambda: 1 // 0)
        name, nice = await pool.run(_nice_of_this_thread, limiter=trio.CapacityLimiter(1))
        assert name in {t.name for t in threading.enumerate()}
        assert name.startswith("compute-")
        if sys.platform.startswith("linux"):  # the OS sees the name too (per-thread CPU breakdowns)
            assert await pool.run(_os_name_of_this_thread) in {"compute-0", "compute-1"}
        if sys.platform.startswith("linux"):
            loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            assert nice == min(19, loop_nice + 5)  # the compute thread only; the caller is untouched
            assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == loop_nice
    finally:
        pool.stop()


async def test_niceness_zero_leaves_priority_alone() -> None:
    pool = ComputeThreads(workers=1, niceness=0)
    try:
        _, nice = await pool.run(_nice_of_this_thread)
        if sys.platform.startswith("linux"):
            assert nice == os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert pool.lowered == [False]
    finally:
        pool.stop()


async def test_stop_waits_for_the_running_call() -> None:
    pool = ComputeThreads(workers=1, niceness=0)
    started, results = threading.Event(), []

    def slow() -> None:
        started.set()
        time.sleep(0.3)  # the work in progress when stop() is called (not a synchronization)
        results.append("done")

    threading.Thread(target=pool.call, args=(slow,), daemon=True).start()
    assert started.wait(5)
    assert pool.stop(timeout=10) is True, "the thread must end after its call"
    assert results == ["done"], "stop() must wait for the call in progress"


def test_malloc_arenas_are_capped_unless_the_environment_says_otherwise(monkeypatch) -> None:
    import platform

    from swarmnode.node.compute import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False, "MALLOC_ARENA_MAX in the environment must win"
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert limit_malloc_arenas() is expected
