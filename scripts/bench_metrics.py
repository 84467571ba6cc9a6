"""What the always-on metrics cost: the traffic meter per stream read/write, per MB of blobs moved between
two real py-libp2p hosts, and one scrape of a daemon's registry.

- per operation: CPU of `await stream.read()` / `write()` through the meter's wrapper minus the same call
  on the bare stream (an in-memory stand-in, so only the wrapper's own work is measured);
- per MB: two hosts on loopback (TCP + Noise + yamux), one serving update-sized blobs (0.8 MB, the seed
  task's) to the other; the metered reads and writes are counted, and their cost (count x per-operation
  cost) is set against the process CPU of the whole exchange;
- per scrape: CPU of rendering the registry (collect + text exposition) with a reading of 10 validators
  and 8 protocols.

    python scripts/bench_metrics.py [--blobs 20] [--out bench-results/metrics.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import generate_latest  # noqa: E402

from consensus.cluster import Cluster  # noqa: E402
from consensus.driver import DriverConfig  # noqa: E402
from consensus.votes import address_of  # noqa: E402
from swarmnode.node.metrics import NodeMetrics, NodeReading  # noqa: E402
from swarmnode.p2p import meter  # noqa: E402
from swarmnode.p2p.testing import TEST_CHAIN_ID, LibP2PNet, node_secret, star  # noqa: E402

UPDATE_BYTES = 796_976  # one update of the seed task's small CNN (the daemon logs bytes=796976)


class _Bare:
    """The cheapest possible stream: what is left of a call through it is the wrapper's own cost."""

    protocol_id = "/swarmnode/blob/1"

    async def read(self, n: int | None = None) -> bytes:
        return b"x" * 64

    async def write(self, data: bytes) -> None:
        return None


async def _per_op_ns(n: int) -> dict[str, float]:
    bare = _Bare()
    metered = meter._MeteredMuxedStream(bare, bare, meter.Counter(), meter.Counter())
    out: dict[str, float] = {}
    for name, stream in (("bare", bare), ("metered", metered)):
        t0 = time.process_time()
        for _ in range(n):
            await stream.read(65536)
            await stream.write(b"y")
        out[name] = (time.process_time() - t0) / (2 * n) * 1e9
    out["overhead"] = out["metered"] - out["bare"]
    return out


@contextmanager
def _counting_ops() -> Iterator[dict[str, int]]:
    """Count the meter's wrapped reads and writes (this benchmark only: the class is restored after)."""
    counted = {"ops": 0}
    read, write = meter._MeteredMuxedStream.read, meter._MeteredMuxedStream.write

    async def counting_read(self: Any, n: int | None = None) -> bytes:
        counted["ops"] += 1
        return await read(self, n)

    async def counting_write(self: Any, data: bytes) -> None:
        counted["ops"] += 1
        await write(self, data)

    meter._MeteredMuxedStream.read = counting_read  # type: ignore[method-assign]
    meter._MeteredMuxedStream.write = counting_write  # type: ignore[method-assign]
    try:
        yield counted
    finally:
        meter._MeteredMuxedStream.read, meter._MeteredMuxedStream.write = read, write  # type: ignore[method-assign]


async def _consensus(n: int, heights: int) -> dict[str, Any]:
    """n validators running the real driver over the daemon's direct libp2p consensus streams."""
    keys = [node_secret(i) for i in range(n)]
    config = DriverConfig(chain_id=TEST_CHAIN_ID, block_interval=0.2, rebroadcast_interval=1.0)
    net = LibP2PNet(n, validators={address_of(k) for k in keys})
    with _counting_ops() as counted, tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(n, config, net=net, keys=keys, record_dir=Path(tmp))  # type: ignore[arg-type]
        net.attach_apps(cluster.apps)
        async with cluster.run():
            with trio.fail_after(600):
                await cluster.wait_height(2)
            ops0 = counted["ops"]
            with trio.fail_after(600):
                await cluster.wait_height(2 + heights)
            ops = counted["ops"] - ops0
    return {"validators": n, "heights": heights, "metered_ops": ops, "ops_per_height_per_node": ops / heights / n}


