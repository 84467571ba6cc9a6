"""The eth_*, net_*, web3_* and swarm_* JSON-RPC methods; each runs in the chain's worker thread, except
eth_call and eth_estimateGas, which run in call worker processes (chain_reads.CallWorkers).

Every block is final once committed (BFT), so "latest", "pending", "safe" and "finalized" all mean the
committed head; "pending" state is never exposed.

eth_call / eth_estimateGas gas: a request's gas above the cap (CallLimits.gas_cap, 5,000,000 by default)
is clamped to the cap, as geth does with --rpc.gascap, and a request without gas gets the cap. A call
that needs more runs out of gas (-32000 "out of gas (gas limit 5000000)"); an estimate that needs more
says "gas required exceeds allowance (5000000)". A call running longer than CallLimits.timeout answers
-32000 "execution aborted (timeout = 5s)"; when every worker is busy for call_wait_timeout, -32005.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from eth.abc import BlockHeaderAPI

from consensus import rpc_format as fmt
from consensus.chain import ExecutionChain
from consensus.chain_reads import (
    DEFAULT_GAS_CAP,
    CallFailed,
    CallRequest,
    CallTimeout,
    CallWorkerError,
    CallWorkers,
    ReadError,
)
from consensus.rpc_format import (
    EXECUTION_REVERTED,
    INTERNAL_ERROR,
    LIMIT_EXCEEDED,
    SERVER_ERROR,
    InvalidParams,
    RpcError,
)
from consensus.rpc_swarm import SwarmViews
from consensus.service import ChainService
from consensus.txpool import TxPool, TxRejected

Method = Callable[[Any], Awaitable[Any]]
log = logging.getLogger(__name__)
# A job on the chain's executor holds it: consensus work that arrives meanwhile waits for its end. Reads
# that may take long (logs over many blocks, rounds with many commits, the participant registry) run as
# several jobs of about this many seconds, or this few view calls, each.
JOB_BUDGET = 0.02
VIEWS_PER_JOB = 4


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


def parse_call(obj: Any, gas_cap: int = DEFAULT_GAS_CAP) -> CallRequest:
    """A call object; its gas is clamped to `gas_cap` (and is the cap when absent)."""
    if not isinstance(obj, dict):
        raise InvalidParams("call: expected a transaction object")
    payload = obj.get("input", obj.get("data"))
    return CallRequest(
        sender=fmt.address(obj["from"], "from") if obj.get("from") else b"\x00" * 20,
        to=fmt.address(obj["to"], "to") if obj.get("to") else None,
        data=fmt.data(payload, "data") if payload is not None else b"",
        value=fmt.quantity(obj["value"], "value") if obj.get("value") is not None else 0,
        gas=min(fmt.quantity(obj["gas"], "gas"), gas_cap) if obj.get("gas") is not None else gas_cap,
    )


class _PatientLimiter:
    """A trio CapacityLimiter for to_thread.run_sync whose waiters give up after `patience` seconds."""

    def __init__(self, total: int, patience: float) -> None:
        self._limiter = trio.CapacityLimiter(total)
        self.patience = patience

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        with trio.move_on_after(self.patience):
            await self._limiter.acquire_on_behalf_of(borrower)
            return
        raise RpcError(LIMIT_EXCEEDED, f"too many calls: {int(self._limiter.total_tokens)} run at once and none "
                                       f"finished within {self.patience:g} s; try again later")

    def release_on_behalf_of(self, borrower: object) -> None:
        self._limiter.release_on_behalf_of(borrower)


class Calls:
    """eth_call / eth_estimateGas through CallWorkers: at most `workers` at once, each in a thread of its
    own that only waits for its worker process; others wait up to `wait_timeout`, then -32005."""

    def __init__(self, workers: CallWorkers, wait_timeout: float = 5.0) -> None:
        self.workers = workers
        self._limiter = _PatientLimiter(workers.limits.workers, wait_timeout)

    @property
    def gas_cap(self) -> int:
        return self.workers.limits.gas_cap

    async def run(self, op: str, ref: str | int | bytes, request: CallRequest) -> bytes | int:
        if isinstance(ref, str):
            block: tuple[str, Any] = ("tag", ref)
        else:
            block = ("number", ref) if isinstance(ref, int) else ("hash", ref)
        try:  # abandoned on cancel: the thread ends with its worker's deadline and frees its slot then
            return await trio.to_thread.run_sync(  # type: ignore[call-arg]
                self.workers.call, op, block, request, abandon_on_cancel=True,
                limiter=self._limiter)  # type: ignore[arg-type]
        except CallFailed as exc:
            if exc.reverted:
                raise RpcError(EXECUTION_REVERTED, str(exc), fmt.hexb(exc.output)) from exc
            raise RpcError(SERVER_ERROR, str(exc)) from exc
        except (ReadError, CallTimeout) as exc:
            raise RpcError(SERVER_ERROR, str(exc)) from exc
        except CallWorkerError as exc:
            log.warning("event=rpc_call_worker_failed error=%s", exc)
            raise RpcError(INTERNAL_ERROR, str(exc)) from exc


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

    def logs_query(self, params: Any) -> tuple[int, int, list[bytes], list[list[bytes] | None]]:
        """eth_getLogs, part 1: the filter's block range (cut at the head), addresses and topics."""
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
            first, last = self.chain.reader.log_range(first, last)
        except ReadError as exc:
            raise RpcError(SERVER_ERROR, str(exc)) from exc
        return first, last, addresses, topics

    def logs_part(self, first: int, last: int, addresses: list[bytes], topics: list[list[bytes] | None],
                  found_before: int) -> tuple[list[dict[str, Any]], int]:
        """eth_getLogs, part 2 and on: the logs from block `first`, for at most JOB_BUDGET seconds."""
        try:
            entries, following = self.chain.reader.logs_part(first, last, addresses, topics, JOB_BUDGET,
                                                             found_before)
        except ReadError as exc:
            raise RpcError(SERVER_ERROR, str(exc)) from exc
        return fmt.format_logs(entries), following

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

    def swarm_roundsConfig(self, params: Any) -> dict[str, Any] | None:
        fmt.params_list(params, 0, 0, "swarm_roundsConfig")
        return self.swarm.rounds_config()


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidParams(f"{name}: expected true or false, got {value!r}")
    return value


