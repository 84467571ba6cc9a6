#!/usr/bin/env python3
"""Soak a local swarm: N daemons (real processes through the CLI) on the tiny task for R rounds.

Prints a line every few rounds and a summary (rounds run and finalized, wall clock, longest and median
round, memory per daemon at the start and at the end), writes it as JSON with --out, and exits 1 if the
swarm stalled, a node disagreed with the chain, memory grew, or a log holds an unhandled exception.

    python scripts/soak.py --rounds 200 --out bench-results/soak.json      (make soak)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swarmnode.node.localnet import SwarmTimeout  # noqa: E402
from swarmnode.node.soak import SoakResult, run_soak  # noqa: E402

MAX_MB_PER_100_ROUNDS = 40.0  # private memory (RssAnon) trend per daemon after the first quarter: "grows"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200, help="rounds to run (default 200)")
    ap.add_argument("--nodes", type=int, default=4, help="daemons, all validators (default 4)")
    ap.add_argument("--commit-window-s", type=int, default=30, help="the genesis commit window (default 30)")
    ap.add_argument("--base-dir", type=Path, help="where data dirs and logs go (default: a temp dir)")
    ap.add_argument("--out", type=Path, help="write the summary as JSON here")
    args = ap.parse_args(argv)
    base = args.base_dir or Path(tempfile.mkdtemp(prefix="soak-"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"soak: {args.nodes} daemons, tiny task, {args.rounds} rounds; logs in {base}", flush=True)
    t0 = time.monotonic()

    def progress(r: int, res: SoakResult) -> None:
        mem = " ".join(f"{s[-1][1]:.0f}" for s in res.rss_mb.values() if s)
        anon = " ".join(f"{s[-1][1]:.0f}" for s in res.anon_mb.values() if s)
        files = " ".join(f"{s[-1][1]:.0f}" for s in res.file_mb.values() if s)
        last = res.round_seconds[-10:]
        pace = f"{sum(last) / len(last):.2f} s/round" if last else "-"
        print(f"  round {r:4d}  {time.monotonic() - t0:7.0f} s  {pace}  rss MB: {mem}  "
              f"(anon {anon}; file {files})", flush=True)

    try:
        res = run_soak(base, rounds=args.rounds, nodes=args.nodes, commit_window_s=args.commit_window_s,
                       progress=progress)
    except (SwarmTimeout, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = res.summary()
    growth, slope = res.memory_growth_mb(), res.memory_slope()
    rss_slope, file_slope = res.memory_slope("rss"), res.memory_slope("file")
    cache_slope, rest_slope = res.memory_slope("cache"), res.memory_slope("anon-less-cache")
    print(f"\nrounds run {res.rounds_run}, finalized {res.rounds_finalized}, wall clock {res.wall_seconds:.0f} s")
    print(f"round time: median {res.median_round:.2f} s, longest {res.longest_round:.2f} s")
    for i, samples in res.anon_mb.items():
        print(f"node{i}: private memory (RssAnon) {samples[0][1]:.0f} MB at round {samples[0][0]}, "
              f"{samples[-1][1]:.0f} MB at round {samples[-1][0]} "
              f"(after round 10: {growth.get(i, 0):+.0f} MB; "
              f"trend after the first quarter: {slope.get(i, 0):+.1f} MB per 100 rounds); "
              f"rss {res.rss_mb[i][-1][1]:.0f} MB ({rss_slope.get(i, 0):+.1f}/100 rounds), "
              f"of which mapped files {res.file_mb[i][-1][1]:.0f} MB "
              f"({file_slope.get(i, 0):+.1f}/100 rounds: LevelDB's tables, the chain's size on disk)")
        cache = res.cache_mb.get(i)
        if cache:
            print(f"node{i}: of the RssAnon trend, the chain read cache (bounded) {cache_slope.get(i, 0):+.1f} MB "
                  f"per 100 rounds ({cache[-1][1]:.1f} MB held at round {cache[-1][0]}), the rest "
                  f"{rest_slope.get(i, 0):+.1f} MB per 100 rounds")
    print(f"all nodes agree with the chain: {res.agree}; log problems: {res.bad_lines or 'none'}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.out}")
    ok = (res.rounds_finalized == args.rounds and res.agree and not res.bad_lines
          and all(g <= MAX_MB_PER_100_ROUNDS for g in slope.values()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
