"""System test: a swarm whose genesis compresses updates (top-k with error feedback, 4-bit values) finalizes
the in-process simulation's model hashes round after round, and its daemons send compressed blobs only.

The hashes can only agree if every daemon encodes its delta with the same public rounding seed, carries the
same error-feedback residual from round to round, and every validator decodes and aggregates the compressed
bytes to the same integers as the simulation does.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from swarmnode.node.localnet import running_swarm, wait_for

pytestmark = pytest.mark.slow

ROUNDS = 3
ROUND_TIMEOUT = 150.0


def test_compressed_updates_give_the_simulations_model_hashes(tmp_path: Path) -> None:
    import torch

    from consensus.genesis import load_genesis
    from swarmnode.aggregation.compress import KIND_COMPRESSED
    from swarmnode.experiment import Swarm
    from swarmnode.learning.data import load_dataset
    from swarmnode.learning.tasks import Task

    # round 0 opens at the genesis timestamp: "now", so that its window (which closes early once all four
    # have committed) cannot have passed before the daemons are up and a late starter's commit is lost
    args = ("--compression", "topk", "--compression-fraction", "0.05", "--compression-bits", "4",
            "--genesis-time", str(int(time.time())))
    with running_swarm(tmp_path, 4, "tiny", commit_window_s=90, genesis_args=args) as swarm:
        g = load_genesis(tmp_path / "genesis.toml")
        assert g.task["compression"] == {"method": "topk", "bits": 4, "fraction": 0.05}
        torch.set_num_threads(1)
        sim = Swarm.for_genesis(g, load_dataset(Task.from_dict(g.task).dataset))
        reports = [sim.run_round(score_clients=False, score_test=False) for _ in range(ROUNDS)]
        for r, rep in enumerate(reports):
            info = wait_for(lambda r=r: (x := swarm.try_rpc(0, "swarm_getRound", r)) and x["finalized"] and x,
                            ROUND_TIMEOUT, f"round {r} final\n{swarm.tail(0)}", interval=0.25)
            assert len(info["commits"]) == 4, info["commits"]
            assert info["finalHash"] == "0x" + rep.model_hash.hex(), f"round {r}: swarm and simulation differ"
            assert rep.used == 4 and not rep.excluded
        # every update blob a daemon trained was compressed: the size the simulation measured for its client
        sizes = sorted(int(m) for i in range(4) for m in re.findall(r"event=trained .*? bytes=(\d+)", swarm.tail(i, 400)))
        assert sizes and all(s in {b for rep in reports for b in rep.update_bytes} for s in sizes), sizes
        plain_bytes = 4 * sum(p.numel() for p in sim.model.params.values())
        assert max(sizes) * 8 < plain_bytes, (max(sizes), plain_bytes)
        blob_dir = next(tmp_path.glob("node0/**/blobs"), None)
        assert blob_dir is not None, sorted(str(p) for p in tmp_path.glob("node0/**"))[:20]
        # the update blobs node 0 stored (its own and the ones it fetched) are all compressed ones
        kinds = [f.read_bytes()[5] for f in blob_dir.rglob("*") if f.is_file() and f.stat().st_size < plain_bytes]
        assert kinds and set(kinds) == {KIND_COMPRESSED}, kinds
