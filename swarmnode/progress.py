"""Progress display (rich) for the few places where a person waits: a transaction to be included, a node
catching up with the chain, daemons starting and rounds passing in `make demo`.

Shown only to a person: on stderr, when both stdout and stderr are terminals and the output is not
`--json` (CI, pipes and scripts see the plain output alone). Everything here degrades to plain lines
(or nothing) when off, so callers never branch on it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def wanted(json_output: bool = False) -> bool:
    """Whether to draw progress: a person is watching (both streams are terminals) and no JSON is asked for."""
    if json_output or os.environ.get("TERM") == "dumb" or os.environ.get("CI"):
        return False
    return sys.stdout.isatty() and sys.stderr.isatty()


class Display:
    """What a caller gets: `say(text)` prints a line (above the bar when one is drawn, else to `stream`),
    `update(text)` changes the status line, `advance(n)` moves the bar."""

    def __init__(self, progress: Any = None, task: Any = None, stream: Any = None) -> None:
        self._progress = progress
        self._task = task
        self._stream = stream

    def say(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        elif self._stream is not None:
            print(text, file=self._stream, flush=True)

    def update(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def advance(self, steps: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, steps)


def _progress(*, bar: bool, poll: Callable[[Any], None] | None = None) -> Any:
    """A rich Progress on stderr (transient: it leaves no trace once done); `poll(progress)` runs before
    each redraw (in rich's refresh thread: it may only read values that are safe to read anywhere)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class Polled(Progress):
        def get_renderables(self) -> Any:
            if poll is not None:
                poll(self)
            yield from super().get_renderables()

    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
    if bar:
        columns += [BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    columns.append(TimeElapsedColumn())
    return Polled(*columns, console=Console(stderr=True), transient=True)


@contextmanager
def status(text: str, enabled: bool, *, stream: Any = None) -> Iterator[Display]:
    """A spinner with `text` and the time elapsed; off, `say` writes to `stream` (None: nowhere)."""
    if not enabled:
        yield Display(stream=stream)
        return
    with _progress(bar=False) as progress:
        yield Display(progress, progress.add_task(text, total=None))


@contextmanager
def bar(text: str, total: int, enabled: bool, *, stream: Any = None) -> Iterator[Display]:
    """A bar of `total` steps (the caller advances it)."""
    if not enabled:
        yield Display(stream=stream)
        return
    with _progress(bar=True) as progress:
        yield Display(progress, progress.add_task(text, total=total))


@contextmanager
def polled_bar(text: str, read: Callable[[], tuple[int, int]], enabled: bool) -> Iterator[None]:
    """A bar redrawn from `read() -> (done, total)` about ten times a second, for work that runs elsewhere
    (e.g. chain sync on the event loop). Log records written meanwhile go above the bar."""
    if not enabled:
        yield
        return
    first: list[int] = []

    def poll(progress: Any) -> None:
        if not progress.tasks:  # rich draws once before the task is added
            return
        done, total = read()
        if not first:
            first.append(done)
        task = progress.tasks[0].id
        progress.update(task, completed=done - first[0], total=max(total - first[0], done - first[0], 1))

    with _progress(bar=True, poll=poll) as progress, _logs_through():
        progress.add_task(text, total=None)
        yield


@contextmanager
def _logs_through() -> Iterator[None]:
    """While a bar is drawn, send the root logger's stream handlers through rich's stand-in for stderr
    (rich then prints each record above the bar instead of the record tearing the bar apart)."""
    real = getattr(sys.stderr, "rich_proxied_file", None)
    handlers = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler and h.stream is real]
    saved = [h.stream for h in handlers]
    for h in handlers:
        h.setStream(sys.stderr)  # rich's FileProxy while the bar is live
    try:
        yield
    finally:
        for h, stream in zip(handlers, saved, strict=True):
            h.setStream(stream)
