#!/usr/bin/env python3
"""Run a local swarm: N daemon processes on loopback (through the `swarmnode` CLI) for R learning rounds.

Shows one line per finalized round, then the chain's round table (`swarmnode chain rounds`) and the final
global test accuracy. Every process it started is stopped at the end, on error, and on Ctrl-C.

    python scripts/local_swarm.py --nodes 4 --rounds 15 --genesis genesis/devnet-4.toml
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from consensus.genesis import load_genesis  # noqa: E402
from swarmnode.node.keys import address_of, load_key  # noqa: E402
from swarmnode.node.localnet import LocalSwarm, SwarmTimeout, dev_keys_for, run_cli, wait_for  # noqa: E402


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genesis", type=Path, default=ROOT / "genesis" / "devnet-4.toml",
                    help="genesis made with --dev-keys (default genesis/devnet-4.toml)")
    ap.add_argument("--nodes", type=int, help="daemons to start (default: one per genesis validator)")
    ap.add_argument("--rounds", type=int, default=20, help="learning rounds to run (default 20)")
    ap.add_argument("--base-dir", type=Path, help="where node data dirs and logs go (default: a temp dir)")
    ap.add_argument("--round-timeout", type=float, default=120.0, help="seconds a round may take (default 120)")
    args = ap.parse_args(argv)

    genesis = load_genesis(args.genesis)
    validators = len(genesis.validators)
    nodes = args.nodes or validators
    base = args.base_dir or Path(tempfile.mkdtemp(prefix="swarm-"))
    base.mkdir(parents=True, exist_ok=True)
    keys = dev_keys_for(args.genesis, base, max(nodes, validators))
    for i in range(min(nodes, validators)):
        if address_of(load_key(keys / f"node-{i}.key")) != genesis.validators[i].address:
            print(f"error: {args.genesis} was not made with --dev-keys (validator {i} does not match dev key {i})",
                  file=sys.stderr)
            return 2
    print(f"swarm of {nodes} daemons ({min(nodes, validators)} validators), genesis {args.genesis}, "
          f"task {genesis.task.get('model')} on {genesis.task.get('dataset')}, {args.rounds} rounds; logs in {base}",
          flush=True)
    t0 = time.monotonic()
    swarm = LocalSwarm(base, args.genesis.resolve(), keys, extra_env={"OMP_NUM_THREADS": "1"})
    try:
        for i in range(nodes):
            swarm.init_node(i)
        swarm.start_all(list(range(nodes)), extra_args={0: ("--eval-test",)})
        for i in range(nodes):
            print(f"  node{i} up: rpc {swarm.nodes[i].rpc_url}  p2p {swarm.nodes[i].listen[0]}", flush=True)
        print(f"{'round':>5}  {'committed':>9}  {'mean client acc':>15}  {'global test acc':>15}  {'elapsed':>8}", flush=True)
        shown = -1
        last_test, last_scored = None, -1
        while shown < args.rounds - 1:
            def next_final(want: int = shown + 1) -> dict | None:
                r = swarm.try_rpc(0, "swarm_getRound", want)
                return r if r and r["finalized"] else None

            r = wait_for(next_final, args.round_timeout, f"round {shown + 1} to finalize (see {base}/node0.log)")
            shown += 1

            def evaluated(want: int = shown) -> dict | None:
                hist = (swarm.try_rpc(0, "swarm_node") or {}).get("history", [])
                return next((h for h in hist if h["round"] == want and h["testAccuracy"] is not None), None)

            try:
                rec = wait_for(evaluated, 30, f"node0's evaluation of round {shown}")
                last_test, last_scored = rec["testAccuracy"], shown
                test = f"{last_test * 100:.1f}%"
            except SwarmTimeout:
                test = "-"
            accs = [int(c["localAccuracy"]) / 1e6 for c in r["commits"]]
            mean = f"{sum(accs) / len(accs) * 100:.1f}%" if accs else "-"
            print(f"{shown:>5}  {len(r['commits']):>4}/{int(r['participantCount']):<4}  {mean:>15}  {test:>15}  "
                  f"{time.monotonic() - t0:>7.0f}s", flush=True)
        print("\nchain round table (swarmnode chain rounds):", flush=True)
        print(run_cli("chain", "rounds", "--rpc", str(swarm.nodes[0].rpc_url)).stdout, flush=True)
        if last_scored < shown:  # node0 scores off its critical path: give the last round's score time
            try:
                last_test = wait_for(evaluated, args.round_timeout, f"node0's evaluation of round {shown}")["testAccuracy"]
                last_scored = shown
            except SwarmTimeout:
                pass
        if last_test is not None:
            print(f"final global test accuracy (round {last_scored}'s model, after {last_scored + 1} rounds): "
                  f"{last_test * 100:.2f}% (chance: 10%); wall clock {time.monotonic() - t0:.0f} s", flush=True)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every daemon", file=sys.stderr)
        return 130
    except (SwarmTimeout, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        swarm.close()


if __name__ == "__main__":
    sys.exit(main())
