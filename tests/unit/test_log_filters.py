"""py-libp2p's add_conn failure warning keeps its line but not the library's traceback (a partition or a
shutdown cancels connection set-ups; the system tests fail on any traceback in a node log)."""

from __future__ import annotations

import io
import logging

import trio

from swarmnode.node.node import AddConnFailureFilter, setup_logging


def _emit(exc: BaseException) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    log = logging.getLogger("libp2p.network.swarm")
    log.addHandler(handler)
    try:
        try:
            raise exc
        except BaseException as caught:  # as py-libp2p does: format the traceback into the message
            import traceback

            tb = "".join(traceback.format_exception(type(caught), caught, caught.__traceback__))
            log.warning("[ADDCONN_FAIL] add_conn failed for peer %s: %r\n%s", "peer-x", caught, tb[-2000:])
    finally:
        log.removeHandler(handler)
    return out.getvalue()


def test_a_cancelled_or_failed_connection_set_up_logs_one_line_without_a_traceback() -> None:
    setup_logging("INFO", "t")
    assert any(isinstance(f, AddConnFailureFilter) for f in logging.getLogger("libp2p.network.swarm").filters)
    setup_logging("INFO", "t")  # idempotent: one filter
    assert sum(isinstance(f, AddConnFailureFilter) for f in logging.getLogger("libp2p.network.swarm").filters) == 1
    for exc in (trio.Cancelled._create(source="explicit"), OSError("connection reset")):
        text = _emit(exc)
        assert "Traceback" not in text and text.count("\n") == 1, text
        assert "add_conn failed for peer peer-x" in text and type(exc).__name__ in text


def test_other_warnings_of_the_logger_are_left_alone() -> None:
    setup_logging("INFO", "t")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    log = logging.getLogger("libp2p.network.swarm")
    log.addHandler(handler)
    try:
        log.warning("Unexpected error %s:\n%s", "x", "Traceback (most recent call last): ...")
    finally:
        log.removeHandler(handler)
    assert "Traceback" in out.getvalue()
