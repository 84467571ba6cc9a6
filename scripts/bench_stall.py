#!/usr/bin/env python3
"""How long can one hostile RPC client stall a node's RPC and its chain?

    python scripts/bench_stall.py [--seconds 15] [--attacks calls,connections,...] [--out bench_stall.json]

In this process: a node's chain (LevelDB) with its ChainExecutor, tx pool and JSON-RPC server with the
default limits (RpcOptions()), producing a block of 20 transfers every 500 ms (build + commit at
consensus priority, as the driver does) which a second chain imports on the same executor (as a peer's
proposal is validated), plus two probes: a no-op consensus-priority executor job every 10 ms (how long
consensus work waits) and the event loop's wake-up lag (10 ms sleeps).
In a second process, a legitimate client: eth_blockNumber every 10 ms on a kept-alive connection,
eth_getBalance on a new connection every 100 ms, an eth_call of Staking.getValidators every 500 ms.
In a third process, one attack at a time (each for --seconds; a quiet phase before and after):
  cpuburn      a control, not an attack: the client only spins on one core (on a 2-core machine, a
               hostile process slows the node by taking CPU whatever it does; this measures that part)
  calls        eight clients: eth_call at the gas cap (a JUMPDEST loop; MODEXP with a ~100 KB exponent)
               and eth_estimateGas of a loop, back to back
  connections  up to 2,000 connections opened and held silent, reopened when closed
  slowloris    300 connections sending an endless request head one byte per 0.5 s each
  bigjson      four clients sending 1 MiB bodies back to back (deep, wide, long strings, many keys)
  batches      four clients sending batches of 100 heavy reads (full blocks, logs over the whole chain)
  mixed        all of the above at once, each at a quarter of its strength
Reported per phase: max and p99 of every latency, and the excess of each max over the quiet baseline
(the worst of the two quiet phases): the stall attributable to the attack. Target: 100 ms.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio  # noqa: E402

PHASE_GAP = 6.0  # seconds between phases, not measured: calls left running end (5 s limit)
BLOCK_INTERVAL = 0.5  # twice the default genesis rate (block_interval_ms = 1000)
TXS_PER_BLOCK = 20
SENDERS = 32
ATTACKS = ("cpuburn", "calls", "connections", "slowloris", "bigjson", "batches", "mixed")


# ---------------------------------------------------------------- a minimal HTTP/1.1 client


def http_request(body: bytes, host: bytes = b"127.0.0.1") -> bytes:
    return (b"POST / HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def rpc_body(method: str, *params: Any, req_id: int = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": list(params)}).encode()


class Conn:
    """A kept-alive client connection over trio; `ask` sends one request and reads its whole response."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stream: trio.SocketStream | None = None
        self.buf = b""

    async def ask(self, body: bytes, timeout: float = 60.0) -> tuple[int, bytes]:
        with trio.fail_after(timeout):
            if self.stream is None:
                self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                self.buf = b""
            try:
                await self.stream.send_all(http_request(body))
                return await self._response()
            except BaseException:
                await self.close()
                raise

    async def _response(self) -> tuple[int, bytes]:
        assert self.stream is not None
        while b"\r\n\r\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        length = next((int(v) for k, _, v in (ln.partition(b":") for ln in lines[1:])
                       if k.strip().lower() == b"content-length"), 0)
        while len(rest) < length:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            rest += chunk
        self.buf = rest[length:]
        if any(ln.lower().startswith(b"connection: close") for ln in lines):
            await self.close()
        return status, rest[:length]

    async def close(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await trio.aclose_forcefully(stream)


# ---------------------------------------------------------------- the legitimate client (own process)


async def legit_client(port: int, seconds: float, staking: str) -> dict[str, list[tuple[float, float, bool]]]:
    samples: dict[str, list[tuple[float, float, bool]]] = {"keepalive": [], "newconn": [], "call": []}
    end = time.monotonic() + seconds

    async def timed(kind: str, conn: Conn, body: bytes, period: float, fresh: bool) -> None:
        while time.monotonic() < end:
            started, wall = time.monotonic(), time.time()
            ok = False
            try:
                status, reply = await conn.ask(body, timeout=30)
                ok = status == 200 and b'"result"' in reply
            except (OSError, ConnectionError, trio.TooSlowError, trio.BrokenResourceError):
                pass
            samples[kind].append((wall, time.monotonic() - started, ok))
            if fresh:
                await conn.close()
            await trio.sleep(max(0.0, period - (time.monotonic() - started)))

    from eth_utils import keccak

    selector = "0x" + keccak(b"getValidators()")[:4].hex()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timed, "keepalive", Conn(port), rpc_body("eth_blockNumber"), 0.01, False)
        nursery.start_soon(timed, "newconn", Conn(port), rpc_body("eth_getBalance", "0x" + "11" * 20, "latest"),
                           0.1, True)
        nursery.start_soon(timed, "call", Conn(port), rpc_body("eth_call", {"to": staking, "data": selector}),
                           0.5, False)
    return samples


