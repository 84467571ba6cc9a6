"""System test: secure aggregation with real daemons started through the CLI, a real chain and libp2p.

Four daemons on the tiny task with `--secure-aggregation`: every update is committed masked (pairwise masks
over Z_2^32 plus a self mask), the seeds are Shamir-shared in calldata, and after each window the
participants reveal shares so that every node derives the same sum and nothing else. Node 3 plays the
`silent` participant (`--byzantine silent`): it commits every round and never reveals, as a node that
crashed right after committing would.
  - every round finalizes on a model other than its base (the sum was unmasked, not given up), with node
    3's update in it: its self-mask seed came back from the other three's shares; every node agrees;
  - node 3 is then killed once it has posted its keys for the next round: that round, whose key set holds
    it but which it never commits to, finalizes too (its pairwise masks removed from the shares of its
    mask secret).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from swarmnode.node.keys import address_of, load_key
from swarmnode.node.localnet import LocalSwarm, make_genesis, running_swarm, wait_for

pytestmark = pytest.mark.slow

ROUND_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    with running_swarm(tmp_path_factory.mktemp("secagg"), 4, "tiny",
                       genesis_args=("--secure-aggregation", "--min-participants", "2"),
                       run_args={3: ("--byzantine", "silent")}) as s:
        yield s


def rows(swarm: LocalSwarm, r: int) -> dict:
    return swarm.rpc(0, "swarm_getRound", r)


def lower(addresses: list[str]) -> list[str]:
    return [a.lower() for a in addresses]


def test_rounds_finalize_without_a_committers_reveal_and_without_a_key_posters_commit(swarm: LocalSwarm) -> None:
    me3 = "0x" + address_of(load_key(swarm.keys_dir / "node-3.key")).hex()
    hashes = wait_for(lambda: (h := swarm.final_hashes(0)) and len(h) >= 3 and h, 4 * ROUND_TIMEOUT,
                      f"3 final rounds\n{swarm.tail(0)}")
    silent_rounds = []
    for r in range(3):
        info = rows(swarm, r)
        assert hashes[r] != info["baseHash"], f"round {r} settled on its base: the sum was not unmasked"
        assert me3 not in lower(info["revealers"]), "node 3 plays silent: it never reveals"
        assert len(info["revealers"]) >= 2
        if me3 in lower([c["participant"] for c in info["commits"]]):
            silent_rounds.append(r)
    assert silent_rounds, "node 3 committed in none of the first 3 rounds"
    for i in (1, 2, 3):
        theirs = wait_for(lambda i=i: (h := swarm.final_hashes(i)) and len(h) >= 3 and h, ROUND_TIMEOUT,
                          f"node{i} to see 3 final rounds")
        assert all(theirs[r] == hashes[r] for r in range(3)), f"node{i} disagrees"

    # node 3 dies once its keys for the round after the current one are on chain (its log says when)
    def posted_ahead() -> int | None:
        current = max(swarm.final_hashes(0)) + 1
        log3 = swarm.nodes[3].log_path.read_text()
        return current + 1 if f"event=tx_included what=keys:{current + 1} " in log3 else None

    nxt = wait_for(posted_ahead, 3 * ROUND_TIMEOUT, "node 3 to post keys for a next round", interval=0.2)
    os.kill(swarm.nodes[3].proc.pid, signal.SIGKILL)
    swarm.nodes[3].proc.wait(10)
    done = wait_for(lambda: (h := swarm.final_hashes(0)).get(nxt) and h, 4 * ROUND_TIMEOUT,
                    f"round {nxt} final without node 3\n{swarm.tail(0)}")
    info = rows(swarm, nxt)
    assert me3 in lower(info["maskKeys"]) and me3 not in lower([c["participant"] for c in info["commits"]])
    assert done[nxt] != info["baseHash"], f"round {nxt} settled on its base model\n{swarm.tail(0, 40)}"
    for i in (0, 1, 2):
        got = wait_for(lambda i=i: swarm.final_hashes(i).get(nxt), ROUND_TIMEOUT, f"node{i} round {nxt}")
        assert got == done[nxt], f"node{i} disagrees on round {nxt}"
        text = swarm.nodes[i].log_path.read_text()
        assert "event=secagg_unrecoverable" not in text and "event=MODEL_MISMATCH" not in text, swarm.tail(i, 40)
    print(f"\nnode 3 committed without revealing in rounds {silent_rounds} (all final on new models); killed "
          f"after posting keys for round {nxt}, which finalized on {done[nxt][:14]} with its commits "
          f"{len(info['commits'])} and key set {len(info['maskKeys'])}")


@pytest.mark.long
def test_round_0_dealing_waits_for_a_participant_that_starts_late(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Three daemons start first (enough validators to make blocks), the fourth once they are waiting for its
    share key. Round 0 of a genesis made minutes before opened long ago by block time; the wait for share
    keys used to count from that opening and so never waited: the first daemons dealt their shares only
    among themselves. Each of the first three must now wait (its log says so) before dealing, and round 0
    must still finalize on an unmasked sum that every node agrees on."""
    base = tmp_path_factory.mktemp("secagg-late")
    genesis, keys = make_genesis(base, 4, "tiny", commit_window_s=8,
                                 extra_args=("--secure-aggregation", "--min-participants", "2"))
    env = {"OMP_NUM_THREADS": "1",
           "SWARMNODE_DATA": os.environ.get("SWARMNODE_DATA", "/usr/share/datasets/fashion-mnist")}
    swarm = LocalSwarm(base, genesis, keys, extra_env=env)
    waiting = "event=dealing_waits round=0 "
    try:
        for i in range(4):
            swarm.init_node(i)
        swarm.start_all([0, 1, 2])
        wait_for(lambda: all(waiting in swarm.nodes[i].log_path.read_text() for i in (0, 1, 2)), ROUND_TIMEOUT,
                 f"nodes 0-2 to wait for node 3's share key\n{swarm.tail(0)}", interval=0.2)
        swarm.start(3)
        hashes = wait_for(lambda: (h := swarm.final_hashes(0)) and 0 in h and h, 2 * ROUND_TIMEOUT,
                          f"round 0 final\n{swarm.tail(0)}")
        info = rows(swarm, 0)
        assert hashes[0] != info["baseHash"], f"round 0 settled on its base\n{swarm.tail(0, 40)}"
        for i in (1, 2, 3):
            got = wait_for(lambda i=i: swarm.final_hashes(i).get(0), ROUND_TIMEOUT, f"node{i} round 0")
            assert got == hashes[0], f"node{i} disagrees on round 0"
        for i in range(4):
            assert "event=secagg_unrecoverable" not in swarm.nodes[i].log_path.read_text(), swarm.tail(i, 40)
        me3 = "0x" + address_of(load_key(swarm.keys_dir / "node-3.key")).hex()
        print(f"\nround 0: key set {len(info['maskKeys'])} (node 3 in it: {me3 in lower(info['maskKeys'])}), "
              f"{len(info['commits'])} commits, final {hashes[0][:14]}")
    finally:
        swarm.close()
