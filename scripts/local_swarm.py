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
from swarmnode import progress  # noqa: E402
from swarmnode.cli.chain_cmd import held_out_mean  # noqa: E402
from swarmnode.node.keys import address_of, load_key  # noqa: E402
from swarmnode.node.localnet import (  # noqa: E402
    LocalSwarm,
    SwarmTimeout,
    dev_keys_for,
    run_cli,
    test_accuracy_of,
    wait_for,
)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_rounds(swarm: LocalSwarm, args: argparse.Namespace, base: Path, t0: float,
               rounds: progress.Display) -> tuple[dict, int]:
    """Wait for each round to finalize and print its line; returns the last round's record and number."""
    shown = -1
    r: dict = {}
    while shown < args.rounds - 1:
        def next_final(want: int = shown + 1) -> dict | None:
            r = swarm.try_rpc(0, "swarm_getRound", want)
            return r if r and r["finalized"] else None

        r = wait_for(next_final, args.round_timeout, f"round {shown + 1} to finalize (see {base}/node0.log)")
        shown += 1
        rounds.advance()

        def newest_score(upto: int = shown) -> tuple[float, int] | None:
            """node0's newest test score of a round <= upto, with that round."""
            hist = (swarm.try_rpc(0, "swarm_node") or {}).get("history", [])
            done = [h for h in hist if h["testAccuracy"] is not None and h["round"] <= upto]
            return (done[-1]["testAccuracy"], done[-1]["round"]) if done else None

        # node0 scores at low priority and, when behind, only the newest round: wait briefly for this
        # round's score, else show the newest one it has, marked with its round
        try:
            acc, of = wait_for(lambda want=shown: (x := newest_score(want)) and x[1] == want and x, 3,
                               f"node0's evaluation of round {shown}")
        except SwarmTimeout:
            acc, of = newest_score() or (None, None)
        test = "-" if acc is None else f"{acc * 100:.1f}%" + ("" if of == shown else f" (r{of})")
        accs = [int(c["localAccuracy"]) / 1e6 for c in r["commits"]]
        mean = f"{sum(accs) / len(accs) * 100:.1f}%" if accs else "-"
        base_acc = held_out_mean(r["commits"])[0]  # round `shown`'s base: the global model of the round before
        held_out = "-" if base_acc is None else f"{base_acc * 100:.1f}%"
        rounds.say(f"{shown:>5}  {len(r['commits']):>4}/{int(r['participantCount']):<4}  {mean:>15}  "
                   f"{held_out:>17}  {test:>15}  {time.monotonic() - t0:>7.0f}s")
    return r, shown


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
    show = progress.wanted()  # a spinner while daemons start, a bar of rounds (a terminal only)
    try:
        with progress.status(f"starting {nodes} daemons (each loads torch and its data)", show):
            for i in range(nodes):
                swarm.init_node(i)
            swarm.start_all(list(range(nodes)), extra_args={0: ("--eval-test",)})
        for i in range(nodes):
            print(f"  node{i} up: rpc {swarm.nodes[i].rpc_url}  p2p {swarm.nodes[i].listen[0]}", flush=True)
        print(f"{'round':>5}  {'committed':>9}  {'mean client acc':>15}  {'base held-out acc':>17}  "
              f"{'global test acc':>15}  {'elapsed':>8}", flush=True)
        with progress.bar("rounds", args.rounds, show, stream=sys.stdout) as rounds:
            r, shown = run_rounds(swarm, args, base, t0, rounds)
        print("\nchain round table (swarmnode chain rounds):", flush=True)
        print(run_cli("chain", "rounds", "--rpc", str(swarm.nodes[0].rpc_url)).stdout, flush=True)
        elapsed = time.monotonic() - t0
        final = test_accuracy_of(args.genesis, swarm.nodes[0].data_dir / "store", r["finalHash"])
        print(f"final global test accuracy after {shown + 1} rounds (round {shown}'s final model, from node0's "
              f"store): {final * 100:.2f}% (chance: 10%); wall clock {elapsed:.0f} s", flush=True)
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
