"""An optional CPU profile of a daemon, for developers: SWARMNODE_PROFILE=DIR makes `swarmnode run` record
the CPU time of every function on every thread with yappi and write, when the daemon stops:
- DIR/<label>-<pid>.pstat: pstats format (`python -m pstats FILE`, snakeviz, gprof2dot);
- DIR/<label>-<pid>.threads.txt: CPU seconds per thread, with its name.

yappi measures thread CPU time (CLOCK_THREAD_CPUTIME_ID), not samples of whatever is running: on a shared,
overloaded machine a sampler such as py-spy counts a thread that waits in the run queue as busy, yappi
does not. It slows Python code down (each call is timed), so round times under it are not figures.
yappi is not a dependency (`pip install yappi`); without it the daemon refuses to start, saying so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("swarmnode.node")

ENV = "SWARMNODE_PROFILE"


class ProfilingUnavailable(Exception):
    """SWARMNODE_PROFILE is set but yappi is not installed."""


@contextmanager
def cpu_profile(label: str, directory: str | None = None) -> Iterator[None]:
    """Profile the block (every thread) when `directory` (default: $SWARMNODE_PROFILE) is set."""
    directory = directory if directory is not None else os.environ.get(ENV)
    if not directory:
        yield
        return
    try:
        import yappi
    except ImportError:
        raise ProfilingUnavailable(f"{ENV} is set, but yappi is not installed (pip install yappi)") from None
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    yappi.set_clock_type("cpu")
    yappi.start(builtins=False, profile_threads=True)
    log.warning("event=cpu_profile dir=%s (yappi: the daemon runs slower)", out)
    try:
        yield
    finally:
        yappi.stop()
        stem = out / f"{label}-{os.getpid()}"
        yappi.get_func_stats().save(str(stem) + ".pstat", type="pstat")
        lines = [f"{t.ttot:10.3f}  {t.name} (tid {t.tid})" for t in
                 sorted(yappi.get_thread_stats(), key=lambda t: -t.ttot)]
        Path(str(stem) + ".threads.txt").write_text("CPU seconds  thread\n" + "\n".join(lines) + "\n")
        log.info("event=cpu_profile_written path=%s.pstat", stem)
