"""JSON-RPC server against web3.py as a real HTTP client, plus hostile requests over raw sockets."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from eth_account import Account
from web3 import Web3
from web3.exceptions import BlockNotFound, ContractLogicError, Web3RPCError

from consensus.chain import ExecutionChain
from consensus.contracts import load_artifact
from consensus.devtools import address_of, dev_genesis, dev_key, sign_tx
from consensus.genesis_block import ROUNDS_ADDRESS, STAKING_ADDRESS
from consensus.rpc import RpcServer
from consensus.service import ChainService
from swarmnode.p2p.identity import peer_id_of

KEYS = [dev_key(i) for i in range(3)]
PEER_TWO = peer_id_of(KEYS[2]).to_base58()  # register accepts only the sender's own peer id
ADDRS = [Web3.to_checksum_address(address_of(k)) for k in KEYS]
COINBASE = address_of(KEYS[0])
TO = b"\x11" * 20
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@pytest.fixture
async def node(tmp_path):
    genesis = dev_genesis(2, 3)
    chain = ExecutionChain.open(tmp_path / "node", genesis)
    gossiped: list[bytes] = []

    async def gossip(raw: bytes) -> None:
        gossiped.append(raw)

    service = ChainService(chain, clock=lambda: genesis.genesis_time + chain.height, on_transaction=gossip)
    service.gossiped = gossiped  # type: ignore[attr-defined]
    server = RpcServer(service)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}", request_kwargs={"timeout": 30}))
        yield service, server, w3, port
        nursery.cancel_scope.cancel()
    chain.close()


async def in_thread(fn, *args):
    return await trio.to_thread.run_sync(fn, *args)


async def produce_block(service: ChainService) -> int:
    executed = await service.propose(COINBASE)
    header = await service.commit(executed.hash, b"cert")
    return int(header.block_number)


async def test_reads_blocks_balances_and_identity(node) -> None:
    service, _, w3, _ = node
    assert await in_thread(lambda: w3.eth.chain_id) == 7331
    assert await in_thread(lambda: w3.net.version) == "7331"
    assert (await in_thread(lambda: w3.client_version)).startswith("swarmnode/")
    assert await in_thread(lambda: w3.eth.block_number) == 0
    genesis = await in_thread(w3.eth.get_block, 0)
    assert genesis["hash"] == service.chain.genesis_hash
    assert await in_thread(w3.eth.get_balance, ADDRS[1]) == 10**24
    assert await in_thread(w3.eth.get_code, Web3.to_checksum_address(STAKING_ADDRESS)) != b""
    with pytest.raises(BlockNotFound):
        await in_thread(w3.eth.get_block, 5)
    status = await in_thread(lambda: w3.provider.make_request("swarm_status", []))
    assert status["result"]["height"] == 0 and status["result"]["contracts"]["staking"] is True


async def test_signed_transfer_is_included_and_readable(node) -> None:
    service, _, w3, _ = node
    raw = sign_tx(KEYS[1], 7331, 0, to=TO, value=12345)
    tx_hash = await in_thread(w3.eth.send_raw_transaction, raw)
    assert service.gossiped == [raw]
    pending = await in_thread(w3.eth.get_transaction, tx_hash)
    assert pending["blockNumber"] is None
    assert await in_thread(w3.eth.get_transaction_count, ADDRS[1], "pending") == 1
    legacy_hash = await in_thread(w3.eth.send_raw_transaction, sign_tx(KEYS[1], 7331, 1, to=TO, legacy=True))
    assert await produce_block(service) == 1
    receipt = await in_thread(w3.eth.get_transaction_receipt, tx_hash)
    assert receipt["status"] == 1 and receipt["blockNumber"] == 1 and receipt["gasUsed"] == 21_000
    tx = await in_thread(w3.eth.get_transaction, tx_hash)
    assert tx["value"] == 12345 and tx["from"] == ADDRS[1]
    assert await in_thread(w3.eth.get_balance, Web3.to_checksum_address(TO)) == 12345
    block = await in_thread(lambda: w3.eth.get_block("latest", True))
    assert block["number"] == 1 and block["transactions"][0]["hash"] == tx_hash
    assert (await in_thread(w3.eth.get_block, block["hash"]))["number"] == 1
    legacy = await in_thread(w3.eth.get_transaction, legacy_hash)
    assert legacy["type"] == 0 and legacy["transactionIndex"] == 1 and legacy["v"] in (7331 * 2 + 35, 7331 * 2 + 36)
    assert await in_thread(w3.eth.get_transaction_count, ADDRS[1]) == 2


async def test_contracts_through_their_abi_with_logs_and_reverts(node) -> None:
    service, _, w3, _ = node
    staking = w3.eth.contract(address=Web3.to_checksum_address(STAKING_ADDRESS), abi=load_artifact("Staking")["abi"])
    rounds = w3.eth.contract(address=Web3.to_checksum_address(ROUNDS_ADDRESS), abi=load_artifact("SwarmRounds")["abi"])
    validators, stakes = await in_thread(staking.functions.getValidators().call)
    assert validators == ADDRS[:2] and stakes == [32 * 10**18] * 2
    assert await in_thread(rounds.functions.commitWindowSecs().call) == 60

    with pytest.raises(ContractLogicError, match="sender not registered"):
        await in_thread(rounds.functions.commitUpdate(0, b"\x01" * 32, 10, 1, 1, 0, 0, 0, 0, 0).call, {"from": ADDRS[2]})

    def register_tx() -> bytes:
        tx = rounds.functions.register(PEER_TWO).build_transaction({"from": ADDRS[2], "nonce": 0})
        return bytes(Account.sign_transaction(tx, KEYS[2]).raw_transaction)

    tx_hash = await in_thread(w3.eth.send_raw_transaction, await in_thread(register_tx))
    await produce_block(service)
    receipt = await in_thread(w3.eth.get_transaction_receipt, tx_hash)
    assert receipt["status"] == 1
    (event,) = rounds.events.Registered().process_receipt(receipt)
    assert event["args"]["participant"] == ADDRS[2] and event["args"]["peerId"] == PEER_TWO
    logs = await in_thread(w3.eth.get_logs, {"fromBlock": 0, "toBlock": "latest", "address": rounds.address})
    assert [log["transactionHash"] for log in logs] == [tx_hash]
    topic = logs[0]["topics"][0]
    assert len(await in_thread(w3.eth.get_logs, {"fromBlock": 0, "topics": [topic]})) == 1
    assert await in_thread(w3.eth.get_logs, {"fromBlock": 0, "address": staking.address}) == []
    assert await in_thread(rounds.functions.isRegistered(ADDRS[2]).call) is True
    history = await in_thread(lambda: w3.provider.make_request("swarm_roundHistory", []))
    assert history["result"][0]["round"] == 0
    validators = await in_thread(lambda: w3.provider.make_request("swarm_validators", []))
    assert [v["address"] for v in validators["result"]] == ADDRS[:2]


@pytest.mark.parametrize(
    ("make_raw", "reason"),
    [
        (lambda: "0xc0ffee", "malformed"),
        (lambda: "0x" + sign_tx(KEYS[1], 1, 0, to=TO).hex(), "wrong-chain-id"),
        (lambda: "0x" + sign_tx(KEYS[1], 7331, 3, to=TO).hex(), "nonce-gap"),
        (lambda: "0x" + sign_tx(KEYS[1], 7331, 0, to=TO, data=b"\x01" * 150_000, gas=5_000_000).hex(), "oversized"),
        (lambda: "0x" + _bad_signature().hex(), "bad-signature"),
        (lambda: "0x" + sign_tx(KEYS[1], 7331, 0, to=None, data=b"\x60\x00", gas=100_000).hex(), "forbidden-target"),
        (lambda: "0x" + sign_tx(KEYS[1], 7331, 0, to=b"\x00" * 19 + b"\x05", gas=100_000).hex(), "forbidden-target"),
    ],
)
async def test_bad_transactions_are_rejected_with_a_reason(node, make_raw, reason) -> None:
    service, _, w3, _ = node
    response = await in_thread(lambda: w3.provider.make_request("eth_sendRawTransaction", [make_raw()]))
    assert response["error"]["code"] == -32000 and response["error"]["data"] == reason, response
    assert len(service.pool) == 0 and await service.height() == 0 and service.gossiped == []
    with pytest.raises(Web3RPCError):
        await in_thread(w3.eth.send_raw_transaction, make_raw())


def _bad_signature() -> bytes:
    from consensus.genesis_block import chain_class

    builder = chain_class(7331).get_vm_class_for_block_number(1).get_transaction_builder()
    tx = builder.decode(sign_tx(KEYS[1], 7331, 0, to=TO))
    return tx.copy(s=SECP256K1_N - 1).encode()  # high s: invalid since EIP-2


async def raw_http(port: int, payload: bytes) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        chunks = []
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def post(body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n" + extra
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def rpc_error(port: int, body: bytes) -> dict:
    status, reply = await raw_http(port, post(body))
    assert status == 200, reply
    return json.loads(reply)


async def test_hostile_requests_get_errors_and_the_server_survives(node) -> None:
    _, _, w3, port = node
    assert (await rpc_error(port, b"{not json"))["error"]["code"] == -32700
    assert (await rpc_error(port, b"[]"))["error"]["code"] == -32600
    assert (await rpc_error(port, b"[" * 200_000 + b"]" * 200_000))["error"]["code"] == -32700
    assert (await rpc_error(port, b"\xff\xfe{}"))["error"]["code"] == -32700
    assert (await rpc_error(port, b'"just a string"'))["error"]["code"] == -32600
    assert (await rpc_error(port, b'{"jsonrpc":"2.0","id":1,"method":"nope"}'))["error"]["code"] == -32601
    bad_types = [
        b'{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":[12, "latest"]}',
        b'{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":{"a":1}}',
        b'{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["0x0", "yes"]}',
        b'{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["0xzz", false]}',
        b'{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[[], "latest"]}',
        b'{"jsonrpc":"2.0","id":1,"method":"eth_getLogs","params":[{"topics":[[1]]}]}',
        b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[1,2,3]}',
    ]
    for body in bad_types:
        assert (await rpc_error(port, body))["error"]["code"] == -32602, body
    batch = json.loads((await raw_http(port, post(
        b'[{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"},{"jsonrpc":"2.0","id":2,"method":"x"},5]')))[1])
    assert [r.get("result", r.get("error", {}).get("code")) for r in batch] == ["0x0", -32601, -32600]

    huge = post(b"x" * (2 * 1024 * 1024))
    status, _ = await raw_http(port, huge[: huge.index(b"\r\n\r\n") + 4 + 1000])  # announced 2 MiB body
    assert status == 413
    chunked = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
               + (b"10000\r\n" + b"x" * 0x10000 + b"\r\n") * 17)  # 1.06 MiB, no length announced
    status, _ = await raw_http(port, chunked)
    assert status == 413
    status, body = await raw_http(port, post(b'{"jsonrpc":"2.0","method":"eth_blockNumber"}'))  # notification
    assert (status, body) == (204, b"")
    status, _ = await raw_http(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 405
    status, _ = await raw_http(port, b"\x00\x01garbage\r\n\r\n")
    assert status == 400
    assert await in_thread(lambda: w3.eth.block_number) == 0  # still serving


async def test_registered_methods_and_failing_methods(node) -> None:
    _, server, w3, port = node

    async def echo(params):
        return {"echo": params}

    async def broken(params):
        raise ZeroDivisionError("boom")

    server.register_method("swarm_echo", echo)
    server.register_method("swarm_broken", broken)
    reply = await in_thread(lambda: w3.provider.make_request("swarm_echo", [1, "a"]))
    assert reply["result"] == {"echo": [1, "a"]}
    error = await rpc_error(port, b'{"jsonrpc":"2.0","id":7,"method":"swarm_broken","params":[]}')
    assert error["id"] == 7 and error["error"]["code"] == -32603 and "boom" in error["error"]["message"]
    assert await in_thread(lambda: w3.eth.block_number) == 0


def test_json_depth_guard() -> None:
    from consensus.rpc import json_too_deep

    assert json_too_deep(b"[" * 65 + b"]" * 65)
    assert not json_too_deep(b"[" * 64 + b"]" * 64)
    assert not json_too_deep(b'["' + b"[" * 500 + b'"]')  # brackets inside a string do not nest
    assert not json_too_deep(b'[{"a":[1,2]},' * 30 + b"1" + b"]" * 30)


async def test_wait_height_returns_once_a_block_is_committed(node) -> None:
    service = node[0]
    reached = []

    async def waiter() -> None:
        await service.wait_height(1)
        reached.append(await service.height())

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert reached == []
            await produce_block(service)
    assert reached == [1]


async def pending_from(w3: Web3, account: str) -> None:
    """Until the node's pool holds a transaction from `account` (the CLI sends in a thread of its own)."""
    with trio.fail_after(30):
        while (await in_thread(w3.eth.get_transaction_count, account, "pending")
               == await in_thread(w3.eth.get_transaction_count, account, "latest")):
            await trio.sleep(0.05)


