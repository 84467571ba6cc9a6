#!/usr/bin/env python3
"""Per-round overhead of the swarm with large models: updates of several to tens of MB, not 0.8 MB.

For each --models entry (default: the seed paper's federated-net, 1.2M parameters, a 4.8 MB update; and
`resnet`, ResNet-18's shape, 11.2M parameters, a 44.7 MB update) it writes a genesis for --nodes daemons on
Fashion-MNIST (dominant-class partition, --samples per client, --local-steps SGD steps), runs the in-process
simulation for --rounds rounds (no scoring: training, encoding, aggregation only), then the same rounds with
one daemon per participant on loopback, and reports per round: the simulation's and the swarm's wall clock,
their difference (the swarm's overhead), the update and model bytes, the blob bytes each daemon fetched,
CPU seconds, and whether every round's model hash equals the simulation's. JSON goes to --out.

    python scripts/bench_large_models.py --out bench-results/large-models.json
    python scripts/bench_large_models.py --models resnet --rounds 3 --compression quantize:8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_compression import parse_run  # noqa: E402
from bench_swarm import run_swarm  # noqa: E402

TASK = """[task]
dataset = "fashion-mnist"
model = "{model}"
num_clients = {nodes}
partition = "dominant"
samples_per_client = {samples}
local_steps = {steps}
batch_size = 32
lr = 0.05
rule = "fedavgm"
max_update_norm = 1000.0
seed = 0

[task.partition_params]
p = 0.9

[task.rule_params]
server_lr = 1.0
momentum = 0.9
{compression}"""


def simulate(genesis: Path, rounds: int) -> list[dict[str, Any]]:
    import torch

    from consensus.genesis import load_genesis
    from swarmnode.experiment import Swarm
    from swarmnode.learning.data import load_dataset
    from swarmnode.learning.tasks import Task

    torch.set_num_threads(1)
    g = load_genesis(genesis)
    sim = Swarm.for_genesis(g, load_dataset(Task.from_dict(g.task).dataset))
    out = []
    for _ in range(rounds):
        cpu0 = time.process_time()
        rep = sim.run_round(score_clients=False, score_test=False)
        out.append({"round": rep.round, "hash": "0x" + rep.model_hash.hex(), "seconds": rep.seconds,
                    "cpu_seconds": time.process_time() - cpu0, "update_bytes": max(rep.update_bytes)})
        print(f"  simulation round {rep.round}: {rep.seconds:.1f} s", flush=True)
    return out


def bench_model(model: str, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    import tomllib

    from swarmnode.aggregation.codec import GlobalModel, encode_model
    from swarmnode.learning.tasks import Task, initial_params
    from swarmnode.node.localnet import make_genesis

    table = parse_run(args.compression)
    comp = ("\n[task.compression]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())) if table else ""
    task_file = base / f"{model}.task.toml"
    task_file.write_text(TASK.format(model=model, nodes=args.nodes, samples=args.samples, steps=args.local_steps,
                                     compression=comp))
    genesis, _keys = make_genesis(base / model, args.nodes, task_file, commit_window_s=args.commit_window_s)
    params = initial_params(Task.from_dict(tomllib.loads(task_file.read_text())["task"]))
    model_bytes = len(encode_model(GlobalModel(params)))
    n_params = sum(p.numel() for p in params.values())
    print(f"{model}: {n_params:,} parameters, model blob {model_bytes / 1e6:.1f} MB; simulation, {args.rounds} rounds",
          flush=True)
    sim = simulate(genesis, args.rounds)
    print(f"{model}: swarm of {args.nodes} daemons", flush=True)
    real = run_swarm(genesis, args.nodes, args.rounds, base / model / "swarm", args.round_timeout, score=False)
    rows = []
    for s, w in zip(sim, real["rounds"], strict=True):
        rows.append({"round": s["round"], "sim_seconds": s["seconds"], "swarm_seconds": w["seconds"],
                     "overhead_seconds": w["seconds"] - s["seconds"], "same_hash": s["hash"] == w["hash"]})
    steady = rows[1:] or rows
    mean = {k: sum(r[k] for r in steady) / len(steady) for k in ("sim_seconds", "swarm_seconds", "overhead_seconds")}
    return {"model": model, "parameters": n_params, "model_bytes": model_bytes, "update_bytes": sim[0]["update_bytes"],
            "compression": args.compression, "nodes": args.nodes, "rounds": rows, "steady": mean,
            "hashes_equal": all(r["same_hash"] for r in rows),
            "blob_bytes_fetched_per_node_per_round": sum(real["blob_bytes_fetched"]) / args.nodes / args.rounds,
            "swarm_cpu_seconds_per_round": sum(real["cpu_seconds"]) / args.rounds,
            "sim_cpu_seconds_per_round": sum(s["cpu_seconds"] for s in sim) / len(sim),
            "peak_rss_mb": real["peak_rss_mb"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="federated-net,resnet", help="comma-separated built-in models")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--samples", type=int, default=1000, help="training samples per client (default 1000)")
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--compression", default="none", help="none | quantize:BITS | topk:FRACTION[:BITS]")
    p.add_argument("--commit-window-s", type=int, default=60)
    p.add_argument("--round-timeout", type=float, default=900.0)
    p.add_argument("--base-dir", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "large-models.json")
    args = p.parse_args(argv)
    base = args.base_dir or Path(tempfile.mkdtemp(prefix="bench-large-"))
    base.mkdir(parents=True, exist_ok=True)
    results = [bench_model(m.strip(), args, base) for m in args.models.split(",")]
    print(f"\n{'model':>14} {'params':>11} {'update MB':>9} {'sim s':>7} {'swarm s':>8} {'overhead s':>10} "
          f"{'fetched MB/node/round':>21} {'same hashes':>11}")
    for r in results:
        st = r["steady"]
        print(f"{r['model']:>14} {r['parameters']:>11,} {r['update_bytes'] / 1e6:>9.1f} {st['sim_seconds']:>7.1f} "
              f"{st['swarm_seconds']:>8.1f} {st['overhead_seconds']:>10.1f} "
              f"{r['blob_bytes_fetched_per_node_per_round'] / 1e6:>21.1f} {str(r['hashes_equal']):>11}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
