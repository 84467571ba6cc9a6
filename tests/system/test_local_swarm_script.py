"""scripts/local_swarm.py stops every daemon it started: on SIGTERM (as on Ctrl-C), and even when it is
killed outright (its daemons get SIGTERM when their parent dies)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarmnode.node.localnet import make_genesis, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _daemon_pids(base: Path) -> list[int]:
    """pids of `swarmnode run` processes whose config lives under `base`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"run" in cmd and any(str(base).encode() in part for part in cmd):
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(base: Path) -> subprocess.Popen[bytes]:
    genesis, _keys = make_genesis(base / "g", 4, "tiny", commit_window_s=20)
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "local_swarm.py"), "--genesis", str(genesis),
                             "--rounds", "1000", "--base-dir", str(base / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_local_swarm_leaves_no_daemon_behind(tmp_path: Path, how: signal.Signals) -> None:
    launcher = _start(tmp_path)
    try:
        pids = wait_for(lambda: (p := _daemon_pids(tmp_path / "run")) and len(p) == 4 and p, 120,
                        "4 daemons to start")
        wait_for(lambda: (tmp_path / "run" / "node3" / "node.json").exists(), 120, "node3 to be up")
        launcher.send_signal(how)
        code = launcher.wait(60)
        t0 = time.monotonic()
        wait_for(lambda: not any(_alive(p) for p in pids), 30,
                 f"every daemon to exit after the launcher got {how.name}")
        if how == signal.SIGTERM:
            out = launcher.stdout.read().decode() if launcher.stdout else ""
            assert code == 130 and "stopping every daemon" in out, (code, out[-2000:])
        print(f"{how.name}: daemons gone {time.monotonic() - t0:.1f} s after the launcher exited")
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in _daemon_pids(tmp_path / "run"):
            os.kill(pid, signal.SIGKILL)
