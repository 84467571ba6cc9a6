"""The CLI's RpcClient.batch against the real JSON-RPC server: more calls than one batch may hold go out in
batches of the server's limit, answers come back in order, and a failed call is the CLI's readable error."""

from __future__ import annotations

import pytest

from consensus import rpc as server_rpc
from swarmnode.cli import rpc_client
from swarmnode.cli.errors import CliError
from swarmnode.cli.rpc_client import RpcClient
from tests.integration.test_rpc import in_thread, node, produce_block  # noqa: F401  (node: a fixture)


class CountingClient(RpcClient):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.posts: list[int] = []  # calls per HTTP request

    def _post(self, payload: object) -> object:
        self.posts.append(len(payload) if isinstance(payload, list) else 1)
        return super()._post(payload)


def test_the_client_batches_at_the_servers_limit() -> None:
    assert rpc_client.MAX_BATCH == server_rpc.MAX_BATCH


async def test_batches_split_at_the_cap_and_keep_order(node) -> None:  # noqa: F811
    service, _server, _w3, port = node
    for _ in range(3):
        await produce_block(service)
    client = CountingClient(f"http://127.0.0.1:{port}")
    heights = [i % 4 for i in range(rpc_client.MAX_BATCH * 2 + 5)] + [99]  # 99: past the head, answered null
    blocks = await in_thread(lambda: client.batch("eth_getBlockByNumber", [[hex(h), False] for h in heights]))
    assert client.posts == [rpc_client.MAX_BATCH, rpc_client.MAX_BATCH, 6]
    assert [int(b["number"], 16) for b in blocks[:-1]] == heights[:-1] and blocks[-1] is None
    # exactly one batch at the cap, and none for no calls
    client.posts.clear()
    exact = await in_thread(lambda: client.batch("eth_blockNumber", [[]] * rpc_client.MAX_BATCH))
    assert client.posts == [rpc_client.MAX_BATCH] and set(exact) == {"0x3"}
    assert await in_thread(lambda: client.batch("eth_blockNumber", [])) == [] and client.posts == [rpc_client.MAX_BATCH]


async def test_a_failed_call_in_a_batch_is_a_readable_error(node) -> None:  # noqa: F811
    _service, _server, _w3, port = node
    client = RpcClient(f"http://127.0.0.1:{port}")
    with pytest.raises(CliError, match="eth_getBlockByNumber: invalid params"):
        await in_thread(lambda: client.batch("eth_getBlockByNumber", [["0x0", False], ["not a number", False]]))
    assert await in_thread(lambda: client.call("eth_blockNumber")) == "0x0", "the client works on"
