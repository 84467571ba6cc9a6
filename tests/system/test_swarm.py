"""System test: daemon processes started through the CLI on loopback, tiny task, real libp2p + BFT chain.

One swarm, in phases (each waits on a condition over JSON-RPC with a deadline, never on a bare sleep):
  n4 late join: validators 0-2 start, train round 0 without node 3 (its window closes at the straggler deadline); node 3
      joins late, syncs, fetches the final model by hash and commits in a later round.
  follower: a node with a new key (no stake, not registered) syncs, fetches the final model by hash and
      aggregates every round itself, agreeing with the chain.
  3 rounds: every node holds the final model of every finalized round and agrees with the chain;
      `swarmnode chain rounds --json` shows them.
  pruning: update blobs of rounds more than KEEP_ROUNDS behind the last final one are deleted, final
      models of rounds more than KEEP_MODELS behind (the newest always kept).
  kill -9 + restart of node 2 mid-round: the swarm keeps finalizing; node 2 catches up, commits again,
      and is never slashed (the signing record refuses to double-sign).
  corrupted model store on node 1 (its safetensors file and the blob copy it serves): detected by hash,
      quarantined, and the model fetched from peers.
  a peer claiming every blob (tests/system/liar_peer.py, its own process; not a participant): it
      announces every update and model and would serve a real but wrong model; no node asks it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmnode.node.keys import address_of, load_key
from swarmnode.node.localnet import LocalSwarm, make_genesis, run_cli, wait_for
from swarmnode.node.store import ModelStore

pytestmark = pytest.mark.slow

ROUND_TIMEOUT = 90.0
KEEP_ROUNDS = 3  # update blobs of rounds this far behind the last final one are deleted
KEEP_MODELS = 6  # final models of rounds this far behind the last final one are deleted


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    base = tmp_path_factory.mktemp("swarm")
    genesis, keys = make_genesis(base, 4, "tiny", commit_window_s=8)
    env = {"OMP_NUM_THREADS": "1", "SWARMNODE_DATA": os.environ.get("SWARMNODE_DATA", "/usr/share/datasets/fashion-mnist")}
    s = LocalSwarm(base, genesis, keys, extra_env=env, init_args=("--keep-update-rounds", str(KEEP_ROUNDS),
                                                                      "--keep-model-rounds", str(KEEP_MODELS)))
    try:
        for i in range(4):
            s.init_node(i)
        yield s
    finally:
        s.close()
        for i in s.nodes:
            assert not s.nodes[i].alive(), f"node{i} still running after close"


def finalized_on(s: LocalSwarm, i: int, rounds: int) -> dict[int, str] | None:
    hashes = s.final_hashes(i)
    return hashes if len(hashes) >= rounds else None


def node_info(s: LocalSwarm, i: int) -> dict:
    info = s.try_rpc(i, "swarm_node")
    assert info is not None or s.nodes[i].alive(), f"node{i} died:\n{s.tail(i)}"
    return info or {}


def committers(s: LocalSwarm, i: int, r: int) -> set[str]:
    info = s.try_rpc(i, "swarm_getRound", r) or {"commits": []}
    return {c["participant"].lower() for c in info["commits"]}


def address(s: LocalSwarm, i: int) -> str:
    return "0x" + address_of(load_key(s.nodes[i].data_dir / "node.key")).hex()


def wait_round_final(s: LocalSwarm, i: int, r: int) -> dict[int, str]:
    return wait_for(lambda: (h := s.final_hashes(i)) and r in h and h, ROUND_TIMEOUT,
                    f"round {r} final on node{i}\n{s.tail(i)}")


def wait_agrees(s: LocalSwarm, i: int, r: int, final: str) -> None:
    """Node i holds round r's final model: it computed it, or fetched it after disagreeing."""
    def ok() -> bool:
        info = node_info(s, i)
        return (info.get("round") or 0) > r and info.get("haveBase") is True and (
            info["aggregates"].get(str(r)) in (None, final))
    wait_for(ok, ROUND_TIMEOUT, f"node{i} to hold round {r}'s final model {final}\n{s.tail(i)}")


