"""Read-only queries over committed chain data: blocks, transactions, receipts, logs, state, calls.

These back the JSON-RPC server and the tx pool. They read the base LevelDB directly, so a block that
is executed but not committed is invisible here. Same thread rule as ExecutionChain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth._utils.address import generate_contract_address
from eth.abc import BlockAPI, BlockHeaderAPI, ReceiptAPI, SignedTransactionAPI, StateAPI
from eth.chains.base import Chain
from eth.exceptions import BlockNotFound, HeaderNotFound, TransactionNotFound
from eth.vm.spoof import SpoofTransaction
from eth_abi import decode as abi_decode
from eth_bloom import BloomFilter
from eth_utils import ValidationError, keccak

from consensus.errors import ConsensusError
from consensus.genesis import Genesis
from consensus.genesis_block import STAKING_ADDRESS

MAX_LOG_RANGE = 10_000  # blocks per eth_getLogs query
MAX_LOGS = 10_000


class ReadError(ConsensusError):
    """A read refers to something that does not exist or asks for too much."""


class CallFailed(ConsensusError):
    """eth_call / eth_estimateGas: execution reverted or failed; `output` holds the revert data."""

    def __init__(self, message: str, output: bytes = b"") -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True)
class TxLocation:
    tx: SignedTransactionAPI
    block: BlockAPI
    index: int


@dataclass(frozen=True)
class LogEntry:
    address: bytes
    topics: tuple[bytes, ...]
    data: bytes
    block_number: int
    block_hash: bytes
    tx_hash: bytes
    tx_index: int
    log_index: int  # within the block


@dataclass(frozen=True)
class ReceiptInfo:
    location: TxLocation
    receipt: ReceiptAPI
    gas_used: int
    cumulative_gas_used: int
    effective_gas_price: int
    contract_address: bytes | None
    logs: tuple[LogEntry, ...]

    @property
    def success(self) -> bool:
        return self.receipt.state_root == b"\x01"


@dataclass(frozen=True)
class CallRequest:
    """The fields of an eth_call / eth_estimateGas request, already parsed."""

    sender: bytes = b"\x00" * 20
    to: bytes | None = None
    data: bytes = b""
    value: int = 0
    gas: int | None = None


def effective_gas_price(tx: SignedTransactionAPI, base_fee: int) -> int:
    if getattr(tx, "type_id", None) == 2:
        return min(tx.max_fee_per_gas, base_fee + tx.max_priority_fee_per_gas)
    return int(tx.gas_price)


class ChainReader:
    """Queries against the committed canonical chain."""

    def __init__(self, chain: Chain, genesis: Genesis) -> None:
        self._chain = chain
        self._genesis = genesis
        # Validator sets by the hash of the block whose state holds them. A block's state never changes,
        # and one set serves a whole epoch: the driver asks once or twice per height (~12 ms in py-evm).
        self._validator_sets: dict[bytes, tuple[tuple[bytes, int], ...]] = {}
        self._costless: tuple[bytes, StateAPI, Any] | None = None

    # -------------------------------------------------------- blocks

    def head(self) -> BlockHeaderAPI:
        return self._chain.get_canonical_head()

    def header_by_number(self, number: int) -> BlockHeaderAPI:
        try:
            return self._chain.get_canonical_block_header_by_number(number)
        except (HeaderNotFound, BlockNotFound) as exc:
            raise ReadError(f"no committed block #{number}") from exc

    def child_header(self, header: BlockHeaderAPI) -> BlockHeaderAPI:
        """The template header py-evm derives for the child of `header` (base fee, number, ...)."""
        return self._chain.create_header_from_parent(header)

    def block_by_number(self, number: int) -> BlockAPI:
        if number < 0 or number > self.head().block_number:
            raise ReadError(f"no committed block #{number}")
        return self._chain.get_canonical_block_by_number(number)

    def block_by_hash(self, block_hash: bytes) -> BlockAPI:
        try:
            block = self._chain.get_block_by_hash(block_hash)
        except (HeaderNotFound, BlockNotFound) as exc:
            raise ReadError(f"no block 0x{block_hash.hex()}") from exc
        if self._chain.get_canonical_block_hash(block.number) != block.hash:
            raise ReadError(f"block 0x{block_hash.hex()} is not canonical")
        return block

    # -------------------------------------------------------- transactions and receipts

    def transaction(self, tx_hash: bytes) -> TxLocation:
        try:
            number, index = self._chain.chaindb.get_transaction_index(tx_hash)
        except (TransactionNotFound, KeyError) as exc:
            raise ReadError(f"no committed transaction 0x{tx_hash.hex()}") from exc
        block = self.block_by_number(number)
        return TxLocation(block.transactions[index], block, index)

    def receipts_of(self, block: BlockAPI) -> tuple[ReceiptAPI, ...]:
        return tuple(block.get_receipts(self._chain.chaindb))

    def receipt(self, tx_hash: bytes) -> ReceiptInfo:
        location = self.transaction(tx_hash)
        receipts = self.receipts_of(location.block)
        return _receipt_info(location, receipts)

    # -------------------------------------------------------- logs

    def logs(self, from_block: int, to_block: int, addresses: Sequence[bytes] = (),
             topics: Sequence[Sequence[bytes] | None] = ()) -> list[LogEntry]:
        """Logs in [from_block, to_block] whose address is in `addresses` (any if empty) and whose
        topic i is one of topics[i] (any if None), as eth_getLogs defines them."""
        head = int(self.head().block_number)
        to_block = min(to_block, head)
        if from_block > to_block:
            return []
        if to_block - from_block + 1 > MAX_LOG_RANGE:
            raise ReadError(f"block range {from_block}..{to_block} exceeds {MAX_LOG_RANGE} blocks")
        found: list[LogEntry] = []
        for number in range(from_block, to_block + 1):
            header = self.header_by_number(number)
            if not _bloom_may_match(header.bloom, addresses, topics):
                continue
            found.extend(_matching_logs(self, self.block_by_number(number), addresses, topics))
            if len(found) > MAX_LOGS:
                raise ReadError(f"query matches more than {MAX_LOGS} logs; narrow the range")
        return found

    # -------------------------------------------------------- state

    def state_at(self, header: BlockHeaderAPI) -> StateAPI:
        """The state after block `header`."""
        return self._chain.get_vm(header).state

    def call(self, request: CallRequest, header: BlockHeaderAPI) -> bytes:
        tx = self._spoof(request, header)
        state = self._call_state(header)
        snapshot = state.snapshot()
        try:
            computation = state.costless_execute_transaction(tx)
        except ValidationError as exc:  # e.g. the value exceeds the sender's balance
            raise CallFailed(f"invalid call: {exc}") from exc
        finally:
            state.revert(snapshot)  # every call starts from the state after `header`
        if computation.is_error:
            raise CallFailed(_revert_message(computation), bytes(computation.output))
        return bytes(computation.output)

    def _call_state(self, header: BlockHeaderAPI) -> StateAPI:
        """py-evm's costless state on top of `header` (the one eth_call runs in), kept for the next
        call at the same block: each call reverts what it did, and the reads it made stay cached, so
        the several view calls made per block share trie lookups (~60% of a call's cost)."""
        key = bytes(header.hash)
        if self._costless is None or self._costless[0] != key:
            context = self._chain.get_vm(header).in_costless_state()
            self._costless = (key, context.__enter__(), context)  # left open: its exit only reverts
        return self._costless[1]

    def estimate_gas(self, request: CallRequest, header: BlockHeaderAPI) -> int:
        tx = self._spoof(request, header)
        try:
            return int(self._chain.estimate_gas(tx, header))
        except Exception as exc:  # py-evm raises VMError subclasses of many kinds here
            raise CallFailed(f"execution fails at the block gas limit: {exc}") from exc

    def _spoof(self, request: CallRequest, header: BlockHeaderAPI) -> SignedTransactionAPI:
        vm = self._chain.get_vm(header)
        nonce = vm.state.get_nonce(request.sender)
        gas = request.gas if request.gas is not None else header.gas_limit
        unsigned = vm.create_unsigned_transaction(
            nonce=nonce, gas_price=0, gas=gas, to=request.to if request.to is not None else b"",
            value=request.value, data=request.data,
        )
        return SpoofTransaction(unsigned, from_=request.sender)  # type: ignore[return-value]

    # -------------------------------------------------------- validators

    def validator_set_at(self, header: BlockHeaderAPI) -> tuple[tuple[bytes, int], ...]:
        """(address, stake) pairs from Staking.getValidators() in the state after `header`;
        the genesis validators while no Staking contract is deployed."""
        key = bytes(header.hash)
        if key not in self._validator_sets:
            if len(self._validator_sets) >= 16:
                del self._validator_sets[next(iter(self._validator_sets))]
            self._validator_sets[key] = self._read_validator_set(header)
        return self._validator_sets[key]

    def _read_validator_set(self, header: BlockHeaderAPI) -> tuple[tuple[bytes, int], ...]:
        state = self.state_at(header)
        if not state.get_code(STAKING_ADDRESS):
            return tuple((v.address, v.stake) for v in self._genesis.validators)
        output = self.call(CallRequest(to=STAKING_ADDRESS, data=keccak(b"getValidators()")[:4]), header)
        addresses, stakes = abi_decode(["address[]", "uint256[]"], output)
        return tuple((bytes.fromhex(a[2:]), int(s)) for a, s in zip(addresses, stakes, strict=True))

    def validator_set_for_height(self, height: int) -> tuple[tuple[bytes, int], ...]:
        """Validators for block `height` >= 1. Epoch e = height // epoch_length (Staking.epochOf); its set
        is Staking's set in the state after the last block of epoch e-1, block e * epoch_length - 1
        (the genesis state for epoch 0). Known as soon as that block is committed."""
        if height < 1:
            raise ReadError(f"height must be >= 1, got {height}")
        return self.validator_set_at(self.header_by_number(max(0, self.epoch_start(height) - 1)))

    def epoch_start(self, height: int) -> int:
        """First height of the epoch holding `height` (>= 1): epoch e spans [e*L, e*L + L - 1], as in
        Staking.epochOf, except that epoch 0 starts at height 1."""
        epoch_length = self._genesis.consensus.epoch_length
        return max(1, (height // epoch_length) * epoch_length)


# ---------------------------------------------------------------- helpers


def _receipt_info(location: TxLocation, receipts: tuple[ReceiptAPI, ...]) -> ReceiptInfo:
    i, block, tx = location.index, location.block, location.tx
    previous = receipts[i - 1].gas_used if i > 0 else 0
    log_offset = sum(len(r.logs) for r in receipts[:i])
    contract = generate_contract_address(tx.sender, tx.nonce) if not tx.to else None
    logs = tuple(_log_entries(block, i, receipts[i], log_offset))
    return ReceiptInfo(location, receipts[i], receipts[i].gas_used - previous, receipts[i].gas_used,
                       effective_gas_price(tx, block.header.base_fee_per_gas), contract, logs)


def _log_entries(block: BlockAPI, tx_index: int, receipt: ReceiptAPI, log_offset: int) -> list[LogEntry]:
    tx_hash = bytes(block.transactions[tx_index].hash)
    return [
        LogEntry(bytes(log.address), tuple(t.to_bytes(32, "big") for t in log.topics), bytes(log.data),
                 int(block.number), bytes(block.hash), tx_hash, tx_index, log_offset + j)
        for j, log in enumerate(receipt.logs)
    ]


def _topics_match(log_topics: tuple[bytes, ...], wanted: Sequence[Sequence[bytes] | None]) -> bool:
    if len(wanted) > len(log_topics):
        return False
    return all(options is None or log_topics[i] in options for i, options in enumerate(wanted))


def _matching_logs(reader: ChainReader, block: BlockAPI, addresses: Sequence[bytes],
                   topics: Sequence[Sequence[bytes] | None]) -> list[LogEntry]:
    receipts = reader.receipts_of(block)
    out: list[LogEntry] = []
    offset = 0
    for i, receipt in enumerate(receipts):
        for entry in _log_entries(block, i, receipt, offset):
            if (not addresses or entry.address in addresses) and _topics_match(entry.topics, topics):
                out.append(entry)
        offset += len(receipt.logs)
    return out


def _bloom_may_match(bloom: int, addresses: Sequence[bytes], topics: Sequence[Sequence[bytes] | None]) -> bool:
    bf = BloomFilter(bloom)
    if addresses and not any(a in bf for a in addresses):
        return False
    return all(options is None or any(t in bf for t in options) for options in topics)


def _revert_message(computation: Any) -> str:
    output = bytes(computation.output)
    if output[:4] == bytes.fromhex("08c379a0"):
        try:
            (reason,) = abi_decode(["string"], output[4:])
            return f"execution reverted: {reason}"
        except Exception:  # malformed revert data: fall through to the generic message
            pass
    if computation.is_error and "Revert" in type(computation.error).__name__:
        return "execution reverted"
    return f"execution failed: {computation.error!r}"
