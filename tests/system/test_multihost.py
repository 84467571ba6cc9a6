"""System test: daemons on separate hosts (Linux network namespaces joined by a bridge), one host cut off.

  lab: the namespaces alone, no daemons. Every host reaches every other through the bridge; a cut host
      reaches nobody and nobody reaches it, while the rest still reach each other and this process still
      reaches it over its observer link; heal restores it; teardown leaves no namespace or link behind,
      also after an interrupt and after part of the lab was removed by hand.
  n4f1 cut 30 s: 4 validators, each daemon on its own host, joined through node0's address only. Once
      2 rounds are final everywhere, host 3 is cut off for 30 s: the other three keep finalizing rounds
      and host 3's chain stands still. After the heal host 3 catches up, commits an update in a later
      round, and every node reports the same final model for every round.

Needs root and `ip netns` (it skips, saying which is missing, otherwise).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from swarmnode.node.keys import address_of, load_key
from swarmnode.node.localnet import LocalSwarm, make_genesis, wait_for
from swarmnode.node.netns import NetnsError, NetnsLab, NetnsSwarm, netns_unavailable

ROUND_TIMEOUT = 120.0  # 2 cores shared by 4 daemons
CUT_SECONDS = 30.0
CUT_HOST = 3


@pytest.fixture
def lab_required() -> None:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)


def reach_matrix(lab: NetnsLab) -> dict[tuple[int, int], bool]:
    return {(i, j): lab.reachable(i, lab.address(j)) for i in range(lab.hosts) for j in range(lab.hosts) if i != j}


# ---------------------------------------------------------------- the lab alone


@pytest.mark.usefixtures("lab_required")
def test_lab_cut_and_heal_one_host_of_4() -> None:
    with NetnsLab(4) as lab:
        assert all(reach_matrix(lab).values()), f"bridge not joining every host: {reach_matrix(lab)}"
        assert all(lab.reachable(None, lab.rpc_address(i)) for i in range(4)), "observer links down"
        assert not lab.reachable(0, lab.rpc_address(1)), "a host reaches another host's observer link"

        lab.cut(CUT_HOST)
        assert lab.is_cut(CUT_HOST)
        during = reach_matrix(lab)
        assert not any(ok for (i, j), ok in during.items() if CUT_HOST in (i, j)), f"cut leaks: {during}"
        assert all(ok for (i, j), ok in during.items() if CUT_HOST not in (i, j)), f"cut hurt others: {during}"
        assert lab.reachable(None, lab.rpc_address(CUT_HOST)), "the cut host should stay observable"

        lab.heal(CUT_HOST)
        assert not lab.is_cut(CUT_HOST)
        wait_for(lambda: all(reach_matrix(lab).values()), 10, "every host to reach every other after heal")
    assert lab.leftovers() == [], f"teardown left {lab.leftovers()}"


class BreaksAtHost2(NetnsLab):
    """Building host 2 raises `error`: what a failed `ip` command or a Ctrl-C mid-build does."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(3)
        self.error = error

    def _build_host(self, i: int) -> None:
        if i == 2:
            raise self.error
        super()._build_host(i)


@pytest.mark.usefixtures("lab_required")
@pytest.mark.parametrize("error", [KeyboardInterrupt(), NetnsError("injected")], ids=["interrupt", "ip-fails"])
def test_lab_build_that_breaks_halfway_leaves_nothing(error: BaseException) -> None:
    lab = BreaksAtHost2(error)
    with pytest.raises(type(error)), lab:
        pass
    assert lab.leftovers() == [], f"a broken build left {lab.leftovers()}"


@pytest.mark.usefixtures("lab_required")
def test_lab_teardown_after_an_interrupt_and_a_namespace_already_gone() -> None:
    with pytest.raises(KeyboardInterrupt), NetnsLab(2) as lab:
        subprocess.run(["ip", "netns", "del", lab.namespace(1)], check=True)
        raise KeyboardInterrupt
    assert lab.leftovers() == [], f"teardown left {lab.leftovers()}"
    lab.teardown()  # a second time: nothing to do, no error


# ---------------------------------------------------------------- daemons on 4 hosts


def genesis_for_4(base: Path) -> tuple[Path, Path]:
    """The shipped defaults but a 30 s commit window: with host 3 cut off, a round closes at the straggler
    grace (3 of 4 expected committed), and once host 3 has missed absent_rounds rounds it is no longer
    waited for at all."""
    return make_genesis(base, 4, "tiny", commit_window_s=30)


@pytest.fixture
def swarm4(tmp_path: Path, lab_required: None) -> Iterator[NetnsSwarm]:
    genesis, keys = genesis_for_4(tmp_path)
    env = {"OMP_NUM_THREADS": "1",
           "SWARMNODE_DATA": os.environ.get("SWARMNODE_DATA", "/usr/share/datasets/fashion-mnist")}
    with NetnsLab(4) as lab, NetnsSwarm(lab, tmp_path, genesis, keys, extra_env=env) as swarm:
        for i in range(4):
            swarm.init_node(i)
        boot = swarm.nodes[0].listen  # node0's address only: peer exchange must connect the rest
        for i in range(4):
            swarm.start(i, bootstrap=[] if i == 0 else boot, wait=False)
        for i in range(4):
            swarm.wait_ready(i)
        yield swarm
    assert lab.leftovers() == [], f"teardown left {lab.leftovers()}"
    for i in range(4):
        log = swarm.nodes[i].log_path.read_text(errors="replace")
        assert "Traceback" not in log, f"node{i} logged a traceback:\n{log[log.index('Traceback'):][:3000]}"


