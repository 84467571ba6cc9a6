"""System test: daemons and the in-process simulation of the same genesis finalize the same model hashes,
with unequal client shares (a Dirichlet partition) and a genesis max_samples below the largest share.

The rule is fedavgm, whose weights are the reported sample counts themselves: any difference in what a
daemon reports (training split or whole share, capped or not) or in which commits count changes the hash.
Both sides train with one torch thread (a node's learning.torch_threads default): local training's floating
point depends on the thread count.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swarmnode.node.localnet import LocalSwarm, make_genesis, wait_for

pytestmark = pytest.mark.slow

ROUNDS = 3
ROUND_TIMEOUT = 120.0
# the tiny task (mlp, 5 local steps) on whole Dirichlet shares: training splits of 11026, 13135, 7566 and
# 22273 images for seed 0, so a cap of 15000 applies to one participant only
TASK = """[task]
dataset = "fashion-mnist"
model = "mlp"
num_clients = 4
partition = "dirichlet"
samples_per_client = 0
local_steps = 5
lr = 0.05
rule = "fedavgm"
seed = 0

[task.partition_params]
alpha = 0.3

[task.rule_params]
server_lr = 1.0
momentum = 0.9
"""
MAX_SAMPLES = 15_000


def test_unequal_shares_give_the_simulations_model_hashes(tmp_path: Path) -> None:
    import torch

    from consensus.genesis import load_genesis
    from swarmnode.experiment import Swarm
    from swarmnode.learning.data import load_dataset
    from swarmnode.learning.tasks import Task

    task_file = tmp_path / "task.toml"
    task_file.write_text(TASK)
    genesis, keys = make_genesis(tmp_path, 4, task_file, commit_window_s=30,
                                 extra_args=("--max-samples", str(MAX_SAMPLES)))
    g = load_genesis(genesis)
    torch.set_num_threads(1)
    sim = Swarm.for_genesis(g, load_dataset(Task.from_dict(g.task).dataset))
    shares = sorted(len(c.train) for c in sim.clients)
    assert len(set(shares)) == 4 and shares[-2] <= MAX_SAMPLES < shares[-1], shares
    expected = ["0x" + sim.run_round(score_clients=False, score_test=False).model_hash.hex() for _ in range(ROUNDS)]

    env = {"OMP_NUM_THREADS": "1", "SWARMNODE_DATA": os.environ.get("SWARMNODE_DATA", "/usr/share/datasets/fashion-mnist")}
    with LocalSwarm(tmp_path / "nodes", genesis, keys, extra_env=env) as swarm:
        for i in range(4):
            swarm.init_node(i)
        swarm.start_all(list(range(4)))
        for r in range(ROUNDS):
            info = wait_for(lambda r=r: (x := swarm.try_rpc(0, "swarm_getRound", r)) and x["finalized"] and x,
                            ROUND_TIMEOUT, f"round {r} final\n{swarm.tail(0)}", interval=0.25)
            reported = sorted(int(c["numSamples"]) for c in info["commits"])
            assert reported == sorted(min(n, MAX_SAMPLES) for n in shares), (r, reported, shares)
            assert info["finalHash"] == expected[r], f"round {r}: swarm {info['finalHash']}, simulation {expected[r]}"