async def test_cli_sender_sends_again_when_another_transaction_takes_its_nonce(node) -> None:
    """`swarmnode register/leave` follow their transaction: a wallet transaction from the same account
    that replaces it in the pool (same nonce, higher fee) and is included first makes the CLI build and
    send it again with the next nonce, instead of waiting for a receipt that can never come."""
    from swarmnode.cli.member_cmd import send_followed
    from swarmnode.cli.rpc_client import RpcClient

    service, _, w3, port = node
    me = address_of(KEYS[2])
    built: list[int] = []
    notes: list[str] = []

    def build(nonce: int) -> bytes:
        built.append(nonce)
        return sign_tx(KEYS[2], 7331, nonce, to=TO, value=7)

    result: dict = {}

    def follow() -> None:
        result["out"] = send_followed(RpcClient(f"http://127.0.0.1:{port}"), me, build, 60.0, notes.append, "leave")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(in_thread, follow)
        await pending_from(w3, ADDRS[2])
        # the wallet replaces the CLI's transaction (same nonce, fee bumped) and is included first
        wallet = sign_tx(KEYS[2], 7331, 0, to=b"\x22" * 20, value=1, max_fee=4 * 10**9, tip=2 * 10**9)
        wallet_hash = await in_thread(w3.eth.send_raw_transaction, wallet)
        await produce_block(service)
        while len(built) < 2:
            await trio.sleep(0.05)
        await pending_from(w3, ADDRS[2])  # built is not yet sent: the block must wait for it
        await produce_block(service)
    tx_hash, receipt = result["out"]
    assert built == [0, 1]
    assert receipt["status"] == "0x1" and int(receipt["blockNumber"], 16) == 2
    assert tx_hash != "0x" + bytes(wallet_hash).hex()
    assert any("nonce 0 was taken" in n for n in notes)
    assert await in_thread(w3.eth.get_transaction_count, ADDRS[2]) == 2