def test_late_joiner_catches_up_and_takes_part(swarm: LocalSwarm) -> None:
    for i in range(3):
        swarm.start(i)
    first = wait_round_final(swarm, 0, 0)
    assert address(swarm, 3) not in committers(swarm, 0, 0)
    swarm.start(3)
    wait_for(lambda: node_info(swarm, 3).get("height", 0) >= node_info(swarm, 0).get("height", 1) - 2,
             ROUND_TIMEOUT, "node3 to sync the chain")
    joined = wait_for(lambda: node_info(swarm, 3).get("round") is not None and node_info(swarm, 3)["round"] + 1,
                      ROUND_TIMEOUT, "node3 to observe the round") - 1
    wait_agrees(swarm, 3, 0, first[0])

    def node3_committed() -> int | None:
        current = node_info(swarm, 0).get("round") or 0
        return next((r for r in range(joined, current + 1) if address(swarm, 3) in committers(swarm, 0, r)), None)

    r3 = wait_for(node3_committed, ROUND_TIMEOUT, f"node3 to commit an update\n{swarm.tail(3)}")
    assert r3 >= joined


def test_three_rounds_same_model_everywhere(swarm: LocalSwarm) -> None:
    hashes = wait_for(lambda: finalized_on(swarm, 0, 3), 3 * ROUND_TIMEOUT, f"3 final rounds\n{swarm.tail(0)}")
    for i in range(4):
        theirs = wait_for(lambda i=i: finalized_on(swarm, i, 3), ROUND_TIMEOUT, f"3 final rounds on node{i}")
        common = sorted(set(hashes) & set(theirs))
        assert [hashes[r] for r in common] == [theirs[r] for r in common], f"node{i} chain disagrees"
        for r in range(3):
            wait_agrees(swarm, i, r, hashes[r])
    out = run_cli("chain", "rounds", "--json", "--rpc", swarm.nodes[1].rpc_url)
    rows = json.loads(out.stdout)
    final = [r for r in rows if r["finalized"]]
    assert [r["round"] for r in final][:3] == [0, 1, 2]
    assert all(r["modelHash"] == hashes[r["round"]] for r in final[:3])
    assert all(r["participants"] >= 3 for r in final[:3]), rows
    table = run_cli("chain", "rounds", "--rpc", swarm.nodes[1].rpc_url).stdout
    assert "global model hash" in table and hashes[0] in table


def test_old_update_blobs_and_final_models_are_pruned(swarm: LocalSwarm) -> None:
    wait_for(lambda: finalized_on(swarm, 0, KEEP_MODELS + 3), 3 * ROUND_TIMEOUT, f"{KEEP_MODELS + 3} final rounds")
    wait_for(lambda: node_info(swarm, 0).get("counters", {}).get("models_pruned"), ROUND_TIMEOUT, "pruning on node0")
    data = swarm.nodes[0].data_dir
    blobs, models = data / "blobs", data / "store" / "models"

    def held(r: int) -> list[bool]:
        cids = [c["updateHash"][2:] for c in swarm.rpc(0, "swarm_getRound", r)["commits"]]
        return [(blobs / cid[:2] / cid).is_file() for cid in cids]

    def marker() -> dict[str, int]:
        return json.loads((data / "pruned.json").read_text())

    assert not any(held(0)), "round 0's updates should have been pruned"
    last = max(swarm.final_hashes(0))
    assert held(last) and all(held(last)), f"round {last}'s updates must still be held"
    # final models: gone up to the marker, kept after it (both sides of keep_model_rounds), in both stores
    before = marker()["models_through"]
    finals = {r: h[2:] for r, h in swarm.final_hashes(0).items()}
    present = {r: (models / f"{h}.safetensors").is_file() and (blobs / h[:2] / h).is_file() for r, h in finals.items()}
    after = marker()["models_through"]
    assert before >= 0, marker()
    assert not any(present[r] for r in finals if r <= before), f"models through round {before} must be gone: {present}"
    assert all(present[r] for r in finals if r > after), f"models after round {after} must be kept: {present}"
    assert present[max(finals)], "the newest final model is always kept"