async def _exchange(blobs: int) -> dict[str, Any]:
    with _counting_ops() as counted:
        async with star(2) as (server, client):
            with trio.fail_after(30):
                await client.host.wait_peer(server.peer_id)
            cids = [server.blobs.store.put(os.urandom(UPDATE_BYTES)) for _ in range(blobs)]
            ops0, cpu0, t0 = counted["ops"], time.process_time(), time.monotonic()
            for cid in cids:
                with trio.fail_after(60):
                    await client.blobs.fetch(cid, providers=[server.peer_id], size=UPDATE_BYTES)
            ops, cpu, wall = counted["ops"] - ops0, time.process_time() - cpu0, time.monotonic() - t0
            moved = client.host.meter.snapshot()["received"].get("/swarmnode/blob/1", 0)
    return {"blobs": blobs, "blob_bytes": blobs * UPDATE_BYTES, "metered_ops": ops, "process_cpu_s": cpu,
            "wall_s": wall, "blob_bytes_counted_by_client": moved}


def _scrape_ms(n: int) -> float:
    validators = {f"0x{i:040x}": i for i in range(10)}
    protocols = {p: 10**9 for p in ("/swarmnode/blob/1", "/swarmnode/consensus/1", "/meshsub/1.1.0", "/ipfs/id/1.0.0",
                                    "/swarmnode/sync/1", "/swarmnode/handshake/1", "/swarmnode/peers/1", "(negotiation)")}
    reading = NodeReading(address="0x" + "00" * 20, chain_id=7, height=10**6, best_known_height=10**6, peers=9,
                          mesh={"/swarmnode/7/tx": 6, "/swarmnode/7/updates": 6}, pool=3, consensus_height=10**6,
                          consensus_round=0, round=500, window_open=True, round_commits=5, round_expected=10,
                          validator=True, missed_votes=validators, heights_tallied=10**6,
                          traffic={"sent": protocols, "received": protocols, "wire": {"in": 1, "out": 1}, "streams": 9})
    metrics = NodeMetrics()
    metrics.watch(lambda: reading)
    for _ in range(50):
        metrics.observe_fetch(0.1)
        metrics.observe_work("train", 2.0)
    generate_latest(metrics.registry)
    t0 = time.process_time()
    for _ in range(n):
        generate_latest(metrics.registry)
    return (time.process_time() - t0) / n * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blobs", type=int, default=20, help="update-sized blobs fetched (default 20)")
    ap.add_argument("--ops", type=int, default=200_000, help="calls timed per variant (default 200000)")
    ap.add_argument("--validators", type=int, default=10, help="validators in the consensus run (default 10)")
    ap.add_argument("--heights", type=int, default=10, help="heights timed in the consensus run (default 10)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    per_op = trio.run(_per_op_ns, args.ops)
    exchange = trio.run(_exchange, args.blobs)
    consensus = trio.run(_consensus, args.validators, args.heights)
    scrape = _scrape_ms(200)
    mb = exchange["blob_bytes"] / 1e6
    meter_cpu = exchange["metered_ops"] * per_op["overhead"] / 1e9
    result = {
        "per_op_ns": per_op, "exchange": exchange, "metered_ops_per_mb": exchange["metered_ops"] / mb,
        "meter_cpu_ms_per_mb": meter_cpu / mb * 1000,
        "meter_share_of_exchange_cpu": meter_cpu / exchange["process_cpu_s"],
        "consensus": consensus,
        "meter_cpu_ms_per_height_per_node": consensus["ops_per_height_per_node"] * per_op["overhead"] / 1e6,
        "scrape_cpu_ms": scrape, "load_average": os.getloadavg(),
    }
    print(f"meter: {per_op['metered']:.0f} ns per metered read/write against {per_op['bare']:.0f} ns bare: "
          f"{per_op['overhead']:.0f} ns of overhead per call")
    print(f"blob exchange: {args.blobs} blobs of {UPDATE_BYTES} bytes ({mb:.1f} MB) in {exchange['wall_s']:.2f} s, "
          f"{exchange['process_cpu_s']:.2f} CPU-s for both hosts; {exchange['metered_ops']} metered calls "
          f"({result['metered_ops_per_mb']:.1f} per MB)")
    print(f"meter cost: {result['meter_cpu_ms_per_mb']:.3f} ms CPU per MB moved, "
          f"{result['meter_share_of_exchange_cpu'] * 100:.3f}% of the exchange's CPU")
    print(f"consensus: {consensus['validators']} validators over libp2p, {consensus['ops_per_height_per_node']:.0f} "
          f"metered calls per height per node: {result['meter_cpu_ms_per_height_per_node']:.3f} ms CPU per height "
          f"per node")
    print(f"one scrape: {scrape:.2f} ms CPU (every 15 s at Prometheus' default interval)")
    print(f"load average while measuring: {' '.join(f'{x:.1f}' for x in result['load_average'])}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
