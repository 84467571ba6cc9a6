"""Threads for the daemon's heavy work (training, aggregation, evaluation) at a lower CPU priority.

The same process also runs the BFT driver, libp2p and chain execution, which are latency-bound: a block
waits for every validator's votes, and a vote waits for its event loop to be scheduled. When training has
the cores, a block that takes 1 s on an idle machine takes 2-4 s. Running the heavy work at a higher nice
value (Linux schedules niceness per thread) lets the latency-bound threads go first; training still gets
every cycle they leave.

Trio's worker threads are shared by everything, and an unprivileged thread cannot lower its niceness
again, so the heavy work runs in threads of its own: `run` hands a call to one of them and waits in a
trio worker thread, which keeps trio's semantics (limiters, a cancelled caller waits for the call).
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import trio

from consensus.executor import name_os_thread

log = logging.getLogger("swarmnode.node")
T = TypeVar("T")

_STOP = object()


def lower_thread_priority(niceness: int) -> bool:
    """Raise the calling thread's nice value by `niceness` (Linux only; elsewhere setpriority would apply
    to the whole process). True if it took effect."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))
    except OSError as exc:
        log.warning("event=nice_failed error=%r (heavy work runs at normal priority)", str(exc))
        return False
    return True


class ComputeThreads:
    """`workers` daemon threads at `niceness` above the process's priority (0: normal priority), named
    `name`-i (in the OS too: per-thread CPU time tells training from the rest)."""

    def __init__(self, workers: int = 2, niceness: int = 10, name: str = "compute") -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.niceness = niceness
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        self._started = False
        self.lowered: list[bool] = []

    def start(self) -> None:
        if not self._started:
            self._started = True
            for t in self._threads:
                t.start()

    def stop(self, timeout: float = 120.0) -> bool:
        """Let each thread finish its current call, then end it. Blocks up to `timeout`: a thread still
        inside torch when the interpreter exits can abort the process ("terminate called without an
        active exception"). True if every thread ended."""
        if not self._started:
            return True
        for _ in self._threads:
            self._jobs.put(_STOP)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _work(self) -> None:
        name_os_thread(threading.current_thread().name)
        self.lowered.append(lower_thread_priority(self.niceness))
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            fn, args, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller, which re-raises it
                fut.set_exception(exc)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on a compute thread and return its result (blocks the calling thread)."""
        self.start()
        fut: Future[T] = Future()
        self._jobs.put((fn, args, fut))
        return fut.result()

    async def run(self, fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None) -> T:
        return await trio.to_thread.run_sync(self.call, fn, *args, limiter=limiter)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (call before any thread starts). glibc gives threads that allocate at
    once arenas of their own, up to 8 per core; a node has a dozen threads (compute, executor, trio's
    worker cache, libp2p) that all allocate, and the arenas' free space is not returned. Measured over
    200 rounds of 4 daemons (`make soak`): 70-80 MB less resident memory per daemon, and a flatter
    trend. MALLOC_ARENA_MAX in the environment wins. False where this is not glibc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_arena_max = -8  # malloc.h
        return bool(libc.mallopt(m_arena_max, arenas))
    except (OSError, AttributeError):
        return False
