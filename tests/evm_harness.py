"""In-memory py-evm Prague chain for contract tests: signed transactions, eth_call and ABI helpers.

Each `transact` mines exactly one block holding one transaction, so `head_number + 1` is the
block.number the next transaction sees, and `mine_until` advances the chain with empty blocks.
A block's timestamp is its parent's + 1 unless the caller picks it (`timestamp=` on `transact`,
`send_raw` and `mine`); `call` runs as if in the next block, at `head_timestamp + 1` unless told.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth.chains.base import MiningChain
from eth.db.atomic import AtomicDB
from eth.exceptions import Revert
from eth.vm.forks.prague import PragueVM
from eth.vm.spoof import SpoofTransaction
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_keys import keys
from eth_utils import keccak

GAS_LIMIT = 30_000_000
TX_GAS = 15_000_000
GENESIS_TIME = 1_700_000_000
GAS_PRICE = 10**9
_ERROR_SELECTOR = bytes.fromhex("08c379a0")


class CallReverted(Exception):
    """An eth_call reverted; `reason` is the decoded Error(string) or the raw hex."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def revert_reason(output: bytes) -> str:
    if output[:4] == _ERROR_SELECTOR:
        return abi_decode(["string"], output[4:])[0]
    return f"0x{output.hex()}"


def abi_type(param: dict[str, Any]) -> str:
    """eth-abi type string of one ABI parameter, expanding tuples (structs)."""
    kind = param["type"]
    if kind.startswith("tuple"):
        inner = ",".join(abi_type(c) for c in param["components"])
        return f"({inner}){kind[len('tuple'):]}"
    return kind


@dataclass(frozen=True)
class Event:
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class TxResult:
    block_number: int
    success: bool
    reason: str | None
    output: Any
    events: list[Event]
    gas_used: int

    def event_names(self) -> list[str]:
        return [e.name for e in self.events]

    def events_named(self, name: str) -> list[dict[str, Any]]:
        return [e.args for e in self.events if e.name == name]


class Contract:
    """ABI-driven encoding/decoding for one deployed contract."""

    def __init__(self, address: bytes, abi: list[dict[str, Any]]) -> None:
        self.address = address
        self.overloads: dict[str, list[dict[str, Any]]] = {}  # a Vyper default argument makes two entries
        for e in abi:
            if e["type"] == "function":
                self.overloads.setdefault(e["name"], []).append(e)
        self.functions = {name: entries[0] for name, entries in self.overloads.items()}
        self.events = {}
        for e in abi:
            if e["type"] == "event":
                signature = f"{e['name']}({','.join(abi_type(i) for i in e['inputs'])})"
                self.events[keccak(text=signature)] = e

    def encode(self, fn: str, *args: Any) -> bytes:
        """Calldata for `fn`; among overloads, the one taking len(args) arguments."""
        entry = next((e for e in self.overloads[fn] if len(e["inputs"]) == len(args)), self.functions[fn])
        types = [abi_type(i) for i in entry["inputs"]]
        selector = keccak(text=f"{fn}({','.join(types)})")[:4]
        return selector + abi_encode(types, list(args))

    def decode_output(self, fn: str, data: bytes) -> Any:
        outputs = self.functions[fn]["outputs"]
        if not outputs:
            return None
        values = abi_decode([abi_type(o) for o in outputs], data)
        return values[0] if len(values) == 1 else values

    def decode_log(self, topics: list[int], data: bytes) -> Event | None:
        if not topics:
            return None
        entry = self.events.get(topics[0].to_bytes(32, "big"))
        if entry is None:
            return None
        indexed = [i for i in entry["inputs"] if i["indexed"]]
        plain = [i for i in entry["inputs"] if not i["indexed"]]
        args: dict[str, Any] = {}
        for param, topic in zip(indexed, topics[1:], strict=True):
            args[param["name"]] = abi_decode([abi_type(param)], topic.to_bytes(32, "big"))[0]
        for param, value in zip(plain, abi_decode([abi_type(p) for p in plain], data), strict=True):
            args[param["name"]] = value
        return Event(entry["name"], args)


