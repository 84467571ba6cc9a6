"""Peak RSS (VmHWM) of one daemon in benchmark mode: the seed task (Fashion-MNIST, small CNN, the whole
dataset loaded), a single validator, until --rounds rounds are final. The local-data figures come from
the examples (`scripts/example_*.py run --json`: run.peak_rss_mb).

    python scripts/bench_rss.py --out /tmp/rss --rounds 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from examples_common import peak_rss_mb  # noqa: E402

from swarmnode.node.localnet import LocalSwarm, make_genesis, wait_for  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="a fresh directory for the node")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    genesis, keys = make_genesis(args.out, 1, "seed", commit_window_s=30, extra_args=("--force",))
    with LocalSwarm(args.out, genesis, keys, extra_env={"OMP_NUM_THREADS": "1"}) as swarm:
        swarm.init_node(0)
        swarm.start_all([0])
        wait_for(lambda: (h := swarm.final_hashes(0)) and max(h) >= args.rounds - 1, 300.0 * args.rounds,
                 f"{args.rounds} rounds")
        print(json.dumps({"mode": "benchmark (seed task)", "rounds": args.rounds,
                          "peak_rss_mb": round(peak_rss_mb(swarm.nodes[0].proc.pid), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