# ---------------------------------------------------------------- the hostile client (own process)


SLED = "0x" + "5b" * 2000 + "600056"  # creation code: 2000 JUMPDESTs then jump back: runs until out of gas


def modexp_code(exponent_bytes: int = 100_000) -> str:
    """Creation code calling MODEXP (precompile 5) with a 32-byte base and modulus and a long exponent of
    0xff bytes (built in memory by a loop of MSTOREs), as much of it as the gas cap allows."""
    words = exponent_bytes // 32
    header = (32).to_bytes(32, "big") + exponent_bytes.to_bytes(32, "big") + (32).to_bytes(32, "big")
    base = (3).to_bytes(32, "big")
    # memory: [0:96] lengths, [96:128] base, [128:128+E] exponent (0xff..), then the modulus
    code = b""
    for i, word in enumerate([header[:32], header[32:64], header[64:96], base]):
        code += b"\x7f" + word + b"\x60" + bytes([32 * i]) + b"\x52"  # PUSH32 word PUSH1 off MSTORE
    # loop: i = 0; while i < words: mstore(128 + 32 i, ~0)
    code += b"\x60\x00"  # PUSH1 0 (i)
    loop = len(code)
    code += (b"\x5b"  # JUMPDEST
             + b"\x80\x60\x05\x1b\x60\x80\x01"  # DUP1 PUSH1 5 SHL PUSH1 128 ADD -> offset
             + b"\x60\x00\x19\x90\x52"  # PUSH1 0 NOT SWAP1 MSTORE
             + b"\x60\x01\x01"  # PUSH1 1 ADD
             + b"\x80\x62" + words.to_bytes(3, "big") + b"\x11"  # DUP1 PUSH3 words GT
             + b"\x61" + loop.to_bytes(2, "big") + b"\x57")  # PUSH2 loop JUMPI
    modulus_at = 128 + exponent_bytes
    code += b"\x7f" + (2**255 - 19).to_bytes(32, "big") + b"\x62" + modulus_at.to_bytes(3, "big") + b"\x52"
    size = modulus_at + 32
    # STATICCALL(gas, 5, 0, size, 0, 32)
    code += (b"\x60\x20\x60\x00\x62" + size.to_bytes(3, "big") + b"\x60\x00\x60\x05\x5a\xfa\x00")
    return "0x" + code.hex()