class EvmHarness:
    """A Prague MiningChain built from a genesis alloc; one block per transaction."""

    def __init__(self, chain_id: int, alloc: dict[bytes, dict[str, Any]], contracts: list[Contract],
                 genesis_time: int = GENESIS_TIME) -> None:
        chain_class = MiningChain.configure(
            __name__="HarnessChain", vm_configuration=((0, PragueVM),), chain_id=chain_id
        )
        genesis_params = {
            "difficulty": 0,
            "nonce": b"\x00" * 8,
            "mix_hash": b"\x00" * 32,
            "gas_limit": GAS_LIMIT,
            "timestamp": genesis_time,
            "base_fee_per_gas": 7,
        }
        self.chain_id = chain_id
        self.chain = chain_class.from_genesis(AtomicDB(), genesis_params, alloc)
        self.contracts = {c.address: c for c in contracts}

    @property
    def head_number(self) -> int:
        return self.chain.get_canonical_head().block_number

    def balance(self, address: bytes) -> int:
        return self.chain.get_vm().state.get_balance(address)

    @property
    def head_timestamp(self) -> int:
        return self.chain.get_canonical_head().timestamp

    def storage(self, address: bytes, slot: int) -> int:
        return self.chain.get_vm().state.get_storage(address, slot)

    def _prepare_header(self, timestamp: int | None = None) -> None:
        parent = self.chain.get_canonical_head()
        if timestamp is None:
            timestamp = parent.timestamp + 1
        if timestamp <= parent.timestamp:
            raise ValueError(f"block timestamp {timestamp} must exceed the head's {parent.timestamp}")
        self.chain.header = self.chain.header.copy(timestamp=timestamp, gas_limit=GAS_LIMIT)

    def mine(self, timestamp: int | None = None) -> int:
        """Mine one empty block (at `timestamp`, default head + 1 s); returns its number."""
        self._prepare_header(timestamp)
        self.chain.mine_all([])
        return self.head_number

    def mine_until(self, block_number: int) -> None:
        """Mine empty blocks until the head is `block_number`."""
        while self.head_number < block_number:
            self.mine()

    def _signed_tx(self, key: keys.PrivateKey, to: bytes, data: bytes, value: int, gas: int = TX_GAS) -> Any:
        vm = self.chain.get_vm()
        sender = key.public_key.to_canonical_address()
        unsigned = vm.create_unsigned_transaction(
            nonce=vm.state.get_nonce(sender), gas_price=GAS_PRICE, gas=gas, to=to, value=value, data=data
        )
        signed = unsigned.as_signed_transaction(key, chain_id=self.chain_id)
        return vm.get_transaction_builder().decode(signed.encode())

    def _events(self, receipt: Any) -> list[Event]:
        events = []
        for log in receipt.logs:
            contract = self.contracts.get(log.address)
            event = contract.decode_log(list(log.topics), log.data) if contract else None
            if event is not None:
                events.append(event)
        return events

    def transact(self, key: keys.PrivateKey, contract: Contract, fn: str, *args: Any, value: int = 0,
                 timestamp: int | None = None, gas: int = TX_GAS) -> TxResult:
        data = contract.encode(fn, *args)
        return self.send_raw(key, contract.address, data, value, contract, fn, timestamp=timestamp, gas=gas)

    def send_raw(
        self, key: keys.PrivateKey, to: bytes, data: bytes, value: int,
        contract: Contract | None = None, fn: str | None = None, *, timestamp: int | None = None,
        gas: int = TX_GAS,
    ) -> TxResult:
        self._prepare_header(timestamp)
        tx = self._signed_tx(key, to, data, value, gas)
        number = self.chain.header.block_number
        _, receipts, computations = self.chain.mine_all([tx])
        computation, receipt = computations[0], receipts[0]
        if computation.is_error:
            return TxResult(number, False, revert_reason(computation.output), None, [], receipt.gas_used)
        output = contract.decode_output(fn, computation.output) if contract and fn else computation.output
        return TxResult(number, True, None, output, self._events(receipt), receipt.gas_used)

    def call(self, contract: Contract, fn: str, *args: Any, sender: bytes = b"\x00" * 20,
             timestamp: int | None = None) -> Any:
        """eth_call against the head state, as in the next block (block.number = head + 1, block.timestamp =
        `timestamp`, default head + 1 s: not the wall clock py-evm would use); raises CallReverted."""
        head = self.chain.get_canonical_head()
        header = self.chain.header.copy(
            timestamp=head.timestamp + 1 if timestamp is None else timestamp, gas_limit=GAS_LIMIT,
            base_fee_per_gas=0,
        )
        vm = self.chain.get_vm(header)
        state = vm.state
        unsigned = vm.create_unsigned_transaction(
            nonce=state.get_nonce(sender), gas_price=0, gas=TX_GAS, to=contract.address, value=0,
            data=contract.encode(fn, *args),
        )
        snapshot = state.snapshot()
        try:
            computation = state.costless_execute_transaction(SpoofTransaction(unsigned, from_=sender))
        finally:
            state.revert(snapshot)
        if computation.is_error:
            if isinstance(computation.error, Revert):
                raise CallReverted(revert_reason(computation.output))
            raise CallReverted(f"{type(computation.error).__name__}: {computation.error}")
        return contract.decode_output(fn, computation.output)
