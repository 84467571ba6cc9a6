"""Benchmark the BFT engine in one process: N validators on the in-memory network, real clock.

Prints median / p99 proposal->commit time and blocks/s for empty blocks and 100-tx blocks, and writes
JSON with --out. Every node verifies every vote signature and (tx blocks) every tx signature, all in one
Python process on shared cores, so figures are a lower bound on what separate machines would do.

    python scripts/bench_consensus.py --validators 4 10 32 --heights 30 --delay-ms 1 5 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import trio
from eth_utils import keccak

from consensus.cluster import Cluster
from consensus.driver import DriverConfig
from consensus.engine import TimeoutConfig
from consensus.engine.validators import ValidatorSet
from consensus.memapp import InMemoryApplication
from consensus.memnet import MemNetwork
from consensus.votes import InvalidSignature, address_of, recover_address, sign_digest

TX_SENDERS = 8


@dataclass
class Result:
    validators: int
    txs_per_block: int
    heights: int
    median_ms: float
    p99_ms: float
    blocks_per_s: float
    tx_per_s: float
    max_round: int
    wall_s: float


def make_txs(count: int) -> list[bytes]:
    """Signed dummy transfers: from(20) nonce(8) to(20) value(8) || sig(65) = 121 bytes."""
    keys = [keccak(f"bench-sender-{i}".encode()) for i in range(TX_SENDERS)]
    txs = []
    for n in range(count):
        key = keys[n % TX_SENDERS]
        body = address_of(key) + n.to_bytes(8, "big") + keccak(n.to_bytes(8, "big"))[:20] + (1).to_bytes(8, "big")
        txs.append(body + sign_digest(key, keccak(body)))
    return txs


def verify_tx(tx: bytes) -> bool:
    body, sig = tx[:-65], tx[-65:]
    try:
        return recover_address(keccak(body), sig) == body[:20]
    except InvalidSignature:
        return False


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run_one(n: int, heights: int, txs_per_block: int, delay_ms: tuple[float, float], fsync: bool) -> Result:
    txs = make_txs(txs_per_block * heights) if txs_per_block else []

    def app_factory(i: int, vset: ValidatorSet) -> InMemoryApplication:
        app = InMemoryApplication(vset, max_payloads=txs_per_block, verify_payload=verify_tx if txs else None)
        app.add_payloads(txs)  # as if the txs had been gossiped to every node
        return app

    config = DriverConfig(chain_id=1337, block_interval=0.0, rebroadcast_interval=1.0, timeouts=TimeoutConfig())
    net = MemNetwork(n, min_delay=delay_ms[0] / 1000, max_delay=delay_ms[1] / 1000, seed=n, capacity=65536)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(n, config, net=net, record_dir=Path(tmp) if fsync else None, app_factory=app_factory)
        start = time.perf_counter()
        async with cluster.run():
            with trio.fail_after(600):
                await cluster.wait_height(heights + 1)
        wall = time.perf_counter() - start
    return summarize(cluster, n, heights, txs_per_block, wall)


def summarize(cluster: Cluster, n: int, heights: int, txs_per_block: int, wall: float) -> Result:
    timelines = [cluster.driver(i).timeline for i in range(n)]
    latencies, rounds = [], []
    for h in range(2, heights + 2):  # height 1 includes start-up
        proposed = min(t[h]["proposal"] for t in timelines if "proposal" in t.get(h, {}))
        for t in timelines:
            if "commit" in t.get(h, {}):
                latencies.append(t[h]["commit"] - proposed)
                rounds.append(int(t[h]["round"]))
    t0 = timelines[0]
    span = t0[heights + 1]["commit"] - t0[1]["commit"]
    blocks = cluster.committed(0)[1 : heights + 1]
    tx_count = sum(len(InMemoryApplication.payloads(b)) for b in blocks)
    return Result(
        validators=n, txs_per_block=txs_per_block, heights=heights,
        median_ms=1000 * statistics.median(latencies), p99_ms=1000 * percentile(latencies, 0.99),
        blocks_per_s=heights / span, tx_per_s=tx_count / span, max_round=max(rounds), wall_s=wall,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validators", type=int, nargs="+", default=[4, 10, 32])
    parser.add_argument("--heights", type=int, default=30)
    parser.add_argument("--heights-32", type=int, default=10, help="heights for runs with > 16 validators")
    parser.add_argument("--txs", type=int, nargs="+", default=[0, 100], help="txs per block (0 = empty)")
    parser.add_argument("--delay-ms", type=float, nargs=2, default=[1.0, 5.0], metavar=("MIN", "MAX"))
    parser.add_argument("--no-fsync", action="store_true", help="keep signing records in memory")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = []
    print(f"{'vals':>4} {'tx/blk':>6} {'heights':>7} {'median ms':>9} {'p99 ms':>8} {'blocks/s':>8} "
          f"{'tx/s':>8} {'max rnd':>7} {'wall s':>6}")
    for n in args.validators:
        for txs in args.txs:
            heights = args.heights if n <= 16 else args.heights_32
            r = trio.run(run_one, n, heights, txs, tuple(args.delay_ms), not args.no_fsync)
            results.append(r)
            print(f"{r.validators:>4} {r.txs_per_block:>6} {r.heights:>7} {r.median_ms:>9.1f} {r.p99_ms:>8.1f} "
                  f"{r.blocks_per_s:>8.2f} {r.tx_per_s:>8.1f} {r.max_round:>7} {r.wall_s:>6.1f}", flush=True)
    if args.out:
        meta = {"delay_ms": args.delay_ms, "fsync": not args.no_fsync, "python": sys.version.split()[0]}
        args.out.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2))


if __name__ == "__main__":
    main()
