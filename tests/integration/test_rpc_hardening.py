"""The JSON-RPC server's limits against hostile clients, each tested on both sides, on a real chain driven
through a ChainExecutor as in a node: eth_call's gas cap, time limit and worker processes (blocks keep
coming and other calls stay fast while calls loop), Host/Origin checks, slow and silent clients,
connection limits, body/JSON/batch/response limits."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import h11
import pytest
import trio

from consensus.chain import ExecutionChain
from consensus.chain_reads import CallLimits
from consensus.devtools import address_of, dev_genesis, dev_key, sign_tx
from consensus.executor import ChainExecutor, Priority
from consensus.rpc import RpcOptions, RpcServer
from consensus.service import ChainService, after_commit, propose_from_pool

COINBASE = address_of(dev_key(0))
SLED_LOOP = "0x" + "5b" * 2000 + "600056"  # creation code: 2000 JUMPDESTs, then jump back (~0.6 s per 1M gas)


def counter_loop(k: int) -> str:
    """Creation code that counts k down to 0 and stops: its gas grows by 26 per step."""
    return "0x61" + k.to_bytes(2, "big").hex() + "5b600190038060035700"


@dataclass
class Node:
    service: ChainService
    server: RpcServer
    port: int


@asynccontextmanager
async def rpc_node(tmp_path, options: RpcOptions | None = None) -> AsyncIterator[Node]:
    genesis = dev_genesis(1, 3)
    chain = ExecutionChain.open(tmp_path / "node", genesis, sync_writes=False)
    executor = ChainExecutor()
    service = ChainService(chain, clock=lambda: genesis.genesis_time + chain.height, executor=executor)
    server = RpcServer(service, options=options)
    try:
        async with executor.running(), trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)
            yield Node(service, server, port)
            nursery.cancel_scope.cancel()
    finally:
        chain.close()


async def produce_block(service: ChainService) -> float:
    """Build and commit one block at consensus priority, as the driver does; returns the seconds it took."""
    chain, pool = service.chain, service.pool

    def work() -> None:
        pending = propose_from_pool(chain, pool, coinbase=COINBASE, now=service.clock())
        chain.commit(pending.hash, b"cert")
        after_commit(chain, pool, tuple(pending.block.transactions))

    started = time.monotonic()
    await service.run(work, priority=Priority.CONSENSUS)
    return time.monotonic() - started


# ---------------------------------------------------------------- an HTTP client with full control


class Http:
    """One client connection (h11): send requests, read responses, or misbehave on purpose."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> Http:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def request(self, body: bytes, *, host: bytes = b"127.0.0.1", method: bytes = b"POST",
                      headers: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[int, dict[bytes, bytes], bytes]:
        hdrs = [(b"host", host), (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                *headers]
        await self.stream.send_all(self.conn.send(h11.Request(method=method, target=b"/", headers=hdrs)))
        await self.stream.send_all(self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage()))
        return await self.response()

    async def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        status, headers, chunks = 0, {}, []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                return status, headers, b"".join(chunks)

    async def closed_within(self, seconds: float) -> float | None:
        """Seconds until the server closes this connection (reading and dropping what it sends), or None."""
        started = time.monotonic()
        with trio.move_on_after(seconds):
            try:
                while await self.stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass
            return time.monotonic() - started
        return None

    async def aclose(self) -> None:
        await self.stream.aclose()