def test_follower_with_a_new_key_syncs_and_verifies_the_latest_model(swarm: LocalSwarm) -> None:
    swarm.init_node(4, fresh_key=True)
    swarm.start(4)
    try:
        target = max(swarm.final_hashes(0)) + 1
        hashes = wait_round_final(swarm, 0, target)
        wait_agrees(swarm, 4, target, hashes[target])
        info = node_info(swarm, 4)
        assert info["validator"] is False and info["participantIndex"] is None
        assert info["counters"]["models_fetched"] >= 1, "the follower should fetch final models by hash"
        joined = info["round"]  # from the next full round on it aggregates every round itself

        def own_aggregate() -> int | None:
            # a poll: an RPC that times out under load (node_info -> {}) means "not yet"
            done = [int(r) for r in node_info(swarm, 4).get("aggregates", {}) if int(r) >= joined]
            return min(done) if done else None

        mine = wait_for(own_aggregate, ROUND_TIMEOUT, f"the follower's own aggregate of a round >= {joined}\n"
                                                      f"{swarm.tail(4)}")
        hashes = wait_round_final(swarm, 0, mine)
        assert node_info(swarm, 4)["aggregates"][str(mine)] == hashes[mine], "its aggregate disagrees"
    finally:
        assert swarm.stop(4) == 0, f"follower did not stop cleanly:\n{swarm.tail(4)}"


def test_kill9_restart_catches_up_without_double_signing(swarm: LocalSwarm) -> None:
    def node2_committed_open_round() -> int | None:
        info = node_info(swarm, 0)
        r = info.get("round")
        return r + 1 if r is not None and info.get("windowOpen") and address(swarm, 2) in committers(swarm, 0, r) else None

    mid = wait_for(node2_committed_open_round, ROUND_TIMEOUT, "node2 to commit in an open round", interval=0.1) - 1
    swarm.kill(2)  # SIGKILL mid-round, after its commit: the others must still have its update (DA)
    wait_round_final(swarm, 0, mid + 1)  # 3 of 4 validators keep the swarm going
    assert address(swarm, 2) in committers(swarm, 0, mid)
    swarm.start(2)
    target = max(swarm.final_hashes(0)) + 1
    hashes = wait_round_final(swarm, 0, target)
    wait_agrees(swarm, 2, target, hashes[target])
    stakes = {v["address"].lower(): int(v["stake"]) for v in swarm.rpc(0, "swarm_validators")}
    assert stakes[address(swarm, 2)] == 32 * 10**18, f"node2 was slashed: {stakes}"
    assert all(s == 32 * 10**18 for s in stakes.values()), stakes


