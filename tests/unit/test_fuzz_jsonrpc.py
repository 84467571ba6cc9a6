"""JSON-RPC request parsing and dispatch are total: whatever the body, the answer is a well-formed JSON-RPC
response (a result or an error object; never -32603, which would mean a handler raised something it should
not have), within a bounded time, and the HTTP server keeps serving.

Property tests (hypothesis) on a real chain with every built-in method registered (eth_call and
eth_estimateGas through their worker processes): random bytes, random JSON, deep nesting, huge numbers,
and wrong types for every param of every method. Bounded: the whole file runs in well under 60 s.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.chain import ExecutionChain
from consensus.chain_reads import CallLimits
from consensus.devtools import dev_genesis
from consensus.rpc import RpcOptions, RpcServer
from consensus.service import ChainService

ANSWER_WITHIN = 10.0  # seconds: a hang fails the test
INTERNAL_ERROR = -32603


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RpcServer]:
    """An RpcServer on a real chain; calls get a small gas cap so that random code ends fast."""
    genesis = dev_genesis(1, 3)
    chain = ExecutionChain.open(tmp_path_factory.mktemp("fuzz-rpc") / "node", genesis, sync_writes=False)
    service = ChainService(chain, clock=lambda: genesis.genesis_time + chain.height)
    rpc = RpcServer(service, options=RpcOptions(calls=CallLimits(gas_cap=200_000, timeout=2.0, workers=1)))
    try:
        yield rpc
    finally:
        assert rpc.calls is not None
        rpc.calls.close()
        chain.close()


def answer(server: RpcServer, body: bytes) -> bytes | None:
    async def run() -> bytes | None:
        with trio.fail_after(ANSWER_WITHIN):
            return await server.dispatcher.handle_body(body)

    return trio.run(run)


def assert_well_formed(raw: bytes | None, body: bytes) -> None:
    if raw is None:  # only notifications: nothing to answer
        request = json.loads(body)
        items = request if isinstance(request, list) else [request]
        assert items and all(isinstance(r, dict) and "id" not in r for r in items), body[:300]
        return
    reply = json.loads(raw)
    items = reply if isinstance(reply, list) else [reply]
    assert items, raw[:300]
    for item in items:
        assert isinstance(item, dict) and item.get("jsonrpc") == "2.0" and "id" in item, (item, body[:300])
        assert ("result" in item) != ("error" in item), (item, body[:300])
        if "error" in item:
            error = item["error"]
            assert isinstance(error.get("code"), int) and isinstance(error.get("message"), str), item
            assert error["code"] != INTERNAL_ERROR, f"internal error for {body[:300]!r}: {error['message']}"


def request(method: str, params: Any, req_id: Any = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params}).encode()


# ---------------------------------------------------------------- strategies

HEXES = st.sampled_from(["0x", "0x0", "0x00", "0x1", "0x01", "0xzz", "0x" + "ff" * 20, "0x" + "11" * 32,
                         "0x" + "f" * 64, "0x" + "f" * 65, "0x" + "1" * 5000, "latest", "earliest", "pending",
                         "safe", "finalized", "", "0X1", " 0x1", "0x1 ", "-0x1", "1", "true", "null"])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**300), max_value=10**300),
    st.floats(allow_nan=False), st.text(max_size=40), HEXES,
)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.one_of(st.sampled_from(["from", "to", "data", "input", "value", "gas", "blockHash", "blockNumber",
                               "fromBlock", "toBlock", "address", "topics"]), st.text(max_size=8)),
    inner, max_size=4), max_leaves=12)
CALL_OBJECTS = st.fixed_dictionaries({}, optional={
    "from": JSON, "to": JSON, "data": JSON, "input": JSON, "value": JSON, "gas": JSON,
    "gasPrice": JSON, "nonce": JSON,
})


# ---------------------------------------------------------------- properties


@fuzz_settings(300)
@given(body=st.binary(max_size=600))
def test_random_bytes_get_a_well_formed_answer(server: RpcServer, body: bytes) -> None:
    raw = answer(server, body)
    assert raw is not None
    assert_well_formed(raw, body)


@fuzz_settings(300)
@given(value=JSON)
def test_any_json_value_gets_a_well_formed_answer(server: RpcServer, value: Any) -> None:
    body = json.dumps(value).encode()
    assert_well_formed(answer(server, body), body)


@fuzz_settings(60)
@given(depth=st.integers(min_value=0, max_value=20_000), opener=st.sampled_from([b"[", b'{"a":']),
       closed=st.booleans(), inside=st.sampled_from([b"", b"1", b'"x"', b"[]"]))
def test_deep_nesting_is_refused_before_any_recursion(server: RpcServer, depth: int, opener: bytes, closed: bool,
                                                      inside: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    body = opener * depth + inside + (closer * depth if closed else b"")
    assert_well_formed(answer(server, body), body)
    wrapped = b'{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":' + body + b"}"
    assert_well_formed(answer(server, wrapped), wrapped)


@fuzz_settings(150)
@given(digits=st.integers(min_value=1, max_value=6000), where=st.sampled_from(["id", "param", "hex"]))
def test_huge_numbers_get_a_well_formed_answer(server: RpcServer, digits: int, where: str) -> None:
    number = b"9" * digits
    if where == "id":
        body = b'{"jsonrpc":"2.0","id":' + number + b',"method":"eth_blockNumber","params":[]}'
    elif where == "param":
        body = b'{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":[' + number + b",false]}"
    else:
        body = b'{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["0x' + number + b'",false]}'
    assert_well_formed(answer(server, body), body)


@pytest.fixture(scope="module")
def methods(server: RpcServer) -> list[str]:
    return list(server.dispatcher.methods)


@fuzz_settings(600)
@given(data=st.data())
def test_wrong_params_for_every_method_get_a_well_formed_answer(server: RpcServer, methods: list[str],
                                                                data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(methods))
    params = data.draw(st.one_of(
        st.lists(JSON, max_size=4),
        st.lists(st.one_of(CALL_OBJECTS, HEXES, JSON), min_size=1, max_size=3),
        JSON,  # not even a list
    ))
    req_id = data.draw(st.one_of(st.integers(), st.text(max_size=5), st.none(), st.booleans(), st.just([1])))
    body = request(method, params, req_id)
    assert_well_formed(answer(server, body), body)


@pytest.mark.parametrize("method", ["eth_call", "eth_estimateGas"])
@fuzz_settings(40)
@given(code=st.binary(max_size=64), value=st.sampled_from(["0x0", "0x1", "0x" + "f" * 64]),
       gas=st.sampled_from([None, "0x0", "0x5208", "0xffffffffffffffff"]))
def test_calls_of_random_code_get_a_well_formed_answer(server: RpcServer, method: str, code: bytes, value: str,
                                                       gas: str | None) -> None:
    call: dict[str, Any] = {"data": "0x" + code.hex(), "value": value, "from": "0x" + "11" * 20}
    if gas is not None:
        call["gas"] = gas
    body = request(method, [call, "latest"])
    assert_well_formed(answer(server, body), body)


@fuzz_settings(100)
@given(batch=st.lists(st.one_of(JSON, st.builds(lambda m, p: {"jsonrpc": "2.0", "id": 1, "method": m, "params": p},
                                                    st.sampled_from(["eth_blockNumber", "eth_getBalance", "nope"]),
                                                    st.lists(HEXES, max_size=2))), min_size=1, max_size=120))
def test_batches_get_a_well_formed_answer(server: RpcServer, batch: list[Any]) -> None:
    body = json.dumps(batch).encode()
    assert_well_formed(answer(server, body), body)


# ---------------------------------------------------------------- the HTTP layer


@pytest.fixture(scope="module")
def http_port(server: RpcServer) -> Iterator[int]:
    """The same server listening on 127.0.0.1 in a thread of its own (its own trio run)."""
    started = threading.Event()
    token: list[trio.lowlevel.TrioToken] = []
    port: list[int] = []
    stopped = trio.Event()

    async def main() -> None:
        token.append(trio.lowlevel.current_trio_token())
        async with trio.open_nursery() as nursery:
            port.append(await nursery.start(server.serve))
            started.set()
            await stopped.wait()
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(30)
    yield port[0]
    trio.from_thread.run_sync(stopped.set, trio_token=token[0])
    thread.join(30)


def http_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before reading everything
            pass
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)



@fuzz_settings(80)
@given(data=st.data())
def test_random_http_gets_an_http_answer_and_the_server_keeps_serving(http_port: int, data: st.DataObject) -> None:
    valid = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 63\r\n\r\n"
             b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}')
    cut = data.draw(st.integers(min_value=0, max_value=len(valid)))
    junk = data.draw(st.binary(max_size=300))
    flips = data.draw(st.lists(st.integers(min_value=0, max_value=len(valid) - 1), max_size=3))
    mutated = bytearray(valid[:cut] + junk)
    for i in flips:
        if i < len(mutated):
            mutated[i] ^= 0x20
    reply = http_exchange(http_port, bytes(mutated))
    assert reply == b"" or reply.startswith(b"HTTP/1.1 "), reply[:200]
    if reply.startswith(b"HTTP/1.1 200"):  # the first response's body (junk after a request may get another)
        head, _, rest = reply.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        sent = bytes(mutated).partition(b"\r\n\r\n")[2]
        declared = bytes(mutated).lower().split(b"content-length:")
        # no Content-Length (headers cut short and ended by bare newlines, say): the body it sent is empty
        body = sent[:int(declared[1].split(b"\r\n")[0])] if len(declared) > 1 else b""
        assert_well_formed(rest[:length], body)
    assert b'"result":"0x0"' in http_exchange(http_port, valid)  # still serving


def test_headers_cut_short_and_ended_by_bare_newlines_get_a_well_formed_answer(http_port: int) -> None:
    """Found by the fuzzer above: no Content-Length, headers ended by "\\n\\n" (h11 takes bare newlines)."""
    reply = http_exchange(http_port, b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type\n\n")
    assert reply == b"" or reply.startswith(b"HTTP/1.1 "), reply[:200]
    if reply.startswith(b"HTTP/1.1 200"):
        head, _, rest = reply.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        assert_well_formed(rest[:length], b"")