def rpc_body(method: str, *params, req_id: int = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": list(params)}).encode()


async def http10(port: int, body: bytes) -> tuple[int, bytes]:
    """An HTTP/1.0 request without a Host header (h11 sends only HTTP/1.1)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"POST / HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, reply = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), reply


async def rpc(port: int, method: str, *params) -> dict:
    client = await Http.open(port)
    try:
        status, _, body = await client.request(rpc_body(method, *params))
    finally:
        await client.aclose()
    assert status == 200, (status, body)
    return json.loads(body)


async def timed_rpc(port: int, method: str, *params) -> tuple[float, dict]:
    started = time.monotonic()
    reply = await rpc(port, method, *params)
    return time.monotonic() - started, reply


# ---------------------------------------------------------------- eth_call: gas cap, time, workers


async def test_gas_cap_clamps_a_larger_request_and_estimate_refuses_beyond_it(tmp_path) -> None:
    cap = 300_000
    async with rpc_node(tmp_path, RpcOptions(calls=CallLimits(gas_cap=cap))) as node:
        port = node.port

        async def fits(k: int, **extra) -> dict:
            return await rpc(port, "eth_call", {"data": counter_loop(k), **extra}, "latest")

        low, high = 1, 20_000  # the largest loop that fits in the cap, by bisection
        assert "result" in await fits(low) and "error" in await fits(high)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if "result" in await fits(mid) else (low, mid)
        k = low
        assert 5_000 < k < 12_000, k  # 26 gas a step under a 300k cap, after the creation's intrinsic gas
        # just under the cap: passes, with the gas omitted and with any larger gas asked for (clamped)
        assert (await fits(k))["result"] == "0x"
        assert (await fits(k, gas=hex(2**40)))["result"] == "0x"
        # just over: out of gas at the cap, whatever gas was asked for
        over = await fits(k + 1, gas=hex(2**40))
        assert over["error"]["code"] == -32000 and f"out of gas (gas limit {cap})" in over["error"]["message"]
        under = await rpc(port, "eth_estimateGas", {"data": counter_loop(k)})
        assert cap - 21_000 <= int(under["result"], 16) <= cap
        refused = await rpc(port, "eth_estimateGas", {"data": counter_loop(k + 1), "gas": hex(10**9)})
        assert refused["error"]["code"] == -32000
        assert refused["error"]["message"] == f"gas required exceeds allowance ({cap})"
        # a revert keeps its code and data
        revert = await rpc(port, "eth_call", {"data": "0x60006000fd"})  # PUSH1 0 PUSH1 0 REVERT
        assert revert["error"]["code"] == 3 and revert["error"]["data"] == "0x"


async def test_looping_calls_time_out_while_blocks_keep_coming_and_other_calls_stay_fast(tmp_path) -> None:
    limits = CallLimits(gas_cap=50_000_000, timeout=1.0, workers=2)  # 50M gas of this loop: ~30 s
    async with rpc_node(tmp_path, RpcOptions(calls=limits, call_wait_timeout=0.3)) as node:
        port, service = node.port, node.service
        await trio.to_thread.run_sync(node.server.calls.warm)  # both workers started before the clock runs
        assert node.server.calls.statistics()["workers"] == 2
        quiet = [await produce_block(service) for _ in range(5)]
        builds: list[float] = []
        latencies: list[float] = []
        answers: list[tuple[float, dict]] = []
        calls_done = trio.Event()

        async def looping_call() -> None:
            answers.append(await timed_rpc(port, "eth_call", {"data": SLED_LOOP}, "latest"))
            if len(answers) == 3:
                calls_done.set()

        async def blocks() -> None:
            while not calls_done.is_set():
                builds.append(await produce_block(service))
                await trio.sleep(0.05)

        async def reads() -> None:
            while not calls_done.is_set():
                latencies.append((await timed_rpc(port, "eth_blockNumber"))[0])
                await trio.sleep(0.01)

        started = time.monotonic()
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(blocks)
                nursery.start_soon(reads)
                for _ in range(2):
                    nursery.start_soon(looping_call)
                while node.server.calls.statistics()["running"] < 2:
                    await trio.sleep(0.01)  # polled: the pool tells no event when a worker takes a call
                nursery.start_soon(looping_call)  # a third: both workers are busy
        took = time.monotonic() - started
        codes = sorted((reply["error"]["code"], reply["error"]["message"]) for _, reply in answers)
        assert codes[0][0] == -32005 and "too many calls" in codes[0][1], codes  # waited 0.3 s, then refused
        assert [c for c, _ in codes[1:]] == [-32000, -32000] and all("timeout = 1s" in m for _, m in codes[1:])
        seconds = sorted(t for t, _ in answers)
        assert 0.2 < seconds[0] < 0.9 and all(0.9 < t < 3.0 for t in seconds[1:]), seconds
        assert len(builds) >= 5, (builds, took)  # blocks kept coming while both workers looped
        assert max(builds) < max(0.5, 5 * max(quiet)), (builds, quiet)
        assert len(latencies) >= 10 and max(latencies) < 0.5, latencies
        stats = node.server.calls.statistics()
        assert stats["timeouts"] == 2 and stats["killed"] == 0, stats  # the workers stopped the EVM themselves
        assert "result" in await rpc(port, "eth_blockNumber")


async def test_calls_see_each_new_head_and_a_dead_worker_is_replaced(tmp_path) -> None:
    limits = CallLimits(timeout=3.0, workers=1)
    async with rpc_node(tmp_path, RpcOptions(calls=limits)) as node:
        port, service = node.port, node.service
        to = b"\x33" * 20
        raw = sign_tx(dev_key(1), 7331, 0, to=to, value=10**18)
        assert "result" in await rpc(port, "eth_sendRawTransaction", "0x" + raw.hex())
        balance = {"data": "0x3331600052" + "60206000f3", "from": "0x" + to.hex()}  # BALANCE(CALLER), returned
        before = await rpc(port, "eth_call", balance)
        assert int(before["result"], 16) == 0
        await produce_block(service)
        assert int((await rpc(port, "eth_call", balance))["result"], 16) == 10**18
        at_genesis = await rpc(port, "eth_call", balance, "0x0")
        assert int(at_genesis["result"], 16) == 0
        missing = await rpc(port, "eth_call", balance, "0x9")
        assert missing["error"]["code"] == -32000 and "no committed block #9" in missing["error"]["message"]

        async def kill_the_worker() -> None:
            while not node.server.calls._busy:
                await trio.sleep(0.01)
            await trio.sleep(0.2)
            os.kill(next(iter(node.server.calls._busy)).proc.pid, signal.SIGKILL)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_the_worker)
            crashed = await rpc(port, "eth_call", {"data": SLED_LOOP})
        assert crashed["error"]["code"] == -32603 and "call worker failed" in crashed["error"]["message"]
        assert int((await rpc(port, "eth_call", balance))["result"], 16) == 10**18
        assert node.server.calls.statistics()["started"] == 2


# ---------------------------------------------------------------- who may ask


async def test_only_this_machines_host_and_origin_are_served(tmp_path) -> None:
    async with rpc_node(tmp_path) as node:
        port, body = node.port, rpc_body("eth_blockNumber")

        async def ask(host: bytes, origin: bytes | None = None, method: bytes = b"POST"):
            client = await Http.open(port)
            try:
                headers = ((b"origin", origin),) if origin is not None else ()
                return await client.request(body, host=host, headers=headers, method=method)
            finally:
                await client.aclose()

        for host in (b"127.0.0.1", b"127.0.0.1:%d" % port, b"localhost", b"LOCALHOST:8545", b"[::1]:8545"):
            status, _, reply = await ask(host)
            assert status == 200 and json.loads(reply)["result"] == "0x0", host
        status, reply = await http10(port, body)  # no Host at all: not a browser
        assert status == 200 and json.loads(reply)["result"] == "0x0"
        for host in (b"evil.example", b"evil.example:%d" % port, b"localhost.evil.example", b"127.0.0.2",
                     b"localhost:80:80", b"[::1"):
            status, _, reply = await ask(host)
            assert status == 403 and b"not allowed" in reply or b"malformed" in reply, (host, status, reply)
        for origin in (b"http://localhost:3000", b"https://127.0.0.1", b"http://[::1]:5173"):
            status, headers, _ = await ask(b"127.0.0.1", origin)
            assert status == 200 and headers[b"access-control-allow-origin"] == origin, origin
        for origin in (b"http://evil.example", b"null", b"http://localhost.evil.example", b"file://",
                       b"http://127.0.0.1.evil.example:3000"):
            status, _, reply = await ask(b"127.0.0.1", origin)
            assert status == 403 and b"Origin" in reply, (origin, reply)
        # a DNS-rebinding page: its own name in Host, its own origin
        status, _, reply = await ask(b"rebind.evil.example:%d" % port, b"http://rebind.evil.example:%d" % port)
        assert status == 403 and b"Host" in reply
        # CORS preflight: allowed for a localhost page, refused for another
        status, headers, _ = await ask(b"127.0.0.1", b"http://localhost:3000", b"OPTIONS")
        assert status == 204 and b"POST" in headers[b"access-control-allow-methods"]
        status, _, _ = await ask(b"127.0.0.1", b"http://evil.example", b"OPTIONS")
        assert status == 403
        assert node.server.statistics()["forbidden"] >= 13


async def test_configured_vhosts_and_origins_are_served_too(tmp_path) -> None:
    options = RpcOptions(vhosts=("node.lan",), cors_origins=("https://app.example",))
    async with rpc_node(tmp_path, options) as node:
        client = await Http.open(node.port)
        body = rpc_body("eth_blockNumber")
        assert (await client.request(body, host=b"node.lan:8545"))[0] == 200
        status, headers, _ = await client.request(body, headers=((b"origin", b"https://app.example"),))
        assert status == 200 and headers[b"access-control-allow-origin"] == b"https://app.example"
        assert (await client.request(body, host=b"other.lan"))[0] == 403
        await client.aclose()
    async with rpc_node(tmp_path / "any", RpcOptions(vhosts=("*",), cors_origins=("*",))) as node:
        client = await Http.open(node.port)
        status, _, _ = await client.request(rpc_body("eth_blockNumber"), host=b"anything.example",
                                            headers=((b"origin", b"http://anything.example"),))
        assert status == 200
        await client.aclose()


# ---------------------------------------------------------------- slow and silent clients


async def test_slowloris_and_idle_connections_are_dropped_while_others_are_served(tmp_path) -> None:
    options = RpcOptions(request_timeout=1.0, idle_timeout=2.0)
    async with rpc_node(tmp_path, options) as node:
        port = node.port
        slow = await Http.open(port)
        idle = await Http.open(port)
        head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Pad: " + b"a" * 200
        dropped_after: list[float] = []
        latencies: list[float] = []

        async def drip() -> None:
            started = time.monotonic()
            try:
                for byte in head:
                    await slow.stream.send_all(bytes([byte]))
                    await trio.sleep(0.02)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            dropped_after.append(time.monotonic() - started)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip)
            for _ in range(20):
                latencies.append((await timed_rpc(port, "eth_blockNumber"))[0])
                await trio.sleep(0.05)
            idle_closed = await idle.closed_within(3.0)
        assert dropped_after and 0.9 < dropped_after[0] < 2.0, dropped_after  # not the ~5 s of the whole drip
        assert idle_closed is not None and idle_closed < 2.5, idle_closed
        assert max(latencies) < 0.5, latencies
        # just inside the limits: a request sent in pieces within request_timeout is served
        body = rpc_body("eth_blockNumber")
        piecewise = await Http.open(port)
        request = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " + str(len(body)).encode()
                   + b"\r\n\r\n" + body)
        for i in range(0, len(request), len(request) // 5 + 1):
            await piecewise.stream.send_all(request[i:i + len(request) // 5 + 1])
            await trio.sleep(0.1)
        status, _, reply = await piecewise.response()
        assert status == 200 and json.loads(reply)["result"] == "0x0"
        await piecewise.aclose()
        await slow.aclose()
        await idle.aclose()


async def test_a_client_that_does_not_read_its_response_is_dropped(tmp_path) -> None:
    options = RpcOptions(write_timeout=1.0, max_connections=1, wait_timeout=10.0, evict_after=60.0)
    async with rpc_node(tmp_path, options) as node:
        async def big(params):
            return "x" * (48 << 20)  # more than the kernel buffers of both ends hold

        node.server.register_method("test_big", big)
        reader = await Http.open(node.port)  # asks, then never reads
        body = rpc_body("test_big")
        await reader.stream.send_all(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
                                     % (len(body), body))
        while node.server.statistics()["open"] < 1:  # it holds the only slot
            await trio.sleep(0.01)
        started = time.monotonic()
        elapsed, reply = await timed_rpc(node.port, "eth_blockNumber")  # waits for the only slot
        assert reply["result"] == "0x0"
        assert 0.5 < elapsed < 3.0, elapsed  # freed by the write timeout, not by the reader
        assert node.server.counters["timeouts"] >= 1
        assert time.monotonic() - started < 3.0
        await reader.aclose()


# ---------------------------------------------------------------- connections


async def test_connections_beyond_the_limit_wait_then_get_503(tmp_path) -> None:
    options = RpcOptions(max_connections=2, max_waiting=1, wait_timeout=0.5, evict_after=60.0)
    async with rpc_node(tmp_path, options) as node:
        port = node.port
        first, second = await Http.open(port), await Http.open(port)
        assert (await first.request(rpc_body("eth_blockNumber")))[0] == 200  # both admitted, kept open
        assert (await second.request(rpc_body("eth_blockNumber")))[0] == 200
        results: dict[str, tuple[int, float]] = {}

        async def third() -> None:
            started = time.monotonic()
            client = await Http.open(port)
            status, _, body = await client.request(rpc_body("eth_blockNumber"))
            results["third"] = (status, time.monotonic() - started)
            assert b"server busy" in body
            await client.aclose()

        async def fourth() -> None:
            while node.server.statistics()["waiting"] < 1:  # after the third is queued
                await trio.sleep(0.01)
            started = time.monotonic()
            client = await Http.open(port)
            status, _, body = await client.request(rpc_body("eth_blockNumber"))
            results["fourth"] = (status, time.monotonic() - started)
            assert b"already waiting" in body
            await client.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(third)
            nursery.start_soon(fourth)
        assert results["third"][0] == 503 and 0.45 < results["third"][1] < 1.5, results  # waited, then refused
        assert results["fourth"][0] == 503 and results["fourth"][1] < 0.3, results  # the queue was full
        await first.aclose()  # a slot frees: the next one is served at once
        elapsed, reply = await timed_rpc(port, "eth_blockNumber")
        assert reply["result"] == "0x0" and elapsed < 0.3
        # just within the limit: two connections at once are both served without waiting
        await second.aclose()
        a, b = await Http.open(port), await Http.open(port)
        started = time.monotonic()
        assert (await a.request(rpc_body("eth_blockNumber")))[0] == 200
        assert (await b.request(rpc_body("eth_blockNumber")))[0] == 200
        assert time.monotonic() - started < 0.3
        await a.aclose()
        await b.aclose()


async def test_idle_connections_make_room_for_waiting_ones(tmp_path) -> None:
    options = RpcOptions(max_connections=2, wait_timeout=5.0, evict_after=0.3)
    async with rpc_node(tmp_path, options) as node:
        port = node.port
        hogs = [await Http.open(port) for _ in range(2)]  # connect and say nothing
        await trio.sleep(0.5)
        elapsed, reply = await timed_rpc(port, "eth_blockNumber")
        assert reply["result"] == "0x0" and elapsed < 0.3, elapsed
        assert node.server.counters["evicted"] >= 1
        assert await hogs[0].closed_within(1.0) is not None
        for hog in hogs:
            await hog.aclose()
    # a connection in active use keeps its slot; one held by a long request gives it up after its response
    options = RpcOptions(max_connections=1, wait_timeout=1.0, evict_after=0.3)
    async with rpc_node(tmp_path / "b", options) as node:
        port = node.port

        async def slow(params):
            await trio.sleep(0.6)
            return "done"

        node.server.register_method("test_slow", slow)
        keeper = await Http.open(port)
        assert (await keeper.request(rpc_body("eth_blockNumber")))[0] == 200
        refused: list[tuple[int, bytes]] = []

        async def newcomer(into: list) -> None:
            client = await Http.open(port)
            try:
                status, _, body = await client.request(rpc_body("eth_blockNumber"))
            finally:
                await client.aclose()
            into.append((status, body))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(newcomer, refused)
                while not refused:  # short requests every 50 ms: never asked to give up the slot
                    status, headers, _ = await keeper.request(rpc_body("eth_blockNumber"))
                    assert status == 200 and b"connection" not in headers
                    await trio.sleep(0.05)
        assert refused[0][0] == 503 and b"server busy" in refused[0][1]
        served: list[tuple[int, bytes]] = []
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(newcomer, served)
                status, headers, body = await keeper.request(rpc_body("test_slow"))  # busy for 0.6 s
                assert status == 200 and headers.get(b"connection") == b"close" and b"done" in body
        assert served[0][0] == 200 and b'"result":"0x0"' in served[0][1]
        await keeper.aclose()


# ---------------------------------------------------------------- sizes


async def test_body_json_and_batch_limits_on_both_sides(tmp_path) -> None:
    options = RpcOptions(max_body=4096, max_response=4000)
    async with rpc_node(tmp_path, options) as node:
        port = node.port

        async def post(body: bytes) -> tuple[int, bytes]:
            client = await Http.open(port)
            try:
                status, _, reply = await client.request(body)
            finally:
                await client.aclose()
            return status, reply

        call = rpc_body("eth_blockNumber")
        status, reply = await post(call.ljust(4096))  # JSON allows trailing whitespace
        assert status == 200 and json.loads(reply)["result"] == "0x0"
        status, reply = await post(call.ljust(4097))
        assert status == 413 and b"4096" in reply

    async with rpc_node(tmp_path / "b", RpcOptions(max_response=5000)) as node:
        port = node.port

        async def answer(body: bytes):
            client = await Http.open(port)
            try:
                status, _, reply = await client.request(body)
            finally:
                await client.aclose()
            assert status == 200, reply
            return json.loads(reply)

        def nested(depth: int) -> bytes:  # the request object is level 1, params level 2, ...
            return (b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":' + b"[" * (depth - 1)
                    + b"]" * (depth - 1) + b"}")

        assert (await answer(nested(64)))["error"]["code"] == -32602  # parsed, then the params are wrong
        too_deep = await answer(nested(65))
        assert too_deep["error"]["code"] == -32700 and "deeper than 64" in too_deep["error"]["message"]
        many = b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[' + b"[]," * 4093 + b"[]]}"
        assert (await answer(many))["error"]["code"] == -32602  # 4096 arrays and objects: parsed
        too_many = b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[' + b"[]," * 4094 + b"[]]}"
        assert "more than 4096 arrays" in (await answer(too_many))["error"]["message"]
        elements = b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[' + b"1," * 19_996 + b"1]}"
        assert (await answer(elements))["error"]["code"] == -32602  # 19,999 commas in all: parsed
        too_long = b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[' + b"1," * 19_997 + b"1]}"
        assert "more than 20000 elements" in (await answer(too_long))["error"]["message"]
        huge_number = b'{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["0x' + b"f" * 65 + b'",false]}'
        assert "larger than 2**256" in (await answer(huge_number))["error"]["message"]
        batch = [json.loads(rpc_body("eth_blockNumber", req_id=i)) for i in range(100)]
        replies = await answer(json.dumps(batch).encode())
        assert [r["id"] for r in replies] == list(range(100)) and all(r["result"] == "0x0" for r in replies)
        refused = await answer(json.dumps(batch + [batch[0]]).encode())
        assert refused["error"]["code"] == -32600 and "at most 100" in refused["error"]["message"]
        blocks = [json.loads(rpc_body("eth_getBlockByNumber", "latest", False, req_id=i)) for i in range(8)]
        replies = await answer(json.dumps(blocks).encode())  # ~1.3 KB each: those past 5,000 bytes are not run
        sizes = [len(json.dumps(r, separators=(",", ":"))) for r in replies]
        ran = [r for r in replies if "result" in r]
        assert 2 <= len(ran) < 8 and sum(sizes[:len(ran) - 1]) <= 5000 < sum(sizes[:len(ran)]), sizes
        assert all(r["error"]["code"] == -32005 for r in replies[len(ran):]) and replies[-1]["id"] == 7


# ---------------------------------------------------------------- configuration


async def test_rpc_options_from_the_config_and_the_command_line(tmp_path) -> None:
    import argparse

    from swarmnode.cli.run_cmd import rpc_options
    from swarmnode.node.config import config_from_dict, config_to_dict, dump_config, load_config

    raw = {"node": {"data_dir": "d", "genesis": "g", "key_file": "k"},
           "rpc": {"vhosts": ["node.lan"], "cors_origins": ["https://app.example"], "gas_cap": 1_000_000,
                   "call_timeout": 2.5, "call_workers": 3, "max_connections": 16}}
    cfg = config_from_dict(raw, tmp_path)
    (tmp_path / "config.toml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "config.toml") == cfg and config_to_dict(cfg)["rpc"]["gas_cap"] == 1_000_000
    none = argparse.Namespace(rpc_vhosts=None, rpc_cors=None, rpc_gas_cap=None, rpc_call_timeout=None)
    options = rpc_options(cfg, none)
    assert options.vhosts == ("node.lan",) and options.cors_origins == ("https://app.example",)
    assert (options.calls.gas_cap, options.calls.timeout, options.calls.workers) == (1_000_000, 2.5, 3)
    assert options.max_connections == 16
    flags = argparse.Namespace(rpc_vhosts="a.lan, b.lan", rpc_cors="*", rpc_gas_cap=300_000, rpc_call_timeout=1.0)
    options = rpc_options(cfg, flags)
    assert options.vhosts == ("a.lan", "b.lan") and options.cors_origins == ("*",)
    assert (options.calls.gas_cap, options.calls.timeout) == (300_000, 1.0)
    with pytest.raises(Exception, match="gas-cap"):
        rpc_options(cfg, argparse.Namespace(**{**vars(flags), "rpc_gas_cap": 10}))
    for bad in ({"gas_cap": 10}, {"call_timeout": -1}, {"vhosts": "node.lan"}, {"call_workers": 0}):
        with pytest.raises(Exception, match="rpc"):
            config_from_dict({**raw, "rpc": {**raw["rpc"], **bad}}, tmp_path)
    # a server configured after construction (as `swarmnode run` does) serves with the new limits
    async with rpc_node(tmp_path / "node") as node:
        async def echo(params):
            return params

        node.server.register_method("test_echo", echo)
        node.server.configure(RpcOptions(vhosts=("node.lan",), max_batch=2))
        assert node.server.gate.host_problem(b"node.lan") is None
        assert node.server.dispatcher.options.max_batch == 2 and "test_echo" in node.server.dispatcher.methods