def info(s: LocalSwarm, i: int) -> dict:
    reply = s.try_rpc(i, "swarm_node")
    assert reply is not None or s.nodes[i].alive(), f"node{i} died:\n{s.tail(i)}"
    return reply or {}


def height(s: LocalSwarm, i: int) -> int:
    return int(info(s, i).get("height") or 0)


def committers(s: LocalSwarm, i: int, r: int) -> set[str]:
    reply = s.try_rpc(i, "swarm_getRound", r) or {"commits": []}
    return {c["participant"].lower() for c in reply["commits"]}


def address(s: LocalSwarm, i: int) -> str:
    return "0x" + address_of(load_key(s.nodes[i].data_dir / "node.key")).hex()


def final_rounds(s: LocalSwarm, i: int) -> dict[int, str]:
    """Like LocalSwarm.final_hashes, but an RPC failure raises instead of reading as "none final"."""
    return {int(r["round"]): r["finalHash"] for r in s.rpc(i, "swarm_roundHistory", 0, 100) if r["finalized"]}


def last_final(s: LocalSwarm, i: int) -> int:
    return max(s.final_hashes(i), default=-1)


def report(line: str) -> None:
    """Measured figures: shown with `pytest -s`, and with the captured output of a failing test."""
    print(f"[multihost] {line}", flush=True)


@pytest.mark.slow
def test_n4f1_cut_one_host_30s_then_heal(swarm4: NetnsSwarm) -> None:
    s, lab, others = swarm4, swarm4.lab, [i for i in range(4) if i != CUT_HOST]
    t_start = time.monotonic()
    wait_for(lambda: all(last_final(s, i) >= 1 for i in range(4)), 4 * ROUND_TIMEOUT,
             f"rounds 0 and 1 final on every node\n{s.tail(0)}")
    report(f"rounds 0 and 1 final on every node {time.monotonic() - t_start:.1f} s after the daemons were up")

    # cut: the other three keep finalizing rounds without host 3, whose chain stands still
    mine = address(s, CUT_HOST)
    lab.cut(CUT_HOST)
    t_cut = time.monotonic()
    before, frozen = set(final_rounds(s, 0)), height(s, CUT_HOST)
    time.sleep(CUT_SECONDS)
    in_cut = sorted(set(final_rounds(s, 0)) - before)
    without = [r for r in in_cut if mine not in committers(s, 0, r)]
    cut_height, others_height = height(s, CUT_HOST), max(height(s, i) for i in others)
    lab.heal(CUT_HOST)
    t_heal = time.monotonic()
    report(f"host {CUT_HOST} cut for {t_heal - t_cut:.1f} s: rounds {in_cut} finalized by the others, {without}"
           f" without host {CUT_HOST}; its height {frozen} -> {cut_height}, the others' {others_height}")
    assert in_cut, f"no round finalized in {CUT_SECONDS:.0f} s without host {CUT_HOST}\n{s.tail(0)}"
    assert without, f"rounds {in_cut} finalized during the cut all hold host {CUT_HOST}'s commit\n{s.tail(0)}"
    # one block may already have been on its way in when the link went down
    assert cut_height <= frozen + 1, f"host {CUT_HOST} kept finalizing blocks while cut: {frozen} -> {cut_height}"

    # heal: host 3 syncs the blocks it missed, then keeps pace and takes part again
    wait_for(lambda: height(s, CUT_HOST) >= others_height, ROUND_TIMEOUT,
             f"host {CUT_HOST} to reach height {others_height}\n{s.tail(CUT_HOST)}")
    t_synced = time.monotonic()
    wait_for(lambda: height(s, CUT_HOST) >= min(height(s, i) for i in others), ROUND_TIMEOUT,
             f"host {CUT_HOST} level with the others\n{s.tail(CUT_HOST)}")
    report(f"after the heal host {CUT_HOST} reached height {others_height} in {t_synced - t_heal:.1f} s and was"
           f" level with the others in {time.monotonic() - t_heal:.1f} s")
    healed_round = int(info(s, 0).get("round") or 0)

    def committed_after_heal() -> int | None:
        current = int(info(s, 0).get("round") or 0)
        return next((r for r in range(healed_round + 1, current + 1) if mine in committers(s, 0, r)), None)

    r3 = wait_for(committed_after_heal, 3 * ROUND_TIMEOUT,
                  f"host {CUT_HOST} to commit in a round after {healed_round}\n{s.tail(CUT_HOST)}")
    report(f"host {CUT_HOST} committed in round {r3}, {time.monotonic() - t_heal:.1f} s after the heal")

    # the same final model for every round, on every node
    def final_through_r3(i: int) -> dict[int, str] | None:
        hashes = s.final_hashes(i)
        return hashes if r3 in hashes else None

    finals = [wait_for(partial(final_through_r3, i), ROUND_TIMEOUT, f"round {r3} final on node{i}\n{s.tail(i)}")
              for i in range(4)]
    assert set(range(r3 + 1)) <= set(finals[0]), f"node0 lacks final rounds: {sorted(finals[0])}"
    for i in range(1, 4):
        assert {r: finals[i].get(r) for r in range(r3 + 1)} == {r: finals[0][r] for r in range(r3 + 1)}, (
            f"node{i} disagrees with node0 on final models: {finals[i]} vs {finals[0]}")
    seconds = {h["round"]: round(h["seconds"], 1) for h in info(s, 0).get("history", []) if h.get("seconds")}
    report(f"node0 round seconds: {dict(sorted(seconds.items()))}")