async def test_cli_sender_asks_again_when_the_node_says_its_nonce_is_too_low(node) -> None:
    """A node that has just restarted (or committed a block between the CLI's two calls) refuses the
    transaction as nonce-too-low: the CLI asks for the nonce again instead of failing."""
    from swarmnode.cli.member_cmd import send_followed
    from swarmnode.cli.rpc_client import RpcClient

    service, _, w3, port = node
    await in_thread(w3.eth.send_raw_transaction, sign_tx(KEYS[1], 7331, 0, to=TO, value=1))
    await produce_block(service)
    asked: list[int] = []
    notes: list[str] = []

    def build(nonce: int) -> bytes:
        asked.append(nonce)
        stale = nonce - 1 if len(asked) == 1 else nonce  # the first time, a view one block old
        return sign_tx(KEYS[1], 7331, stale, to=TO, value=7)

    result: dict = {}

    def follow() -> None:
        result["out"] = send_followed(RpcClient(f"http://127.0.0.1:{port}"), address_of(KEYS[1]), build, 60.0,
                                      notes.append, "leave")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(in_thread, follow)
        while len(asked) < 2:
            await trio.sleep(0.05)
        await pending_from(w3, ADDRS[1])
        await produce_block(service)
    _, receipt = result["out"]
    assert asked == [1, 1] and receipt["status"] == "0x1"
    assert any("nonce 1 no longer free" in n and "nonce-too-low" in n for n in notes), notes


