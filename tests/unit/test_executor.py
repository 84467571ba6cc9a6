"""ChainExecutor: one thread runs every job, the most urgent first; cancelled waiters withdraw queued jobs;
a running job always completes; errors reach the caller; stopping runs `final` on the same thread."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from consensus.executor import ChainExecutor, ExecutorClosed, Priority


async def test_every_job_runs_on_the_one_executor_thread() -> None:
    async with ChainExecutor().running() as ex:
        threads = {await ex.run(threading.get_ident) for _ in range(20)}
        assert len(threads) == 1 and threads != {threading.get_ident()}
        assert ex.thread is not None and threads == {ex.thread.ident}
        if sys.platform.startswith("linux"):  # named in the OS too: per-thread CPU is told apart by it
            tid = await ex.run(threading.get_native_id)
            assert Path(f"/proc/self/task/{tid}/comm").read_text().strip() == "chain-executor"


async def test_queued_jobs_run_by_priority_then_in_submission_order() -> None:
    order: list[str] = []
    gate = threading.Event()
    async with ChainExecutor().running() as ex, trio.open_nursery() as nursery:
        started = threading.Event()
        nursery.start_soon(ex.run, lambda: (started.set(), gate.wait()))  # occupies the thread...
        await trio.to_thread.run_sync(started.wait)  # ...from now on, while the rest queue up
        for name, prio in [("rpc-1", Priority.RPC), ("node-1", Priority.NODE), ("consensus-1", Priority.CONSENSUS),
                           ("rpc-2", Priority.RPC), ("sync-1", Priority.SYNC), ("consensus-2", Priority.CONSENSUS)]:
            nursery.start_soon(lambda n=name, p=prio: ex.run(order.append, n, priority=p))
            await trio.testing.wait_all_tasks_blocked()  # queued before the next is submitted
        gate.set()
    assert order == ["consensus-1", "consensus-2", "sync-1", "node-1", "rpc-1", "rpc-2"]


async def test_a_cancelled_waiter_withdraws_its_queued_job() -> None:
    ran: list[int] = []
    gate = threading.Event()
    async with ChainExecutor().running() as ex, trio.open_nursery() as nursery:
        started = threading.Event()
        nursery.start_soon(ex.run, lambda: (started.set(), gate.wait()))
        await trio.to_thread.run_sync(started.wait)
        with trio.move_on_after(0.05):
            await ex.run(ran.append, 1)
        gate.set()
        await ex.run(ran.append, 2)
        assert ran == [2], "the withdrawn job must never run"
        assert ex.statistics()["withdrawn"] == 1


async def test_a_running_job_completes_even_if_its_waiter_is_cancelled() -> None:
    finished = threading.Event()
    started = threading.Event()

    def slow() -> None:
        started.set()
        threading.Event().wait(0.2)
        finished.set()

    async with ChainExecutor().running() as ex:
        with trio.move_on_after(0.05):
            t0 = trio.current_time()
            await ex.run(slow)
            waited = trio.current_time() - t0
        assert started.is_set() and finished.is_set(), "the job ran to its end before the waiter returned"
        assert waited >= 0.19, "the waiter waited for the running job (its work is never half-observed)"


async def test_errors_reach_the_caller_and_the_thread_lives_on() -> None:
    def boom() -> None:
        raise ValueError("bad block 7")

    async with ChainExecutor().running() as ex:
        with pytest.raises(ValueError, match="bad block 7"):
            await ex.run(boom)
        assert await ex.run(lambda: 41 + 1) == 42


async def test_stop_runs_final_on_the_executor_thread_after_queued_work() -> None:
    seen: list[tuple[str, int]] = []
    ex = ChainExecutor()
    async with ex.running(final=lambda: seen.append(("final", threading.get_ident()))):
        await ex.run(lambda: seen.append(("job", threading.get_ident())))
    assert [s[0] for s in seen] == ["job", "final"] and seen[0][1] == seen[1][1]
    with pytest.raises(ExecutorClosed):
        await ex.run(lambda: None)


async def test_a_job_submitted_before_start_is_refused() -> None:
    with pytest.raises(ExecutorClosed, match="not running"):
        await ChainExecutor().run(lambda: None)
