#!/usr/bin/env python3
"""Round time with stragglers: the full swarm, 1 of 4 daemons killed, 1 of 4 cut off, and a healed host.

Four validator daemons (real processes through the CLI), each on a host of its own (Linux network
namespaces joined by a bridge; needs root; --loopback runs everything on 127.0.0.1 and skips the cut).
Phases, each timed by polling node 0 for finalized rounds (wall clock between finalizations):
  full      all four up
  killed    node 3 kill -9'd: rounds wait for the straggler grace while it is still expected, then
            (after absent_rounds missed rounds) it is dropped from the expected set
  rejoined  node 3 restarted: seconds until it commits again
  cut       node 2's host cut off the network (its process keeps running)
  healed    the cut host back: seconds until its chain reaches the others' height, and until it commits
Prints a table of round times and ratios to the full swarm, and writes JSON with --out.

    python scripts/bench_liveness.py --out bench-results/liveness.json           (make bench-liveness)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swarmnode.node.keys import address_of, load_key  # noqa: E402
from swarmnode.node.localnet import LocalSwarm, make_genesis, wait_for  # noqa: E402

TIMEOUT = 300.0


class Timer:
    """Finalization times of rounds as node `via` sees them (polled every 0.1 s)."""

    def __init__(self, swarm: LocalSwarm) -> None:
        self.swarm = swarm
        self.final_at: dict[int, float] = {}

    def next_final(self, via: int) -> int:
        """Wait for the next round to finalize; returns it."""
        r = max(self.final_at, default=-1) + 1

        def final() -> bool:
            info = self.swarm.try_rpc(via, "swarm_getRound", r)
            return bool(info and info["finalized"])

        wait_for(final, TIMEOUT, f"round {r} to finalize on node{via}\n{self.swarm.tail(via)}", interval=0.1)
        self.final_at[r] = time.monotonic()
        return r

    def rounds(self, via: int, n: int) -> list[tuple[int, float]]:
        out = []
        for _ in range(n):
            r = self.next_final(via)
            if r - 1 in self.final_at:
                out.append((r, self.final_at[r] - self.final_at[r - 1]))
        return out


def committers(swarm: LocalSwarm, via: int, r: int) -> set[str]:
    info = swarm.try_rpc(via, "swarm_getRound", r) or {"commits": []}
    return {c["participant"].lower() for c in info["commits"]}


def address(swarm: LocalSwarm, i: int) -> str:
    return "0x" + address_of(load_key(swarm.nodes[i].data_dir / "node.key")).hex()


def mean(rows: list[tuple[int, float]]) -> float:
    return statistics.fmean(s for _, s in rows) if rows else float("nan")


def run(swarm: LocalSwarm, lab: Any, args: argparse.Namespace) -> dict[str, Any]:
    for i in range(4):
        swarm.init_node(i)
    boot = swarm.nodes[0].listen
    for i in range(4):
        swarm.start(i, bootstrap=[] if i == 0 else boot, wait=False)
    for i in range(4):
        swarm.wait_ready(i)
    timer = Timer(swarm)
    timer.rounds(0, args.warmup)
    out: dict[str, Any] = {"task": args.task}
    full = timer.rounds(0, args.rounds)
    out["full"] = full
    print(f"full swarm: {mean(full):.2f} s per round over {len(full)} rounds", flush=True)

    swarm.kill(3)
    killed = timer.rounds(0, args.rounds)
    out["killed"] = killed
    print(f"node3 killed: {[round(s, 1) for _, s in killed]}", flush=True)
    swarm.start(3)
    t0 = time.monotonic()
    me = address(swarm, 3)
    back = wait_for(lambda: next((r for r in range(max(timer.final_at) - 2, max(timer.final_at) + 50)
                                  if me in committers(swarm, 0, r)), None), TIMEOUT, "node3 to commit again")
    out["rejoin_seconds"] = time.monotonic() - t0
    out["rejoin_round"] = back
    print(f"node3 restarted: commits again in round {back}, {out['rejoin_seconds']:.1f} s after its restart",
          flush=True)
    timer.final_at = {r: t for r, t in timer.final_at.items() if r <= back}
    while max(timer.final_at) < back:
        timer.next_final(0)
    timer.rounds(0, 2)

    if lab is not None:
        lab.cut(2)
        cut = timer.rounds(0, args.rounds)
        out["cut"] = cut
        print(f"node2 cut off: {[round(s, 1) for _, s in cut]}", flush=True)
        target = swarm.rpc(0, "swarm_node")["height"]
        lab.heal(2)
        t0 = time.monotonic()
        wait_for(lambda: (swarm.try_rpc(2, "swarm_node") or {}).get("height", 0) >= target, TIMEOUT,
                 "the healed host to catch up", interval=0.1)
        out["catch_up_seconds"] = time.monotonic() - t0
        me2 = address(swarm, 2)
        first = max(timer.final_at) + 1
        again = wait_for(lambda: next((r for r in range(first, first + 60) if me2 in committers(swarm, 0, r)), None),
                         TIMEOUT, "the healed host to commit again")
        out["healed_commit_seconds"] = time.monotonic() - t0
        out["healed_commit_round"] = again
        print(f"node2 healed: caught up in {out['catch_up_seconds']:.1f} s, commits again in round {again} "
              f"{out['healed_commit_seconds']:.1f} s after the heal", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="tiny", choices=["tiny", "demo"], help="genesis task preset (default tiny)")
    ap.add_argument("--rounds", type=int, default=10, help="rounds timed per phase (default 10)")
    ap.add_argument("--warmup", type=int, default=3, help="rounds before timing starts (default 3)")
    ap.add_argument("--commit-window-s", type=int, default=60, help="genesis commit window (default 60, shipped)")
    ap.add_argument("--loopback", action="store_true", help="no network namespaces (no cut-off phase)")
    ap.add_argument("--base-dir", type=Path, help="data dirs and logs (default: a temp dir)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    base = args.base_dir or Path(tempfile.mkdtemp(prefix="liveness-"))
    base.mkdir(parents=True, exist_ok=True)
    genesis, keys = make_genesis(base, 4, args.task, commit_window_s=args.commit_window_s)
    env = {"OMP_NUM_THREADS": "1"}
    print(f"liveness: 4 daemons, task {args.task}, commit window {args.commit_window_s} s; logs in {base}", flush=True)
    if args.loopback:
        with LocalSwarm(base, genesis, keys, extra_env=env) as swarm:
            out = run(swarm, None, args)
    else:
        from swarmnode.node.netns import NetnsLab, NetnsSwarm, netns_unavailable

        reason = netns_unavailable()
        if reason is not None:
            print(f"error: {reason}; use --loopback to skip the cut-off phase", file=sys.stderr)
            return 2
        with NetnsLab(4) as lab, NetnsSwarm(lab, base, genesis, keys, extra_env=env) as swarm:
            out = run(swarm, lab, args)
    full = mean(out["full"])
    print("\nphase        mean s   ratio to full   rounds")
    for phase in ("full", "killed", "cut"):
        if phase in out:
            m = mean(out[phase])
            print(f"{phase:<10} {m:8.2f}   {m / full:13.2f}x   {[round(s, 1) for _, s in out[phase]]}")
    out["ratios"] = {p: mean(out[p]) / full for p in ("full", "killed", "cut") if p in out}
    out["worst_round_ratio"] = {p: max(s for _, s in out[p]) / full for p in ("killed", "cut") if p in out}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
