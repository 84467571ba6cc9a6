#!/usr/bin/env python3
"""Compressed updates: bytes per node per round and accuracy, the seed experiment in process.

Runs a genesis's task (default genesis/seed-10.toml) in the in-process simulation (swarmnode.experiment.Swarm),
which encodes, decodes and aggregates updates exactly as daemons do, once per --runs setting (the genesis
[task.compression] table: none, quantize:BITS, topk:FRACTION[:BITS]). For each it records the bytes of every
update blob (what a node sends once per round and every peer fetches), the test accuracy every --eval-every
rounds and at the end, and the CPU seconds of encoding. Prints a table against the uncompressed run and
writes JSON (--out). One torch thread, as a node's default. Several runs can share a machine: pass disjoint
--runs to several processes and --merge their JSON files.

    python scripts/bench_compression.py --out bench-results/compression.json             # 60 rounds each
    python scripts/bench_compression.py --runs none,quantize:8 --rounds 60 --out a.json
    python scripts/bench_compression.py --merge a.json b.json --out bench-results/compression.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_RUNS = "none,quantize:8,quantize:4,topk:0.1,topk:0.01"


def parse_run(text: str) -> dict[str, Any]:
    """none | quantize:BITS | topk:FRACTION[:BITS] as a [task.compression] table ({} for none)."""
    method, _, rest = text.partition(":")
    try:
        if method == "none" and not rest:
            return {}
        if method == "quantize" and rest:
            return {"method": "quantize", "bits": int(rest)}
        if method == "topk" and rest:
            frac, _, bits = rest.partition(":")
            return {"method": "topk", "fraction": float(frac), "bits": int(bits or 8)}
    except ValueError:
        pass
    raise SystemExit(f"error: a run is none, quantize:BITS or topk:FRACTION[:BITS]; got {text!r}")


def label(table: dict[str, Any]) -> str:
    if not table:
        return "none"
    if table["method"] == "quantize":
        return f"quantize:{table['bits']}"
    return f"topk:{table['fraction']:g}:{table['bits']}"


def run_one(genesis: Path, table: dict[str, Any], rounds: int, eval_every: int, data_dir: str | None) -> dict[str, Any]:
    import torch

    from consensus.genesis import load_genesis
    from swarmnode.experiment import Swarm
    from swarmnode.learning.data import load_dataset
    from swarmnode.learning.tasks import Task

    torch.set_num_threads(1)
    g = load_genesis(genesis)
    task = dataclasses.replace(Task.from_dict(g.task), compression=dict(table))
    swarm = Swarm(task, load_dataset(task.dataset, data_dir), max_samples=g.rounds.max_samples)
    acc: dict[int, float] = {}
    sizes: list[int] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for r in range(rounds):
        score = (r + 1) % eval_every == 0 or r == rounds - 1
        rep = swarm.run_round(score_clients=False, score_test=score)
        sizes.extend(rep.update_bytes)
        if score:
            acc[r] = rep.global_test.accuracy
            print(f"  {label(table):>16} round {r:3d} acc {100 * rep.global_test.accuracy:6.2f}% "
                  f"update {sizes[-1]:,} B", flush=True)
    return {"run": label(table), "compression": table, "rounds": rounds, "accuracy": acc,
            "final_accuracy": acc[rounds - 1], "bytes_per_update_mean": sum(sizes) / len(sizes),
            "bytes_per_update_max": max(sizes), "updates": len(sizes),
            "cpu_seconds": time.process_time() - cpu0, "wall_seconds": time.perf_counter() - wall0}


def table_text(results: list[dict[str, Any]]) -> str:
    base = next((r for r in results if r["run"] == "none"), None)
    lines = [f"{'run':>16} {'bytes/update':>13} {'fewer bytes':>11} {'accuracy':>9} {'vs none':>8} {'rounds':>6}"]
    for r in results:
        ratio = base["bytes_per_update_mean"] / r["bytes_per_update_mean"] if base else float("nan")
        diff = 100 * (r["final_accuracy"] - base["final_accuracy"]) if base else float("nan")
        lines.append(f"{r['run']:>16} {r['bytes_per_update_mean']:>13,.0f} {ratio:>10.2f}x "
                     f"{100 * r['final_accuracy']:>8.2f}% {diff:>+8.2f} {r['rounds']:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genesis", type=Path, default=ROOT / "genesis" / "seed-10.toml", help="the task to run")
    p.add_argument("--runs", default=DEFAULT_RUNS, help=f"comma-separated settings (default {DEFAULT_RUNS})")
    p.add_argument("--rounds", type=int, default=60, help="rounds per run (default 60, the seed's length)")
    p.add_argument("--eval-every", type=int, default=10, help="score the global model every N rounds")
    p.add_argument("--data-dir", help="directory holding the dataset's IDX files (searched first)")
    p.add_argument("--merge", type=Path, nargs="+", help="combine the JSON of earlier runs instead of running")
    p.add_argument("--out", type=Path, default=Path("bench-results") / "compression.json")
    args = p.parse_args(argv)
    if args.merge:
        results = [r for f in args.merge for r in json.loads(f.read_text())["results"]]
    else:
        results = []
        for text in args.runs.split(","):
            results.append(run_one(args.genesis, parse_run(text.strip()), args.rounds, args.eval_every, args.data_dir))
            print(table_text(results), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"genesis": str(args.genesis), "results": results}, indent=1))
    print(table_text(results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