def _int_param(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return fmt.quantity(value, name)


def eth_methods(service: ChainService, client_version: str, calls: Calls | None = None) -> dict[str, Method]:
    """All built-in methods, each wrapped to run in the service's chain worker; eth_call and
    eth_estimateGas run through `calls` (none: a CallWorkers with the default limits)."""
    handlers = EthHandlers(service.chain, service.pool, client_version)
    if calls is None:
        calls = Calls(CallWorkers(service.chain.reader.base_db, service.chain.chain_id))

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

    async def eth_call(params: Any) -> str:
        call, ref, _overrides = fmt.params_list(params, 1, 3, "eth_call")
        request = parse_call(call, calls.gas_cap)
        return fmt.hexb(await calls.run("call", fmt.block_ref(ref or "latest"), request))  # type: ignore[arg-type]

    async def eth_estimateGas(params: Any) -> str:
        call, ref = fmt.params_list(params, 1, 2, "eth_estimateGas")
        request = parse_call(call, calls.gas_cap)
        return fmt.hexq(await calls.run("estimate", fmt.block_ref(ref or "latest"), request))  # type: ignore[arg-type]

    # answered on the event loop: they read only constants and the tip the chain publishes at each commit
    async def eth_blockNumber(params: Any) -> str:
        fmt.params_list(params, 0, 0, "eth_blockNumber")
        return fmt.hexq(service.chain.tip.height)

    async def eth_chainId(params: Any) -> str:
        fmt.params_list(params, 0, 0, "eth_chainId")
        return fmt.hexq(service.chain.chain_id)

    async def net_version(params: Any) -> str:
        fmt.params_list(params, 0, 0, "net_version")
        return str(service.chain.chain_id)

    async def web3_clientVersion(params: Any) -> str:
        fmt.params_list(params, 0, 0, "web3_clientVersion")
        return client_version

    async def eth_getLogs(params: Any) -> list[dict[str, Any]]:
        first, last, addresses, topics = await service.run(handlers.logs_query, params)
        found: list[dict[str, Any]] = []
        while first <= last:
            part, first = await service.run(handlers.logs_part, first, last, addresses, topics, len(found))
            found.extend(part)
        return found

    views = handlers.swarm

    async def round_with_commits(r: int) -> dict[str, Any] | None:
        info = await service.run(views.round_info, r)
        if info is None:
            return None
        count = int(info["commitCount"])
        commits: list[Any] = []
        for start in range(0, count, VIEWS_PER_JOB):
            commits += await service.run(views.commits, r, start, min(count, start + VIEWS_PER_JOB))
        return {"round": r, **info, "commits": commits, **await service.run(views.secagg_of, r)}

    async def swarm_getRound(params: Any) -> dict[str, Any] | None:
        (round_,) = fmt.params_list(params, 1, 1, "swarm_getRound")
        return await round_with_commits(_int_param(round_, "round"))

    async def swarm_roundHistory(params: Any) -> list[dict[str, Any]]:
        start, count = fmt.params_list(params, 0, 2, "swarm_roundHistory")
        rounds = await service.run(views.history_rounds, _int_param(start, "start") if start is not None else None,
                                   min(_int_param(count, "count"), 100) if count is not None else 20)
        found = [await round_with_commits(r) for r in rounds]
        return [r for r in found if r is not None]

    async def swarm_participants(params: Any) -> list[dict[str, Any]]:
        fmt.params_list(params, 0, 0, "swarm_participants")
        addresses, current = await service.run(views.participant_list)
        out: list[dict[str, Any]] = []
        for start in range(0, len(addresses), VIEWS_PER_JOB):
            out += await service.run(views.participant_infos, addresses[start:start + VIEWS_PER_JOB], current)
        return out

    names = [n for n in dir(EthHandlers) if n.split("_", 1)[0] in ("eth", "net", "web3", "swarm")]
    methods = {name: on_chain(getattr(handlers, name)) for name in names}
    methods.update(eth_sendRawTransaction=eth_sendRawTransaction, eth_call=eth_call, eth_estimateGas=eth_estimateGas,
                   eth_getLogs=eth_getLogs, swarm_getRound=swarm_getRound, swarm_roundHistory=swarm_roundHistory,
                   swarm_participants=swarm_participants, eth_blockNumber=eth_blockNumber, eth_chainId=eth_chainId,
                   net_version=net_version, web3_clientVersion=web3_clientVersion)
    return methods
