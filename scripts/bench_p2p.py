"""Benchmark the p2p layer on loopback, all hosts in one trio process (real py-libp2p, TCP+Noise+yamux).

- gossip latency: 1 KB messages from node 0 to all others (full mesh), median / p99 per delivery;
- blob throughput: an 8 MB blob fetched from node 0, one transfer at a time and by all others at once;
- consensus: proposal -> commit and block time with N validators over libp2p (in one process, and one
  process per validator) vs the in-memory network (no delay, and 1-5 ms delay).

All hosts share one event loop and 2 cores, so every figure includes the other hosts' work: a lower
bound on what separate processes would do.

    python scripts/bench_p2p.py --hosts 2 5 10 --out bench_p2p.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_consensus import percentile, summarize  # noqa: E402

from consensus.cluster import Cluster  # noqa: E402
from consensus.driver import ConsensusDriver, DriverConfig  # noqa: E402
from consensus.engine.validators import ValidatorSet  # noqa: E402
from consensus.memapp import InMemoryApplication  # noqa: E402
from consensus.memnet import MemNetwork  # noqa: E402
from consensus.messages import VoteMessage, encode  # noqa: E402
from consensus.signing_record import SigningRecord  # noqa: E402
from consensus.votes import address_of, sign_vote  # noqa: E402
from swarmnode.p2p.blobstore import MemoryBlobStore, content_id  # noqa: E402
from swarmnode.p2p.node import P2PNode  # noqa: E402
from swarmnode.p2p.testing import (  # noqa: E402
    TEST_CHAIN_ID,
    LibP2PNet,
    full_mesh,
    make_config,
    node_secret,
    wait_full_mesh,
)
from swarmnode.p2p.topics import CONSENSUS, TX, TopicPolicy  # noqa: E402
from swarmnode.p2p.wire import MAX_GOSSIP_BYTES  # noqa: E402

MB = 1024 * 1024


@dataclass
class GossipResult:
    hosts: int
    messages: int
    median_ms: float
    p99_ms: float
    lost: int  # deliveries that did not happen within 10 s


@dataclass
class BlobResult:
    hosts: int
    blob_mb: float
    single_mb_s: float  # median of one-at-a-time transfers
    concurrent_mb_s: float  # all other hosts fetching at once: total bytes / wall time


@dataclass
class ConsensusResult:
    network: str
    validators: int
    heights: int
    median_ms: float | None  # proposal -> commit (one process only: needs one clock)
    p99_ms: float | None
    block_ms: float  # median interval between consecutive commits (block_interval = 0)


async def wait_mesh(nodes, name: str) -> None:  # noqa: ANN001
    with trio.fail_after(120):
        await wait_full_mesh(nodes, name)


async def bench_gossip(n: int, messages: int) -> GossipResult:
    async with full_mesh(n) as nodes:
        await wait_mesh(nodes, TX)
        latencies: list[float] = []
        lost = 0
        for k in range(messages):
            payload = k.to_bytes(4, "big") + os.urandom(1020)
            sent = time.perf_counter()
            await nodes[0].gossip.publish(TX, payload)
            for node in nodes[1:]:
                with trio.move_on_after(10) as scope:  # gossip is lossy: count, do not crash
                    while (await node.gossip.channel(TX).receive()).body != payload:
                        pass
                    latencies.append(time.perf_counter() - sent)
                lost += scope.cancelled_caught
    return GossipResult(n, messages, 1000 * statistics.median(latencies), 1000 * percentile(latencies, 0.99), lost)


async def bench_blobs(n: int, size: int) -> BlobResult:
    async with full_mesh(n) as nodes:
        await wait_mesh(nodes, TX)
        source = nodes[0]
        singles = []
        for node in nodes[1:]:
            blob = os.urandom(size)
            cid = source.blobs.store.put(blob)
            start = time.perf_counter()
            got = await node.blobs.fetch(cid, providers=[source.peer_id], size=size)
            singles.append(size / MB / (time.perf_counter() - start))
            assert content_id(got) == cid
        blob = os.urandom(size)
        cid = source.blobs.store.put(blob)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for node in nodes[1:]:
                nursery.start_soon(lambda node=node: node.blobs.fetch(cid, providers=[source.peer_id], size=size))
        concurrent = (n - 1) * size / MB / (time.perf_counter() - start)
    return BlobResult(n, size / MB, statistics.median(singles), concurrent)


async def message_cpu(messages: int) -> tuple[float, float]:
    """CPU microseconds per consensus message, one at a time between two hosts in this process (send,
    Noise, yamux, receive, validation), over the direct streams and over the in-memory network."""
    secret = node_secret(0)
    votes = [encode(VoteMessage(sign_vote(secret, TEST_CHAIN_ID, 1, r, 1, os.urandom(32)))) for r in range(messages)]
    policies = {CONSENSUS: TopicPolicy(MAX_GOSSIP_BYTES, known_sender={address_of(secret)}.__contains__)}
    async with full_mesh(2, policies=policies) as (a, b):
        await a.host.wait_peers(1)  # a broadcasts only to peers it has verified
        await b.host.wait_peers(1)
        await a.consensus.broadcast(votes[0])  # warm up: opens the stream
        await b.consensus.inbound.receive()
        start = time.process_time()
        for v in votes[1:]:
            await a.consensus.broadcast(v)
            await b.consensus.inbound.receive()
        libp2p_us = 1e6 * (time.process_time() - start) / (messages - 1)
    mem = MemNetwork(2, capacity=65536)
    sender, receiver = mem.endpoint(0), mem.endpoint(1)
    async with mem.run():
        start = time.process_time()
        for v in votes:
            await sender.broadcast(v)
            await receiver.inbound.receive()
        mem_us = 1e6 * (time.process_time() - start) / messages
    return libp2p_us, mem_us


async def serve_blob(size: int) -> None:
    """Child process of bench_cross_process: hold one random blob, print address and id, serve until
    stdin closes."""
    async with P2PNode(make_config(100)).run() as node:
        cid = node.blobs.store.put(os.urandom(size))
        print(node.listen_addrs()[0], cid.hex(), flush=True)
        await trio.wrap_file(sys.stdin).read()


async def bench_cross_process(size: int, repeats: int) -> list[float]:
    """MB/s of fetches from a server in another process (one transfer at a time)."""
    cmd = [sys.executable, __file__, "--serve-blob", str(size)]
    proc = await trio.lowlevel.open_process(cmd, stdin=-1, stdout=-1)
    try:
        line = b""
        with trio.fail_after(60):
            while not line.endswith(b"\n"):
                line += await proc.stdout.receive_some(4096)
        addr, cid_hex = line.decode().split()
        rates = []
        async with P2PNode(make_config(101)).run() as client:
            peer = await client.host.connect(addr)
            for _ in range(repeats):
                client.blobs.store = MemoryBlobStore()  # forget it: fetch again over the same connection
                start = time.perf_counter()
                blob = await client.blobs.fetch(bytes.fromhex(cid_hex), providers=[peer], size=size)
                rates.append(size / MB / (time.perf_counter() - start))
                assert content_id(blob).hex() == cid_hex
    finally:
        await proc.stdin.aclose()
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
    return rates


async def bench_consensus(network: str, n: int, heights: int) -> ConsensusResult:
    """network: memory (no delay), memory-delay (1-5 ms, bench_consensus.py's default), libp2p (the
    direct consensus streams the daemon uses) or libp2p-gossip (the consensus gossip topic)."""
    keys = [node_secret(i) for i in range(n)]
    config = DriverConfig(chain_id=TEST_CHAIN_ID, block_interval=0.0, rebroadcast_interval=1.0)
    if network.startswith("libp2p"):
        net = LibP2PNet(n, validators={address_of(k) for k in keys},
                        transport="gossip" if network == "libp2p-gossip" else "direct")
    else:
        delay = (0.001, 0.005) if network == "memory-delay" else (0.0, 0.0)
        net = MemNetwork(n, min_delay=delay[0], max_delay=delay[1], seed=n, capacity=65536)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(n, config, net=net, keys=keys, record_dir=Path(tmp))  # type: ignore[arg-type]
        if isinstance(net, LibP2PNet):
            net.attach_apps(cluster.apps)
        async with cluster.run():
            with trio.fail_after(600):
                await cluster.wait_height(heights + 1)
    r = summarize(cluster, n, heights, 0, 0.0)
    return ConsensusResult(network, n, heights, r.median_ms, r.p99_ms, block_ms(cluster, n, heights))


def block_ms(cluster: Cluster, n: int, heights: int) -> float:
    intervals = []
    for i in range(n):
        t = cluster.driver(i).timeline
        intervals += [t[h]["commit"] - t[h - 1]["commit"] for h in range(2, heights + 2)]
    return 1000 * statistics.median(intervals)


# ---- one OS process per validator (how the daemon really runs) ----
# Each child is one validator (P2PNode + ConsensusDriver + InMemoryApplication) that bootstraps to the
# children started before it, reports READY once meshed, starts its driver on GO and prints its commit
# intervals. Trio clocks differ between processes, so only block time (commit to commit) is comparable.

async def child(i: int, n: int, heights: int, bootstrap: list[str]) -> None:
    keys = [node_secret(j) for j in range(n)]
    validators = {address_of(k) for k in keys}
    app = InMemoryApplication(ValidatorSet.from_powers({a: 1 for a in validators}))
    policies = {CONSENSUS: TopicPolicy(MAX_GOSSIP_BYTES, known_sender=validators.__contains__)}
    node = P2PNode(make_config(i, bootstrap=tuple(bootstrap)), policies=policies, app=app,
                   head_height=app.latest_height)
    stdin = trio.wrap_file(sys.stdin)
    async with node.run(), trio.open_nursery() as nursery:
        print(node.listen_addrs()[0], flush=True)
        with trio.fail_after(60):
            await node.host.wait_peers(n - 1)
            while node.gossip.mesh_size(CONSENSUS) < min(n - 1, 4):
                await trio.sleep(0.05)  # readiness poll: the mesh fills on GossipSub's heartbeat
        print("READY", flush=True)
        await stdin.readline()  # GO
        net = node.consensus
        config = DriverConfig(chain_id=TEST_CHAIN_ID, block_interval=0.0, rebroadcast_interval=1.0)
        with tempfile.TemporaryDirectory() as tmp:
            driver = ConsensusDriver(config, app, net, keys[i], SigningRecord.open(Path(tmp) / "rec"))
            await nursery.start(driver.run)
            with trio.fail_after(600):
                await driver.wait_height(heights + 1)
            commits = [driver.timeline[h]["commit"] for h in range(1, heights + 2)]
            print(json.dumps({"intervals": [b - a for a, b in zip(commits, commits[1:], strict=False)]}), flush=True)
            await stdin.read()  # keep serving the others until the parent closes stdin
            nursery.cancel_scope.cancel()


async def _readline(proc: trio.Process, buf: bytearray) -> str:
    while b"\n" not in buf:
        data = await proc.stdout.receive_some(65536)
        if not data:
            raise RuntimeError("validator process exited early")
        buf += data
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line.decode()


async def run_processes(n: int, heights: int) -> float:
    """Median block time (ms) over all validator processes."""
    procs: list[tuple[trio.Process, bytearray]] = []
    addrs: list[str] = []
    try:
        with trio.fail_after(120):
            for i in range(n):
                cmd = [sys.executable, __file__, "--child", str(i), str(n), str(heights), *addrs]
                proc = await trio.lowlevel.open_process(cmd, stdin=-1, stdout=-1)
                procs.append((proc, bytearray()))
                addrs.append(await _readline(proc, procs[-1][1]))
            for proc, buf in procs:
                assert await _readline(proc, buf) == "READY"
        for proc, _ in procs:
            await proc.stdin.send_all(b"GO\n")
        intervals: list[float] = []
        with trio.fail_after(600):
            for proc, buf in procs:
                intervals += json.loads(await _readline(proc, buf))["intervals"]
        return 1000 * statistics.median(intervals)
    finally:
        for proc, _ in procs:
            await proc.stdin.aclose()
        for proc, _ in procs:
            with trio.move_on_after(10):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[2, 5, 10])
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--blob-mb", type=float, default=8.0)
    parser.add_argument("--validators", type=int, nargs="+", default=[4])
    parser.add_argument("--heights", type=int, default=30)
    parser.add_argument("--consensus-runs", type=int, default=3, help="runs per consensus network (median kept)")
    parser.add_argument("--repeats", type=int, default=5, help="cross-process blob fetches")
    parser.add_argument("--serve-blob", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.serve_blob:
        trio.run(serve_blob, args.serve_blob)
        return
    if args.child:
        i, n, heights, *boot = args.child
        trio.run(child, int(i), int(n), int(heights), boot)
        return

    gossip = [trio.run(bench_gossip, n, args.messages) for n in args.hosts]
    print(f"\ngossip 1 KB   {'hosts':>5} {'median ms':>9} {'p99 ms':>8} {'lost':>5}")
    for g in gossip:
        print(f"              {g.hosts:>5} {g.median_ms:>9.2f} {g.p99_ms:>8.2f} {g.lost:>5}", flush=True)

    blobs = [trio.run(bench_blobs, n, int(args.blob_mb * MB)) for n in args.hosts]
    print(f"\nblob {args.blob_mb:g} MB   {'hosts':>5} {'1 at a time MB/s':>16} {'all at once MB/s':>16}")
    for b in blobs:
        print(f"              {b.hosts:>5} {b.single_mb_s:>16.1f} {b.concurrent_mb_s:>16.1f}", flush=True)

    cross = trio.run(bench_cross_process, int(args.blob_mb * MB), args.repeats)
    print(f"              2 processes: median {statistics.median(cross):.1f} MB/s "
          f"(runs: {', '.join(f'{r:.1f}' for r in cross)})", flush=True)

    per_msg, per_msg_mem = trio.run(message_cpu, 2000)
    print(f"\nconsensus message CPU, one at a time: {per_msg:.0f} us over libp2p (direct stream), "
          f"{per_msg_mem:.0f} us in memory", flush=True)

    consensus = []
    for n in args.validators:
        for network in ("memory", "memory-delay", "libp2p", "libp2p-gossip"):
            runs = [trio.run(bench_consensus, network, n, args.heights) for _ in range(args.consensus_runs)]
            consensus.append(sorted(runs, key=lambda c: c.median_ms or 0)[len(runs) // 2])  # the median run
            if len(runs) > 1:
                print(f"  {network}: finality medians of {len(runs)} runs: "
                      f"{', '.join(f'{c.median_ms:.1f}' for c in runs)} ms", flush=True)
        blocks = sorted(trio.run(run_processes, n, args.heights) for _ in range(args.consensus_runs))
        block = blocks[len(blocks) // 2]
        if len(blocks) > 1:
            print(f"  libp2p-procs: block times of {len(blocks)} runs: {', '.join(f'{b:.1f}' for b in blocks)} ms")
        consensus.append(ConsensusResult("libp2p-procs", n, args.heights, None, None, block))
    print(f"\nconsensus     {'network':>13} {'vals':>4} {'finality median ms':>18} {'p99 ms':>8} {'block ms':>8}")
    for c in consensus:
        fin = f"{c.median_ms:>18.1f} {c.p99_ms:>8.1f}" if c.median_ms is not None else f"{'-':>18} {'-':>8}"
        print(f"              {c.network:>13} {c.validators:>4} {fin} {c.block_ms:>8.1f}")
    for n in args.validators:
        by = {c.network: c for c in consensus if c.validators == n}
        print(f"              {n} validators, libp2p / memory: finality "
              f"{by['libp2p'].median_ms / by['memory'].median_ms:.2f}x (vs 1-5 ms delay: "
              f"{by['libp2p'].median_ms / by['memory-delay'].median_ms:.2f}x; over gossip: "
              f"{by['libp2p-gossip'].median_ms / by['memory'].median_ms:.2f}x); block time in-process "
              f"{by['libp2p'].block_ms / by['memory'].block_ms:.2f}x, one process per validator "
              f"{by['libp2p-procs'].block_ms / by['memory'].block_ms:.2f}x")

    if args.out:
        meta = {"python": sys.version.split()[0], "note": "all hosts in one process on loopback"}
        data = {"meta": meta, "gossip": [asdict(g) for g in gossip], "blobs": [asdict(b) for b in blobs],
                "blob_cross_process_mb_s": cross, "message_cpu_us": {"libp2p": per_msg, "memory": per_msg_mem},
                "consensus": [asdict(c) for c in consensus]}
        args.out.write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
