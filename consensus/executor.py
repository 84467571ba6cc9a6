"""ChainExecutor: the one thread that owns py-evm; every caller submits work to it, in priority order.

py-evm and the tx pool are not thread-safe, and a node has several callers: the consensus driver
(propose, validate, commit), chain sync, the JSON-RPC server and the node's own round reader and
transaction sender. Each of them `await executor.run(fn, *args, priority=...)`; the jobs run one at a
time on a single dedicated thread, the most urgent first (consensus before sync before the node before
RPC), in submission order within a priority. Nothing else ever touches the chain, so no lock is needed,
and a job must never wait for the network: it computes from what is already on this machine.

A caller cancelled while its job is still queued withdraws the job; once the job runs, the caller waits
for it (as `trio.to_thread.run_sync` does), so work that changes the chain is never half-observed.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import IntEnum
from typing import Any, TypeVar

import outcome
import trio

log = logging.getLogger(__name__)
T = TypeVar("T")


class Priority(IntEnum):
    CONSENSUS = 0  # the driver: every vote waits for these
    SYNC = 1  # catching up from peers, serving sync
    NODE = 2  # the node's round reader, transaction sender, pruning
    RPC = 3  # JSON-RPC clients


class ExecutorClosed(RuntimeError):
    """Work was submitted to an executor that is not running."""


_PENDING, _RUNNING, _WITHDRAWN = 0, 1, 2


class _Job:
    __slots__ = ("fn", "args", "deliver", "queued_at", "_state", "_lock")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...],
                 deliver: Callable[[outcome.Outcome[Any]], None]) -> None:
        self.fn, self.args, self.deliver = fn, args, deliver
        self.queued_at = time.monotonic()
        self._state = _PENDING
        self._lock = threading.Lock()

    def begin(self) -> bool:
        """Worker side: claim the job; False when its caller withdrew it first."""
        with self._lock:
            if self._state != _PENDING:
                return False
            self._state = _RUNNING
            return True

    def withdraw(self) -> bool:
        """Caller side (cancelled): True when the job had not started and now never will."""
        with self._lock:
            if self._state != _PENDING:
                return False
            self._state = _WITHDRAWN
            return True


_STOP = object()


def _os_thread_namer() -> Callable[[bytes], Any] | None:
    """pthread_setname_np for the calling thread, or None where libc has none."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        setname, self_id = libc.pthread_setname_np, libc.pthread_self
    except (OSError, AttributeError):
        return None
    setname.argtypes, setname.restype = [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int
    self_id.restype = ctypes.c_void_p

    def name_self(name: bytes) -> Any:
        return setname(self_id(), name)

    return name_self


_NAME_SELF = _os_thread_namer()


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` in the OS too (Linux: /proc/<pid>/task/<tid>/comm, 15 bytes), so that
    per-thread CPU time can be told apart from outside the process (top -H, bench_swarm's breakdown):
    Python's thread names never reach the OS. Best effort: a no-op where pthread_setname_np is missing."""
    if _NAME_SELF is not None:
        _NAME_SELF(name.encode("ascii", "replace")[:15])


class ChainExecutor:
    """`async with executor.running(): ... await executor.run(fn, *args, priority=Priority.RPC)`."""

    def __init__(self, name: str = "chain-executor") -> None:
        self.name = name
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.counters: Counter[str] = Counter()
        self.busy_seconds = 0.0
        self.longest_job = 0.0  # seconds
        self.longest_wait = 0.0  # seconds a job waited in the queue
        self.running_priority: Priority | None = None  # of the job running now (written by the worker only)
        self._idle = threading.Event()

    # ---- lifecycle ----

    def start(self) -> None:
        if self._thread is not None:
            raise ExecutorClosed(f"{self.name} already started")
        self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, final: Callable[[], None] | None = None, timeout: float = 30.0) -> bool:
        """Run what is queued, then `final()` on the executor's thread (e.g. close the chain), and end it.
        Returns False when the thread did not finish within `timeout` (it is a daemon thread)."""
        if self._thread is None:
            if final is not None:
                final()
            return True
        self._stopping = True
        self._queue.put((len(Priority) + 1, next(self._seq), (_STOP, final)))
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @asynccontextmanager
    async def running(self, final: Callable[[], None] | None = None) -> AsyncIterator[ChainExecutor]:
        self.start()
        try:
            yield self
        finally:
            with trio.CancelScope(shield=True):
                stopped = await trio.to_thread.run_sync(self.stop, final)
            if not stopped:
                log.warning("event=executor_stop_timeout name=%s", self.name)

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def on_thread(self) -> bool:
        """True when called from the executor's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    # ---- submitting work ----

    async def run(self, fn: Callable[..., T], *args: Any, priority: Priority = Priority.NODE) -> T:
        """Run `fn(*args)` on the executor's thread and return its result (or raise its exception)."""
        if self._thread is None or self._stopping:
            raise ExecutorClosed(f"{self.name} is not running")
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[Any]) -> None:  # executor thread
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                pass  # the caller's trio run is gone: nobody waits for the result

        job = _Job(fn, args, deliver)
        self.counters[f"submitted.{priority.name.lower()}"] += 1
        self._queue.put((int(priority), next(self._seq), job))

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            if job.withdraw():
                self.counters["withdrawn"] += 1
                return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED  # running: deliver() reschedules us with its outcome

        return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    def pending(self) -> int:
        return self._queue.qsize()

    def urgent_running(self) -> bool:
        """True while a job more urgent than RPC runs: CPU-heavy work elsewhere in the process (the RPC
        server's large parses, for one) should wait, since it would take the interpreter lock from it."""
        running = self.running_priority
        return running is not None and running < Priority.RPC

    def statistics(self) -> dict[str, Any]:
        return {"queued": self.pending(), "busySeconds": round(self.busy_seconds, 3),
                "longestJobMs": round(1000 * self.longest_job, 1),
                "longestWaitMs": round(1000 * self.longest_wait, 1), **dict(self.counters)}

    # ---- the thread ----

    def _work(self) -> None:
        name_os_thread(self.name)
        while True:
            entry = self._queue.get()
            item = entry[2]
            if isinstance(item, tuple) and item[0] is _STOP:
                final = item[1]
                if final is not None:
                    try:
                        final()
                    except Exception:
                        log.exception("event=executor_final_failed name=%s", self.name)
                return
            priority, job = entry[0], item
            if not job.begin():
                continue
            started = time.monotonic()
            self.longest_wait = max(self.longest_wait, started - job.queued_at)
            self.running_priority = Priority(priority)
            try:
                result = outcome.capture(job.fn, *job.args)
            finally:
                self.running_priority = None
            took = time.monotonic() - started
            self.busy_seconds += took
            self.longest_job = max(self.longest_job, took)
            self.counters["ran"] += 1
            job.deliver(result)