async def test_cli_sender_asks_again_when_its_nonce_is_taken_in_the_pool(node) -> None:
    """The daemon's own transaction reaches the pool between the CLI's nonce query and its send, at the
    same nonce and a fee the CLI's does not beat: the pool answers replacement-underpriced, and the CLI
    asks for the nonce again instead of failing (`swarmnode leave` did fail this way in the churn test)."""
    from swarmnode.cli.member_cmd import send_followed
    from swarmnode.cli.rpc_client import RpcClient

    service, _, w3, port = node
    daemon = sign_tx(KEYS[2], 7331, 0, to=b"\x33" * 20, value=1, max_fee=4 * 10**9, tip=2 * 10**9)
    await in_thread(w3.eth.send_raw_transaction, daemon)  # pending: the pool holds nonce 0
    asked: list[int] = []
    notes: list[str] = []

    def build(nonce: int) -> bytes:
        asked.append(nonce)
        taken = nonce - 1 if len(asked) == 1 else nonce  # the first time, the nonce the daemon just took
        return sign_tx(KEYS[2], 7331, taken, to=TO, value=7)

    result: dict = {}

    def follow() -> None:
        result["out"] = send_followed(RpcClient(f"http://127.0.0.1:{port}"), address_of(KEYS[2]), build, 60.0,
                                      notes.append, "leave")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(in_thread, follow)
        # the CLI's second transaction is in the pool (the node's RPC has no event to wait on)
        while await in_thread(w3.eth.get_transaction_count, ADDRS[2], "pending") < 2:
            await trio.sleep(0.05)
        await produce_block(service)
    _, receipt = result["out"]
    assert asked == [1, 1] and receipt["status"] == "0x1"
    assert any("nonce 1 no longer free" in n and "replacement-underpriced" in n for n in notes), notes
    assert await in_thread(w3.eth.get_transaction_count, ADDRS[2]) == 2
