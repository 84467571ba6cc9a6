"""swarmnode/progress.py: drawn only for a person at a terminal, never in pipes, CI or --json."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys

from swarmnode import progress

SCRIPT = """
import logging
from swarmnode import progress
logging.basicConfig(level=logging.INFO, format="%(message)s")
print("wanted", progress.wanted(), progress.wanted(json_output=True))
state = [0]
with progress.polled_bar("syncing the chain", lambda: (state[0], 10), progress.wanted()):
    for _ in range(10):
        state[0] += 1
        logging.info("log line %d", state[0])
with progress.status("waiting for inclusion", progress.wanted()) as shown:
    shown.say("sent 0xabc")
print("done")
"""


def run(script: str, *, tty: bool) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TERM": "xterm"}
    env.pop("CI", None)
    if not tty:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
        return proc.stdout + proc.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=follower, stderr=follower, env=env)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(60)
    os.close(leader)
    return out.decode(errors="replace")


def test_off_without_a_terminal() -> None:
    out = run(SCRIPT, tty=False)
    assert "wanted False False" in out and "done" in out
    assert "\x1b[" not in out, "escape sequences in piped output"
    assert "log line 10" in out and "sent 0xabc" not in out  # a status without a stream says nothing when off


def test_drawn_at_a_terminal_with_logs_above_the_bar() -> None:
    out = run(SCRIPT, tty=True)
    assert "wanted True False" in out, out[-2000:]
    assert "syncing the chain" in out and "10/10" in out and "waiting for inclusion" in out, out[-2000:]
    assert "log line 10" in out and "sent 0xabc" in out and "done" in out


def test_display_off_writes_plain_lines() -> None:
    stream = io.StringIO()
    with progress.bar("rounds", 3, False, stream=stream) as shown:
        shown.advance()
        shown.update("ignored")
        shown.say("round 0")
    assert stream.getvalue() == "round 0\n"
