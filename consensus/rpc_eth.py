"""The eth_*, net_*, web3_* and swarm_* JSON-RPC methods; each runs in the chain's worker thread.

Every block is final once committed (BFT), so "latest", "pending", "safe" and "finalized" all mean the
committed head; "pending" state is never exposed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from eth.abc import BlockHeaderAPI

from consensus import rpc_format as fmt
from consensus.chain import ExecutionChain
from consensus.chain_reads import CallFailed, CallRequest, ReadError
from consensus.rpc_format import EXECUTION_REVERTED, SERVER_ERROR, InvalidParams, RpcError
from consensus.rpc_swarm import SwarmViews
from consensus.service import ChainService
from consensus.txpool import TxPool, TxRejected

Method = Callable[[Any], Awaitable[Any]]


def resolve_header(chain: ExecutionChain, ref: str | int | bytes) -> BlockHeaderAPI:
    """The committed header a block reference names; RpcError when there is none."""
    try:
        if ref == "earliest":
            return chain.reader.header_by_number(0)
        if isinstance(ref, str):
            return chain.head
        if isinstance(ref, int):
            return chain.reader.header_by_number(ref)
        return chain.reader.block_by_hash(ref).header
    except ReadError as exc:
        raise RpcError(SERVER_ERROR, str(exc)) from exc


def parse_call(obj: Any) -> CallRequest:
    if not isinstance(obj, dict):
        raise InvalidParams("call: expected a transaction object")
    payload = obj.get("input", obj.get("data"))
    return CallRequest(
        sender=fmt.address(obj["from"], "from") if obj.get("from") else b"\x00" * 20,
        to=fmt.address(obj["to"], "to") if obj.get("to") else None,
        data=fmt.data(payload, "data") if payload is not None else b"",
        value=fmt.quantity(obj["value"], "value") if obj.get("value") is not None else 0,
        gas=min(fmt.quantity(obj["gas"], "gas"), 2**40) if obj.get("gas") is not None else None,
    )


class EthHandlers:
    """Synchronous method bodies: (raw params) -> JSON result. Called only in the chain worker."""

    def __init__(self, chain: ExecutionChain, pool: TxPool, client_version: str) -> None:
        self.chain, self.pool, self.client_version = chain, pool, client_version
        self.swarm = SwarmViews(chain)

    def eth_chainId(self, params: Any) -> str:
        fmt.params_list(params, 0, 0, "eth_chainId")
        return fmt.hexq(self.chain.chain_id)

    def net_version(self, params: Any) -> str:
        fmt.params_list(params, 0, 0, "net_version")
        return str(self.chain.chain_id)

    def web3_clientVersion(self, params: Any) -> str:
        fmt.params_list(params, 0, 0, "web3_clientVersion")
        return self.client_version

    def eth_blockNumber(self, params: Any) -> str:
        fmt.params_list(params, 0, 0, "eth_blockNumber")
        return fmt.hexq(self.chain.height)

    def eth_gasPrice(self, params: Any) -> str:
        fmt.params_list(params, 0, 0, "eth_gasPrice")
        return fmt.hexq(self.chain.next_base_fee() + 1)

    def eth_maxPriorityFeePerGas(self, params: Any) -> str:
        fmt.params_list(params, 0, 0, "eth_maxPriorityFeePerGas")
        return fmt.hexq(1)

    def eth_getBlockByNumber(self, params: Any) -> dict[str, Any] | None:
        ref, full = fmt.params_list(params, 2, 2, "eth_getBlockByNumber")
        ref = fmt.block_ref(ref)
        if isinstance(ref, bytes):
            raise InvalidParams("eth_getBlockByNumber takes a number or tag")
        if isinstance(ref, int) and ref > self.chain.height:
            return None
        header = resolve_header(self.chain, ref)
        return fmt.format_block(self.chain.reader.block_by_number(header.block_number), _bool(full, "full"))

    def eth_getBlockByHash(self, params: Any) -> dict[str, Any] | None:
        block_hash, full = fmt.params_list(params, 2, 2, "eth_getBlockByHash")
        try:
            block = self.chain.reader.block_by_hash(fmt.data(block_hash, "hash", 32))
        except ReadError:
            return None
        return fmt.format_block(block, _bool(full, "full"))

    def eth_getTransactionByHash(self, params: Any) -> dict[str, Any] | None:
        (tx_hash,) = fmt.params_list(params, 1, 1, "eth_getTransactionByHash")
        tx_hash = fmt.data(tx_hash, "hash", 32)
        try:
            loc = self.chain.reader.transaction(tx_hash)
        except ReadError:
            pending = self.pool.get(tx_hash)
            return fmt.format_tx(pending, None, None) if pending is not None else None
        return fmt.format_tx(loc.tx, loc.block, loc.index)

    def eth_getTransactionReceipt(self, params: Any) -> dict[str, Any] | None:
        (tx_hash,) = fmt.params_list(params, 1, 1, "eth_getTransactionReceipt")
        try:
            return fmt.format_receipt(self.chain.reader.receipt(fmt.data(tx_hash, "hash", 32)))
        except ReadError:
            return None

    def _state(self, ref: Any) -> Any:
        return self.chain.reader.state_at(resolve_header(self.chain, fmt.block_ref(ref or "latest")))

    def eth_getBalance(self, params: Any) -> str:
        addr, ref = fmt.params_list(params, 1, 2, "eth_getBalance")
        return fmt.hexq(self._state(ref).get_balance(fmt.address(addr, "address")))

    def eth_getTransactionCount(self, params: Any) -> str:
        addr, ref = fmt.params_list(params, 1, 2, "eth_getTransactionCount")
        address = fmt.address(addr, "address")
        if ref == "pending":
            return fmt.hexq(self.pool.next_nonce(address, self.chain.state_view()))
        return fmt.hexq(self._state(ref).get_nonce(address))

    def eth_getCode(self, params: Any) -> str:
        addr, ref = fmt.params_list(params, 1, 2, "eth_getCode")
        return fmt.hexb(self._state(ref).get_code(fmt.address(addr, "address")))

    def eth_getStorageAt(self, params: Any) -> str:
        addr, slot, ref = fmt.params_list(params, 2, 3, "eth_getStorageAt")
        slot_n = fmt.storage_slot(slot)
        value = self._state(ref).get_storage(fmt.address(addr, "address"), slot_n)
        return fmt.hexb(value.to_bytes(32, "big"))

    def eth_call(self, params: Any) -> str:
        call, ref, _overrides = fmt.params_list(params, 1, 3, "eth_call")
        header = resolve_header(self.chain, fmt.block_ref(ref or "latest"))
        try:
            return fmt.hexb(self.chain.reader.call(parse_call(call), header))
        except CallFailed as exc:
            raise RpcError(EXECUTION_REVERTED, str(exc), fmt.hexb(exc.output)) from exc

    def eth_estimateGas(self, params: Any) -> str:
        call, ref = fmt.params_list(params, 1, 2, "eth_estimateGas")
        header = resolve_header(self.chain, fmt.block_ref(ref or "latest"))
        request = parse_call(call)
        try:
            self.chain.reader.call(request, header)  # a revert is reported as such, with its reason
            return fmt.hexq(self.chain.reader.estimate_gas(request, header))
        except CallFailed as exc:
            raise RpcError(EXECUTION_REVERTED, str(exc), fmt.hexb(exc.output)) from exc

    def eth_getLogs(self, params: Any) -> list[dict[str, Any]]:
        (flt,) = fmt.params_list(params, 1, 1, "eth_getLogs")
        if not isinstance(flt, dict):
            raise InvalidParams("eth_getLogs: expected a filter object")
        addresses, topics = fmt.address_filter(flt.get("address")), fmt.topic_filter(flt.get("topics"))
        if flt.get("blockHash") is not None:
            block = resolve_header(self.chain, fmt.data(flt["blockHash"], "blockHash", 32))
            first = last = int(block.block_number)
        else:
            first = int(resolve_header(self.chain, fmt.block_ref(flt.get("fromBlock") or "latest")).block_number)
            to_ref = fmt.block_ref(flt.get("toBlock") or "latest")
            last = min(to_ref, self.chain.height) if isinstance(to_ref, int) else int(
                resolve_header(self.chain, to_ref).block_number)
        try:
            return fmt.format_logs(self.chain.reader.logs(first, last, addresses, topics))
        except ReadError as exc:
            raise RpcError(SERVER_ERROR, str(exc)) from exc

    # -------------------------------------------------------- swarm_*

    def swarm_status(self, params: Any) -> dict[str, Any]:
        fmt.params_list(params, 0, 0, "swarm_status")
        head = self.chain.head
        return {
            "chainId": self.chain.chain_id, "genesisHash": fmt.hexb(self.chain.genesis_hash),
            "height": int(head.block_number), "headHash": fmt.hexb(head.hash), "headTimestamp": int(head.timestamp),
            "pool": self.pool.statistics(), "contracts": self.swarm.deployed(),
        }

    def swarm_validators(self, params: Any) -> list[dict[str, Any]]:
        (height,) = fmt.params_list(params, 0, 1, "swarm_validators")
        h = fmt.quantity(height, "height") if height is not None else self.chain.height + 1
        try:
            pairs = self.chain.reader.validator_set_for_height(h)
        except ReadError as exc:
            raise RpcError(SERVER_ERROR, str(exc)) from exc
        return [{"address": fmt.checksum(a), "stake": str(s)} for a, s in pairs]

    def swarm_getRound(self, params: Any) -> dict[str, Any] | None:
        (round_,) = fmt.params_list(params, 1, 1, "swarm_getRound")
        return self.swarm.round(_int_param(round_, "round"))

    def swarm_participants(self, params: Any) -> list[dict[str, Any]]:
        fmt.params_list(params, 0, 0, "swarm_participants")
        return self.swarm.participants()

    def swarm_roundsConfig(self, params: Any) -> dict[str, Any] | None:
        fmt.params_list(params, 0, 0, "swarm_roundsConfig")
        return self.swarm.rounds_config()

    def swarm_roundHistory(self, params: Any) -> list[dict[str, Any]]:
        start, count = fmt.params_list(params, 0, 2, "swarm_roundHistory")
        return self.swarm.history(_int_param(start, "start") if start is not None else None,
                                  min(_int_param(count, "count"), 100) if count is not None else 20)


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidParams(f"{name}: expected true or false, got {value!r}")
    return value


def _int_param(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return fmt.quantity(value, name)


def eth_methods(service: ChainService, client_version: str) -> dict[str, Method]:
    """All built-in methods, each wrapped to run in the service's chain worker."""
    handlers = EthHandlers(service.chain, service.pool, client_version)

    def on_chain(fn: Callable[[Any], Any]) -> Method:
        async def method(params: Any) -> Any:
            return await service.run(fn, params)

        return method

    async def eth_sendRawTransaction(params: Any) -> str:
        (raw,) = fmt.params_list(params, 1, 1, "eth_sendRawTransaction")
        try:
            return fmt.hexb(await service.submit_raw_transaction(fmt.data(raw, "transaction", max_len=1 << 20)))
        except TxRejected as exc:
            raise RpcError(SERVER_ERROR, str(exc), type(exc).reason) from exc

    names = [n for n in dir(EthHandlers) if n.split("_", 1)[0] in ("eth", "net", "web3", "swarm")]
    methods = {name: on_chain(getattr(handlers, name)) for name in names}
    methods["eth_sendRawTransaction"] = eth_sendRawTransaction
    return methods