def corrupt(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF  # flip bits in the tensor data: still parses, wrong hash
    path.write_bytes(bytes(raw))


def test_corrupted_model_store_is_detected_and_recovered(swarm: LocalSwarm) -> None:
    # While node 1 runs: once it has committed to the open round r, damage G_r in its model store and the
    # blob copy it serves. Closing the window makes it load G_r again to aggregate: the damage must be
    # detected by hash, both files quarantined, and G_r fetched from peers. (If the window closed before
    # the damage landed, the next round is tried.)
    store = swarm.nodes[1].data_dir / "store"
    quarantine, blob_quarantine = store / "corrupt", swarm.nodes[1].data_dir / "corrupt-blobs"
    # with node 3 down every window waits out the straggler grace after the others' commits (instead of
    # closing early in the block of the last commit), which leaves time to damage G_r after node 1 commits
    swarm.kill(3)
    for _attempt in range(3):
        def committed_open_round() -> int | None:
            info = node_info(swarm, 1)
            r = info.get("round")
            ok = r is not None and info.get("windowOpen") and address(swarm, 1) in committers(swarm, 1, r)
            return r + 1 if ok else None

        r = wait_for(committed_open_round, ROUND_TIMEOUT, "node1 to commit in an open round", interval=0.05) - 1
        base = node_info(swarm, 1)["baseModel"][2:]
        corrupt(store / "models" / f"{base}.safetensors", -10)
        corrupt(swarm.nodes[1].data_dir / "blobs" / base[:2] / base, 100)
        hashes = wait_round_final(swarm, 0, r)
        wait_agrees(swarm, 1, r, hashes[r])
        if quarantine.exists() and any(quarantine.iterdir()):
            break
    assert quarantine.exists() and any(quarantine.iterdir()), "the corrupt model was never detected"
    assert blob_quarantine.exists() and any(blob_quarantine.iterdir()), "the corrupt blob was not quarantined"
    assert node_info(swarm, 1)["counters"]["models_fetched"] >= 1, "node1 never fetched the model again"
    # node 1 either aggregated round r itself (after refetching G_r) or, if the swarm finalized first, fetched
    # G_{r+1} by hash: either way it never holds a result that disagrees with the chain
    assert node_info(swarm, 1)["aggregates"].get(str(r)) in (None, hashes[r]), "node1's aggregate disagrees"
    ModelStore(store).get_model(bytes.fromhex(base))  # back, intact: it hashes to its name again
    ModelStore(store).get_model(bytes.fromhex(hashes[r][2:]))  # and round r's final model, intact
    swarm.start(3)


def test_a_peer_claiming_every_blob_gains_nothing_and_plants_nothing(swarm: LocalSwarm) -> None:
    # A liar joins (not a participant), claims every update and final model the chain mentions, and would
    # serve a recent final model for all of them. Provider records are taken from active participants
    # only, so its claims never get it asked; the swarm keeps finalizing and agreeing. A node with no
    # announced provider for a blob (e.g. node 3, restarted by the test before this one, missed the
    # announcements) asks every other peer in random order, the liar among them: whatever the liar serves
    # it then is refused by hash (BlobCorrupted) and never stored. (A participant serving wrong bytes is
    # tests/system/test_hostile.py's equivocation case.)
    report = swarm.base / "liar.json"
    log_start = [len(swarm.nodes[i].log_path.read_text()) for i in range(4)]
    log = open(swarm.base / "liar.log", "wb")  # noqa: SIM115 - owned by the child process
    liar = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("liar_peer.py")), "--rpc", swarm.nodes[0].rpc_url,
         "--bootstrap", swarm.nodes[0].listen[0], "--report", str(report)],
        stdout=log, stderr=subprocess.STDOUT, env=swarm.env, start_new_session=True)
    log.close()
    try:
        def liar_report() -> dict | None:
            assert liar.poll() is None, (swarm.base / "liar.log").read_text()[-3000:]
            got = json.loads(report.read_text()) if report.exists() else {}
            return got if got.get("announced") else None

        wait_for(liar_report, ROUND_TIMEOUT, "the liar to announce blobs")
        start = max(swarm.final_hashes(0)) + 1
        hashes = wait_round_final(swarm, 0, start + 2)
        for i in range(4):
            wait_agrees(swarm, i, start + 2, hashes[start + 2])
        final = json.loads(report.read_text())
        caught = sum(swarm.nodes[i].log_path.read_text()[log_start[i]:].count("failed: BlobCorrupted: peer ")
                     for i in range(4))
        assert final["announced"] > 0, final
        assert final["served_wrong"] <= caught, f"{final}: only {caught} wrong blobs were refused by hash"
        assert all(node_info(swarm, i)["aggregates"].get(str(r)) in (None, hashes[r])
                   for i in range(4) for r in (start, start + 1, start + 2)), "a node disagrees with the chain"
    finally:
        liar.terminate()
        liar.wait(timeout=20)