def big_bodies() -> list[bytes]:
    mib = 1024 * 1024 - 200
    head = b'{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":'
    return [
        b"[" * mib,  # deep
        head + b'["' + b"a" * (mib - 80) + b'","latest"]}',  # one long string
        b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[' + b"1," * 19_990 + b'1],"x":"'
        + b"b" * (mib - 60_000) + b'"}',  # many elements, within the limits
        head + b'["' + b'\\"[' * ((mib - 80) // 3) + b'"]}',  # escapes and brackets inside a string
        b"[" + b"[]," * 4090 + b'"' + b"c" * (mib - 13_000) + b'"]',  # many arrays, within the limits
        b'{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{"data":"0x' + b"00" * ((mib - 100) // 2)
        + b'"}]}',  # a 0.5 MB call (to nowhere: creation code of zeros)
    ]


async def hostile_client(port: int, attack: str, seconds: float, head: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    end = time.monotonic() + seconds
    scale = 4 if attack == "mixed" else 1

    def count(key: str) -> None:
        counts[key] = counts.get(key, 0) + 1

    async def repeat(bodies: list[bytes]) -> None:
        conn, i = Conn(port), random.randrange(len(bodies))
        while time.monotonic() < end:
            try:
                status, reply = await conn.ask(bodies[i % len(bodies)], timeout=max(0.1, end - time.monotonic()))
                count(f"status {status}")
                if b'"error"' in reply[:400]:
                    count("json-rpc errors")
            except (OSError, ConnectionError, trio.TooSlowError, trio.BrokenResourceError):
                count("dropped")
            i += 1

    async def hold(n: int) -> None:
        while time.monotonic() < end:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                count("connect failed")
                await trio.sleep(0.05)
                continue
            count("opened")
            with trio.move_on_after(max(0.0, end - time.monotonic())):
                try:
                    while await stream.receive_some(4096):
                        pass
                except (OSError, trio.BrokenResourceError):
                    pass
                count("closed by server")
            await trio.aclose_forcefully(stream)

    async def drip() -> None:
        while time.monotonic() < end:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                count("connect failed")
                await trio.sleep(0.05)
                continue
            count("opened")
            try:
                await stream.send_all(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                while time.monotonic() < end:
                    await stream.send_all(b"X")
                    await trio.sleep(0.5)
            except (OSError, trio.BrokenResourceError):
                count("dropped by server")
            await trio.aclose_forcefully(stream)

    calls = [rpc_body("eth_call", {"data": SLED}), rpc_body("eth_call", {"data": modexp_code()}),
             rpc_body("eth_estimateGas", {"data": SLED})]
    batch = json.dumps(
        [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(
            [("eth_getBlockByNumber", [hex(random.randrange(max(1, head))), True])] * 60
            + [("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "latest"}])] * 20
            + [("swarm_roundHistory", [])] * 10 + [("eth_getBalance", ["0x" + "22" * 20, "latest"])] * 10)]
    ).encode()
    if attack == "cpuburn":
        spins = 0
        while time.monotonic() < end:
            spins += 1
        return {"spins": spins}
    async with trio.open_nursery() as nursery:
        if attack in ("calls", "mixed"):
            for _ in range(8 // (2 if scale > 1 else 1)):
                nursery.start_soon(repeat, calls)
        if attack in ("connections", "mixed"):
            for _ in range(2000 // scale):
                nursery.start_soon(hold, 0)
        if attack in ("slowloris", "mixed"):
            for _ in range(300 // scale):
                nursery.start_soon(drip)
        if attack in ("bigjson", "mixed"):
            for _ in range(max(1, 4 // scale)):
                nursery.start_soon(repeat, big_bodies())
        if attack in ("batches", "mixed"):
            for _ in range(max(1, 4 // scale)):
                nursery.start_soon(repeat, [batch])
    return counts


# ---------------------------------------------------------------- the node (this process)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(q * len(ordered))) - 1)]


async def run_node(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from consensus.chain import ExecutionChain
    from consensus.devtools import address_of, dev_genesis, dev_key, sign_tx
    from consensus.executor import ChainExecutor, Priority
    from consensus.genesis_block import STAKING_ADDRESS
    from consensus.rpc import RpcOptions, RpcServer
    from consensus.service import ChainService, after_commit, propose_from_pool, submit_raw

    genesis = dev_genesis(1, SENDERS)
    chain = ExecutionChain.open(tmp / "node", genesis)
    peer = ExecutionChain.open(tmp / "peer", genesis)
    executor = ChainExecutor()
    service = ChainService(chain, executor=executor)
    server = RpcServer(service, options=RpcOptions())
    coinbase = address_of(dev_key(0))
    phases = ["quiet-1", *args.attacks, "quiet-2"]
    total = len(phases) * (args.seconds + PHASE_GAP) + 2
    blocks_needed = int(total / BLOCK_INTERVAL) + 10
    print(f"signing {blocks_needed * TXS_PER_BLOCK} transfers ...", file=sys.stderr)
    nonces = [0] * SENDERS
    txs: list[list[bytes]] = []
    for b in range(blocks_needed):
        block = []
        for i in range(TXS_PER_BLOCK):
            k = (b * TXS_PER_BLOCK + i) % SENDERS
            block.append(sign_tx(dev_key(k), genesis.chain_id, nonces[k], to=bytes([k + 1]) * 20, value=1))
            nonces[k] += 1
        txs.append(block)

    rec: dict[str, list[tuple[float, float]]] = {"probe": [], "lag": [], "build": [], "import": [], "late": [],
                                                 "gap": []}
    phase_times: list[tuple[str, float, float]] = []
    hostile_counts: dict[str, dict[str, int]] = {}
    stop = trio.Event()

    async def produce() -> None:
        due = trio.current_time()  # trio's clock, which sleep_until uses
        last_commit = None
        for block_txs in txs:
            if stop.is_set():
                return
            await trio.sleep_until(due)

            def feed(raws: list[bytes] = block_txs) -> None:
                for raw in raws:
                    submit_raw(chain, service.pool, raw)

            await service.run(feed, priority=Priority.NODE)

            def build() -> tuple[bytes, float]:
                t = time.monotonic()
                pending = propose_from_pool(chain, service.pool, coinbase=coinbase, now=time.time())
                chain.commit(pending.hash, b"cert")
                after_commit(chain, service.pool, tuple(pending.block.transactions))
                return pending.encode(), time.monotonic() - t

            def import_(block_rlp: bytes) -> float:
                t = time.monotonic()
                executed = peer.execute_block(block_rlp, now=None)
                peer.commit(executed.hash, b"cert")
                return time.monotonic() - t

            block_rlp, build_s = await service.run(build, priority=Priority.CONSENSUS)
            import_s = await service.run(import_, block_rlp, priority=Priority.CONSENSUS)
            now = trio.current_time()
            wall = time.time()
            rec["build"].append((wall, build_s))
            rec["import"].append((wall, import_s))
            rec["late"].append((wall, now - due))  # from when the block was due to both chains holding it
            if last_commit is not None:
                rec["gap"].append((wall, now - last_commit))
            last_commit = now
            due = max(due + BLOCK_INTERVAL, now)

    async def probe_executor() -> None:
        while not stop.is_set():
            started = time.monotonic()
            await executor.run(lambda: None, priority=Priority.CONSENSUS)
            rec["probe"].append((time.time(), time.monotonic() - started))
            await trio.sleep(0.01)

    async def probe_loop() -> None:
        while not stop.is_set():
            started = time.monotonic()
            await trio.sleep(0.01)
            rec["lag"].append((time.time(), time.monotonic() - started - 0.01))

    legit_out: list[bytes] = []

    async def legit(port: int) -> None:
        result = await trio.run_process(
            [sys.executable, __file__, "--role", "legit", "--port", str(port), "--seconds", str(total),
             "--staking", "0x" + STAKING_ADDRESS.hex()], capture_stdout=True)
        legit_out.append(result.stdout)

    async with executor.running(), trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        await trio.to_thread.run_sync(server.calls.warm)  # the workers' start-up is not part of any phase
        nursery.start_soon(produce)
        nursery.start_soon(probe_executor)
        nursery.start_soon(probe_loop)
        nursery.start_soon(legit, port)
        await trio.sleep(1.0)
        for phase in phases:
            print(f"phase {phase} ({args.seconds:g} s)", file=sys.stderr)
            started = time.time()
            if phase.startswith("quiet"):
                await trio.sleep(args.seconds)
            else:
                result = await trio.run_process(
                    [sys.executable, __file__, "--role", "hostile", "--port", str(port), "--attack", phase,
                     "--seconds", str(args.seconds), "--head", str(chain.tip.height)], capture_stdout=True)
                hostile_counts[phase] = json.loads(result.stdout)
            phase_times.append((phase, started, time.time()))
            await trio.sleep(PHASE_GAP)
        while not legit_out:
            await trio.sleep(0.1)
        stop.set()
        rpc_stats = server.statistics()
        nursery.cancel_scope.cancel()
    chain.close()
    peer.close()
    legit_samples = json.loads(legit_out[0])
    return summarize(phases, phase_times, rec, legit_samples, hostile_counts, rpc_stats, executor.statistics())


def summarize(phases: list[str], phase_times: list[tuple[str, float, float]], rec: dict[str, list[tuple[float, float]]],
              legit: dict[str, list[list[Any]]], hostile: dict[str, dict[str, int]], rpc_stats: dict[str, Any],
              executor_stats: dict[str, Any]) -> dict[str, Any]:
    series = {
        "rpc keep-alive": [(t, v) for t, v, _ in legit["keepalive"]],
        "rpc new connection": [(t, v) for t, v, _ in legit["newconn"]],
        "rpc eth_call": [(t, v) for t, v, _ in legit["call"]],
        "executor probe": rec["probe"], "event loop lag": rec["lag"],
        "block build": rec["build"], "block import": rec["import"], "block lateness": rec["late"],
        "commit gap": rec["gap"],
    }
    failures = {name: [t for t, _, ok in legit[key] if not ok] for name, key in
                (("rpc keep-alive", "keepalive"), ("rpc new connection", "newconn"), ("rpc eth_call", "call"))}
    out: dict[str, Any] = {"phases": {}, "hostile": hostile, "rpc": rpc_stats, "executor": executor_stats}
    for phase, start, end in phase_times:
        row: dict[str, Any] = {}
        for name, samples in series.items():
            values = [v for t, v in samples if start <= t <= end]
            row[name] = {"n": len(values), "p50_ms": round(1000 * percentile(values, 0.5), 1),
                         "p99_ms": round(1000 * percentile(values, 0.99), 1),
                         "max_ms": round(1000 * max(values), 1) if values else math.nan}
        for name, times in failures.items():
            row[name]["failed"] = sum(1 for t in times if start <= t <= end)
        out["phases"][phase] = row
    quiet = [out["phases"][p] for p in out["phases"] if p.startswith("quiet")]
    for phase in phases:
        if phase.startswith("quiet"):
            continue
        row = out["phases"][phase]
        for name in series:
            base = max(q[name]["max_ms"] for q in quiet)
            row[name]["excess_max_ms"] = round(row[name]["max_ms"] - base, 1)
    return out


def print_report(result: dict[str, Any]) -> None:
    names = list(next(iter(result["phases"].values())))
    print(f"{'':22s}" + "".join(f"{p:>22s}" for p in result["phases"]))
    for name in names:
        cells = []
        for row in result["phases"].values():
            m = row[name]
            cell = f"{m['p99_ms']:.0f}/{m['max_ms']:.0f}"
            if "excess_max_ms" in m:
                cell += f" (+{m['excess_max_ms']:.0f})" if m["excess_max_ms"] >= 0 else f" ({m['excess_max_ms']:.0f})"
            if m.get("failed"):
                cell += f" !{m['failed']}"
            cells.append(cell)
        print(f"{name:22s}" + "".join(f"{c:>22s}" for c in cells))
    print("cells: p99/max ms (max minus the worse quiet phase's max); !n = failed requests")
    for phase, counts in result["hostile"].items():
        print(f"hostile {phase}: {counts}")
    print(f"rpc server: {result['rpc']}")
    print(f"executor: {result['executor']}")
    worst = max((row[n]["excess_max_ms"], phase, n) for phase, row in result["phases"].items()
                for n in row if "excess_max_ms" in row[n])
    print(f"worst excess over the quiet baseline: {worst[0]:.0f} ms ({worst[2]}, {worst[1]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, of {', '.join(ATTACKS)}")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    parser.add_argument("--role", choices=("node", "legit", "hostile"), default="node", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--attack", help=argparse.SUPPRESS)
    parser.add_argument("--head", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--staking", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "legit":
        print(json.dumps(trio.run(legit_client, args.port, args.seconds, args.staking)))
        return
    if args.role == "hostile":
        print(json.dumps(trio.run(hostile_client, args.port, args.attack, args.seconds, args.head)))
        return
    args.attacks = [a for a in args.attacks.split(",") if a]
    unknown = set(args.attacks) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attacks {sorted(unknown)}")
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as tmp:
        result = trio.run(run_node, args, Path(tmp))
    result["config"] = {"seconds": args.seconds, "attacks": args.attacks, "cpus": os.cpu_count(),
                        "block_interval_s": BLOCK_INTERVAL, "txs_per_block": TXS_PER_BLOCK,
                        "load_before": os.getloadavg()}
    print_report(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
