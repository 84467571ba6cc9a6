#!/usr/bin/env python3
"""Benchmark: the real swarm (daemon processes on loopback) against the in-process simulation.

Same genesis task, seeds and participants, so both must produce the same global model hashes. The
simulation runs before and after the swarm (round times averaged). Prints per round: global test accuracy
(simulation vs swarm), hash equality, wall clock; then the overhead ratio,
blob bytes fetched per node per round, loopback bytes per node per round, and peak RSS per daemon. JSON
goes to --out.

    python scripts/bench_swarm.py --genesis genesis/seed-10.toml --rounds 5        # 10 daemons
    python scripts/bench_swarm.py --genesis genesis/devnet-4.toml --rounds 8
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from consensus.genesis import load_genesis  # noqa: E402
from swarmnode.node.localnet import LocalSwarm, SwarmTimeout, dev_keys_for, test_accuracy_of, wait_for  # noqa: E402
from swarmnode.node.soak import status_mb  # noqa: E402


def loopback_bytes() -> int:
    """Bytes through `lo` so far, both directions (machine-wide: an upper bound for our traffic)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            fields = rest.split()
            return int(fields[0]) + int(fields[8])
    return 0


def peak_rss_mb(pid: int) -> float | None:
    return status_mb(pid, "VmHWM")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, all its threads (including ones that exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time so far of each live thread of a process, summed by thread kind: its name without a trailing
    number ("train-1" and "train-0" are "train"). Threads that already exited are not in it."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kind = name.rstrip("0123456789").rstrip("- ") or name
        out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def simulate(genesis_path: Path, rounds: int) -> list[dict]:
    import torch

    from swarmnode.experiment import Swarm
    from swarmnode.learning.data import load_dataset
    from swarmnode.learning.evaluate import evaluate
    from swarmnode.learning.tasks import Task

    torch.set_num_threads(1)
    genesis = load_genesis(genesis_path)
    sim = Swarm.for_genesis(genesis, load_dataset(Task.from_dict(genesis.task).dataset))
    out = []
    for _ in range(rounds):
        # timed like a daemon's round: training, the clients' validation scores (a daemon scores its held-out
        # split every round) and aggregation, but not the test set, which no daemon scores while timed (the
        # swarm's models are scored after its run); the simulation's model is scored after each timed round
        cpu0 = time.process_time()
        rep = sim.run_round(score_test=False)
        cpu = time.process_time() - cpu0
        accuracy = evaluate(sim.task.model_spec(), sim.model.params, sim.dataset.test).accuracy
        out.append({"round": rep.round, "hash": "0x" + rep.model_hash.hex(), "test_accuracy": accuracy,
                    "seconds": rep.seconds, "cpu_seconds": cpu})
        print(f"  simulation round {rep.round}: test acc {accuracy * 100:.1f}%  {rep.seconds:.1f} s", flush=True)
    return out


def run_swarm(genesis_path: Path, nodes: int, rounds: int, base: Path, round_timeout: float, *,
              score: bool = True) -> dict:
    """The timed rounds through `nodes` daemons. Each round carries its finality time (`t_final`, on the
    monotonic clock, as `t_start` is) and, with `score`, its final model's test accuracy (scored after
    the timed run; scripts/bench_vs_flower.py scores outside the measured processes instead)."""
    genesis = load_genesis(genesis_path)
    keys = dev_keys_for(genesis_path, base, max(nodes, len(genesis.validators)))
    swarm = LocalSwarm(base, genesis_path.resolve(), keys, extra_env={"OMP_NUM_THREADS": "1"})
    try:
        for i in range(nodes):
            swarm.init_node(i)
        swarm.start_all(list(range(nodes)))  # no node scores the test set while timed: that comes after
        pids = [json.loads((swarm.nodes[i].data_dir / "node.json").read_text())["pid"] for i in range(nodes)]
        cpu_start = [cpu_seconds(p) or 0.0 for p in pids]
        t_start, lo_start = time.monotonic(), loopback_bytes()
        finals: list[float] = []
        results = []
        for r in range(rounds):
            info = wait_for(lambda r=r: (x := swarm.try_rpc(0, "swarm_getRound", r)) and x["finalized"] and x,
                            round_timeout, f"round {r} final", interval=0.25)
            finals.append(time.monotonic())
            if r == 0:  # the breakdown by thread is of the steady rounds
                threads_start = [thread_cpu_seconds(p) for p in pids]
                cpu_steady_start = [cpu_seconds(p) or 0.0 for p in pids]
            results.append({"round": r, "hash": info["finalHash"], "commits": len(info["commits"]),
                            "seconds": finals[-1] - (finals[-2] if r else t_start), "t_final": finals[-1]})
            print(f"  swarm round {r}: {len(info['commits'])} commits, {results[-1]['seconds']:.1f} s", flush=True)
        lo_total = loopback_bytes() - lo_start
        infos = [swarm.try_rpc(i, "swarm_node") or {} for i in range(nodes)]
        fetched = [info.get("counters", {}).get("blob_bytes_fetched", 0) for info in infos]
        rss = [peak_rss_mb(p) for p in pids]
        cpu = [(c or 0.0) - c0 for c, c0 in zip((cpu_seconds(p) for p in pids), cpu_start, strict=True)]
        by_thread: dict[str, float] = {}
        for pid, before in zip(pids, threads_start, strict=True):
            for kind, seconds in thread_cpu_seconds(pid).items():
                by_thread[kind] = by_thread.get(kind, 0.0) + seconds - before.get(kind, 0.0)
        steady = sum((cpu_seconds(p) or 0.0) - c0 for p, c0 in zip(pids, cpu_steady_start, strict=True))
        by_thread["(threads that exited)"] = steady - sum(by_thread.values())
        out = {"cpu_seconds_by_thread_rounds_1plus": by_thread, "chain_cache": [i.get("chainCache") for i in infos],
               "rounds": results, "loopback_bytes": lo_total, "blob_bytes_fetched": fetched, "peak_rss_mb": rss,
               "cpu_seconds": cpu, "elapsed": time.monotonic() - t_start, "t_start": t_start,
               "store": str(swarm.nodes[0].data_dir / "store")}
    finally:
        swarm.close()
    if score:
        score_final_models(genesis_path, swarm.nodes[0].data_dir / "store", results)
    return out


def score_final_models(genesis_path: Path, store_dir: Path, results: list[dict]) -> None:
    """Global test accuracy of each round's final model as node 0 stored it, scored after the timed run."""
    for res in results:
        res["test_accuracy"] = test_accuracy_of(genesis_path, store_dir, res["hash"])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genesis", type=Path, default=ROOT / "genesis" / "seed-10.toml")
    ap.add_argument("--nodes", type=int, help="daemons (default: one per genesis validator)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-timeout", type=float, default=300.0)
    ap.add_argument("--base-dir", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_swarm.json")
    args = ap.parse_args(argv)
    genesis = load_genesis(args.genesis)
    nodes = args.nodes or len(genesis.validators)
    base = args.base_dir or Path(tempfile.mkdtemp(prefix="bench-swarm-"))
    # The simulation runs before and after the swarm and its round times are averaged: this VM's speed
    # drifts over minutes (the same simulation has taken 5.0 to 11 s per round), and timing it on one
    # side only put that drift into the ratio.
    print(f"simulation: {args.rounds} rounds of {args.genesis.name} in-process, 1 thread", flush=True)
    sim_before = simulate(args.genesis, args.rounds)
    print(f"swarm: {nodes} daemons, logs in {base}", flush=True)
    try:
        real = run_swarm(args.genesis, nodes, args.rounds, base, args.round_timeout)
    except KeyboardInterrupt:
        print("interrupted: every daemon stopped", file=sys.stderr)
        return 130
    except (SwarmTimeout, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("simulation again, after the swarm", flush=True)
    sim_after = simulate(args.genesis, args.rounds)
    if [s["hash"] for s in sim_before] != [s["hash"] for s in sim_after]:
        print("error: the simulation is not deterministic (hashes differ between its two runs)", file=sys.stderr)
        return 1
    sim = [{**a, "seconds": (a["seconds"] + b["seconds"]) / 2, "cpu_seconds": (a["cpu_seconds"] + b["cpu_seconds"]) / 2,
            "seconds_before": a["seconds"], "seconds_after": b["seconds"]} for a, b in zip(sim_before, sim_after, strict=True)]
    print(f"\n{'round':>5}  {'sim acc':>8}  {'swarm acc':>9}  {'same hash':>9}  {'sim s (before/after)':>20}  "
          f"{'swarm s':>7}")
    for s, w in zip(sim, real["rounds"], strict=True):
        acc = f"{w['test_accuracy'] * 100:.1f}%" if w.get("test_accuracy") is not None else "-"
        both = f"{s['seconds']:.1f} ({s['seconds_before']:.1f}/{s['seconds_after']:.1f})"
        print(f"{s['round']:>5}  {s['test_accuracy'] * 100:>7.1f}%  {acc:>9}  {str(s['hash'] == w['hash']):>9}  "
              f"{both:>20}  {w['seconds']:>7.1f}")
    steady = real["rounds"][1:] or real["rounds"]
    sim_steady = sim[1:] or sim
    ratio = (sum(w["seconds"] for w in steady) / len(steady)) / (sum(s["seconds"] for s in sim_steady) / len(sim_steady))
    per_node_round = sum(real["blob_bytes_fetched"]) / nodes / args.rounds
    lo_per_node_round = real["loopback_bytes"] / nodes / args.rounds
    summary = {
        "genesis": str(args.genesis), "nodes": nodes, "rounds": args.rounds,
        "hashes_equal": all(s["hash"] == w["hash"] for s, w in zip(sim, real["rounds"], strict=True)),
        "overhead_ratio_rounds_1plus": ratio,
        "blob_bytes_fetched_per_node_per_round": per_node_round,
        "loopback_bytes_per_node_per_round": lo_per_node_round,
        "peak_rss_mb": real["peak_rss_mb"], "simulation": sim, "swarm": real,
    }
    print(f"\nhashes equal every round: {summary['hashes_equal']}")
    mean_before = sum(s["seconds_before"] for s in sim_steady) / len(sim_steady)
    mean_after = sum(s["seconds_after"] for s in sim_steady) / len(sim_steady)
    summary["simulation_round_seconds_before_after"] = [mean_before, mean_after]
    print(f"wall clock overhead (rounds >= 1, swarm / simulation): {ratio:.2f}x "
          f"(simulation {mean_before:.1f} s per round before the swarm, {mean_after:.1f} s after)")
    print(f"blob bytes fetched per node per round: {per_node_round / 1e6:.2f} MB "
          f"(loopback, all traffic: {lo_per_node_round / 1e6:.2f} MB)")
    print(f"peak RSS per daemon (MB): {', '.join(f'{x:.0f}' for x in real['peak_rss_mb'] if x is not None)}")
    busy = sum(real["cpu_seconds"]) / (real["elapsed"] * (os.cpu_count() or 1))
    print(f"CPU seconds per daemon over the timed rounds: {', '.join(f'{x:.1f}' for x in real['cpu_seconds'])} "
          f"(machine {100 * busy:.0f}% busy)")
    sim_cpu = sum(s["cpu_seconds"] for s in sim) / len(sim)
    print(f"CPU seconds per round: swarm {sum(real['cpu_seconds']) / args.rounds:.1f} (all daemons), "
          f"simulation {sim_cpu:.1f}")
    steady_rounds = max(1, args.rounds - 1)
    print("CPU seconds per round by thread kind, rounds >= 1 (all daemons): " + ", ".join(
        f"{kind} {seconds / steady_rounds:.1f}" for kind, seconds in
        sorted(real["cpu_seconds_by_thread_rounds_1plus"].items(), key=lambda kv: -kv[1]) if seconds >= 0.05))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if summary["hashes_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
