"""Ethereum JSON-RPC encoding: strict parsing of params and the JSON shapes of blocks, txs, receipts, logs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import rlp
from eth.abc import BlockAPI, SignedTransactionAPI
from eth_utils import to_checksum_address

from consensus.chain_reads import LogEntry, ReceiptInfo, effective_gas_price
from consensus.errors import ConsensusError

_QUANTITY_RE = re.compile(r"^0x(0|[1-9a-fA-F][0-9a-fA-F]*)$")
_SLOT_RE = re.compile(r"^0x[0-9a-fA-F]{1,64}$")
BLOCK_TAGS = ("latest", "earliest", "pending", "safe", "finalized")


PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603
SERVER_ERROR = -32000  # e.g. a transaction the pool rejects, an unknown block, a call out of gas or time
LIMIT_EXCEEDED = -32005  # a server limit: too many calls at once, a batch's responses too large
EXECUTION_REVERTED = 3  # geth's code for a reverted eth_call / eth_estimateGas; data = revert bytes


class RpcError(ConsensusError):
    """An error answered to the client as a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def to_json(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class InvalidParams(ConsensusError):
    """A JSON-RPC parameter has the wrong type or format (-32602)."""


# ---------------------------------------------------------------- parsing


def quantity(value: Any, name: str) -> int:
    """A hex quantity of at most 256 bits (nothing in Ethereum's JSON-RPC is larger)."""
    if isinstance(value, str) and len(value) <= 66 and _QUANTITY_RE.match(value):
        return int(value, 16)
    if isinstance(value, str) and len(value) > 66 and _QUANTITY_RE.match(value[:66]):
        raise InvalidParams(f"{name}: quantity larger than 2**256")
    raise InvalidParams(f"{name}: expected a hex quantity like 0x1a, got {_show(value)}")


def data(value: Any, name: str, length: int | None = None, max_len: int = 1 << 20) -> bytes:
    # no regex: `^0x([0-9a-fA-F]{2})*$` takes ~100 ms over a 1 MB string; this takes a few
    digits = value[2:] if isinstance(value, str) and value[:2] == "0x" else None
    raw = None
    if digits is not None and len(digits) <= 2 * max_len and len(digits) % 2 == 0 and digits.isascii() \
            and (digits.isalnum() or not digits):
        try:
            raw = bytes.fromhex(digits)
        except ValueError:  # letters beyond f
            raw = None
    if raw is None:
        raise InvalidParams(f"{name}: expected 0x-prefixed hex bytes, got {_show(value)}")
    if length is not None and len(raw) != length:
        raise InvalidParams(f"{name}: expected {length} bytes, got {len(raw)}")
    return raw


def storage_slot(value: Any) -> int:
    """A storage slot: a quantity or a 32-byte word, either as 0x-hex."""
    if isinstance(value, str) and _SLOT_RE.match(value):
        return int(value, 16)
    raise InvalidParams(f"slot: expected 0x-hex of at most 32 bytes, got {_show(value)}")


def address(value: Any, name: str) -> bytes:
    return data(value, name, 20)


def block_ref(value: Any, name: str = "block") -> str | int | bytes:
    """A block tag, number, or (EIP-1898) {"blockHash": ...} / {"blockNumber": ...}."""
    if value in BLOCK_TAGS:
        return str(value)
    if isinstance(value, dict):
        if "blockHash" in value:
            return data(value["blockHash"], f"{name}.blockHash", 32)
        if "blockNumber" in value:
            return block_ref(value["blockNumber"], f"{name}.blockNumber")
        raise InvalidParams(f"{name}: expected blockHash or blockNumber")
    return quantity(value, name)


def params_list(params: Any, minimum: int, maximum: int, method: str) -> list[Any]:
    if params is None:
        params = []
    if not isinstance(params, list):
        raise InvalidParams(f"{method}: params must be an array")
    if not minimum <= len(params) <= maximum:
        want = str(minimum) if minimum == maximum else f"{minimum} to {maximum}"
        raise InvalidParams(f"{method}: expected {want} params, got {len(params)}")
    return params + [None] * (maximum - len(params))


def topic_filter(value: Any) -> list[list[bytes] | None]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 4:
        raise InvalidParams("topics: expected an array of at most 4 entries")
    out: list[list[bytes] | None] = []
    for i, entry in enumerate(value):
        if entry is None:
            out.append(None)
        elif isinstance(entry, list):
            out.append([data(t, f"topics[{i}]", 32) for t in entry[:64]])
        else:
            out.append([data(entry, f"topics[{i}]", 32)])
    return out


def address_filter(value: Any) -> list[bytes]:
    if value is None:
        return []
    if isinstance(value, list):
        return [address(a, "address") for a in value[:256]]
    return [address(value, "address")]


def _show(value: Any) -> str:
    if isinstance(value, (str, bytes)) and len(value) > 80:
        value = value[:80]
    elif isinstance(value, (list, dict)) and len(value) > 8:
        return f"{type(value).__name__} of {len(value)} items"
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------- formatting


def hexq(n: int) -> str:
    return hex(int(n))


def hexb(b: bytes) -> str:
    return "0x" + bytes(b).hex()


def checksum(a: bytes) -> str:
    return to_checksum_address(bytes(a))


def format_block(block: BlockAPI, full_txs: bool) -> dict[str, Any]:
    h = block.header
    out: dict[str, Any] = {
        "number": hexq(h.block_number), "hash": hexb(h.hash), "parentHash": hexb(h.parent_hash),
        "nonce": hexb(h.nonce), "sha3Uncles": hexb(h.uncles_hash), "logsBloom": hexb(h.bloom.to_bytes(256, "big")),
        "transactionsRoot": hexb(h.transaction_root), "stateRoot": hexb(h.state_root),
        "receiptsRoot": hexb(h.receipt_root), "miner": checksum(h.coinbase), "difficulty": "0x0",
        "totalDifficulty": "0x0", "extraData": hexb(h.extra_data), "size": hexq(len(rlp.encode(block))),
        "gasLimit": hexq(h.gas_limit), "gasUsed": hexq(h.gas_used), "timestamp": hexq(h.timestamp),
        "mixHash": hexb(h.mix_hash), "baseFeePerGas": hexq(h.base_fee_per_gas), "uncles": [],
        "withdrawalsRoot": hexb(h.withdrawals_root), "withdrawals": [],
        "blobGasUsed": hexq(h.blob_gas_used), "excessBlobGas": hexq(h.excess_blob_gas),
        "parentBeaconBlockRoot": hexb(h.parent_beacon_block_root),
    }
    if full_txs:
        out["transactions"] = [format_tx(tx, block, i) for i, tx in enumerate(block.transactions)]
    else:
        out["transactions"] = [hexb(tx.hash) for tx in block.transactions]
    return out


def format_tx(tx: SignedTransactionAPI, block: BlockAPI | None, index: int | None) -> dict[str, Any]:
    tx_type = getattr(tx, "type_id", None) or 0
    out: dict[str, Any] = {
        "hash": hexb(tx.hash), "type": hexq(tx_type), "nonce": hexq(tx.nonce), "from": checksum(tx.sender),
        "to": checksum(tx.to) if tx.to else None, "value": hexq(tx.value), "gas": hexq(tx.gas),
        "input": hexb(tx.data), "chainId": hexq(tx.chain_id) if tx.chain_id is not None else None,
        "r": hexq(tx.r), "s": hexq(tx.s), "v": hexq(tx.v if tx_type == 0 else tx.y_parity),
        "blockHash": hexb(block.hash) if block is not None else None,
        "blockNumber": hexq(block.number) if block is not None else None,
        "transactionIndex": hexq(index) if index is not None else None,
    }
    base_fee = block.header.base_fee_per_gas if block is not None else 0
    out["gasPrice"] = hexq(effective_gas_price(tx, base_fee) if block is not None else _fee_cap(tx))
    if tx_type:
        out["yParity"] = hexq(tx.y_parity)
        out["accessList"] = [{"address": checksum(a), "storageKeys": [hexb(k.to_bytes(32, "big")) for k in keys]}
                             for a, keys in tx.access_list]
    if tx_type == 2:
        out["maxFeePerGas"] = hexq(tx.max_fee_per_gas)
        out["maxPriorityFeePerGas"] = hexq(tx.max_priority_fee_per_gas)
    return out


def _fee_cap(tx: SignedTransactionAPI) -> int:
    return int(tx.max_fee_per_gas if getattr(tx, "type_id", None) == 2 else tx.gas_price)


def format_log(entry: LogEntry) -> dict[str, Any]:
    return {
        "address": checksum(entry.address), "topics": [hexb(t) for t in entry.topics], "data": hexb(entry.data),
        "blockNumber": hexq(entry.block_number), "blockHash": hexb(entry.block_hash),
        "transactionHash": hexb(entry.tx_hash), "transactionIndex": hexq(entry.tx_index),
        "logIndex": hexq(entry.log_index), "removed": False,
    }


def format_receipt(info: ReceiptInfo) -> dict[str, Any]:
    tx, block = info.location.tx, info.location.block
    return {
        "transactionHash": hexb(tx.hash), "transactionIndex": hexq(info.location.index),
        "blockHash": hexb(block.hash), "blockNumber": hexq(block.number), "from": checksum(tx.sender),
        "to": checksum(tx.to) if tx.to else None, "cumulativeGasUsed": hexq(info.cumulative_gas_used),
        "gasUsed": hexq(info.gas_used), "effectiveGasPrice": hexq(info.effective_gas_price),
        "contractAddress": checksum(info.contract_address) if info.contract_address else None,
        "logs": [format_log(e) for e in info.logs], "logsBloom": hexb(info.receipt.bloom.to_bytes(256, "big")),
        "type": hexq(getattr(tx, "type_id", None) or 0), "status": "0x1" if info.success else "0x0",
    }


def format_logs(entries: Sequence[LogEntry]) -> list[dict[str, Any]]:
    return [format_log(e) for e in entries]
