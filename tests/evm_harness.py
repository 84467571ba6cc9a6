"""In-memory py-evm Prague chain for contract tests: signed transactions, eth_call and ABI helpers.

Each `transact` mines exactly one block holding one transaction, so `head_number + 1` is the
block.number the next transaction sees, and `mine_until` advances the chain with empty blocks.
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
TX_GAS = 8_000_000
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
        self.functions = {e["name"]: e for e in abi if e["type"] == "function"}
        self.events = {}
        for e in abi:
            if e["type"] == "event":
                signature = f"{e['name']}({','.join(abi_type(i) for i in e['inputs'])})"
                self.events[keccak(text=signature)] = e

    def encode(self, fn: str, *args: Any) -> bytes:
        entry = self.functions[fn]
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

    def __init__(self, chain_id: int, alloc: dict[bytes, dict[str, Any]], contracts: list[Contract]) -> None:
        chain_class = MiningChain.configure(
            __name__="HarnessChain", vm_configuration=((0, PragueVM),), chain_id=chain_id
        )
        genesis_params = {
            "difficulty": 0,
            "nonce": b"\x00" * 8,
            "mix_hash": b"\x00" * 32,
            "gas_limit": GAS_LIMIT,
            "timestamp": 1_700_000_000,
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

    def storage(self, address: bytes, slot: int) -> int:
        return self.chain.get_vm().state.get_storage(address, slot)

    def _prepare_header(self) -> None:
        parent = self.chain.get_canonical_head()
        self.chain.header = self.chain.header.copy(timestamp=parent.timestamp + 1, gas_limit=GAS_LIMIT)

    def mine_until(self, block_number: int) -> None:
        """Mine empty blocks until the head is `block_number`."""
        while self.head_number < block_number:
            self._prepare_header()
            self.chain.mine_all([])

    def _signed_tx(self, key: keys.PrivateKey, to: bytes, data: bytes, value: int) -> Any:
        vm = self.chain.get_vm()
        sender = key.public_key.to_canonical_address()
        unsigned = vm.create_unsigned_transaction(
            nonce=vm.state.get_nonce(sender), gas_price=GAS_PRICE, gas=TX_GAS, to=to, value=value, data=data
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

    def transact(self, key: keys.PrivateKey, contract: Contract, fn: str, *args: Any, value: int = 0) -> TxResult:
        data = contract.encode(fn, *args)
        return self.send_raw(key, contract.address, data, value, contract, fn)

    def send_raw(
        self, key: keys.PrivateKey, to: bytes, data: bytes, value: int,
        contract: Contract | None = None, fn: str | None = None,
    ) -> TxResult:
        self._prepare_header()
        tx = self._signed_tx(key, to, data, value)
        number = self.chain.header.block_number
        _, receipts, computations = self.chain.mine_all([tx])
        computation, receipt = computations[0], receipts[0]
        if computation.is_error:
            return TxResult(number, False, revert_reason(computation.output), None, [], receipt.gas_used)
        output = contract.decode_output(fn, computation.output) if contract and fn else computation.output
        return TxResult(number, True, None, output, self._events(receipt), receipt.gas_used)

    def call(self, contract: Contract, fn: str, *args: Any, sender: bytes = b"\x00" * 20) -> Any:
        """eth_call against the head state (block.number = head + 1); raises CallReverted."""
        vm = self.chain.get_vm()
        unsigned = vm.create_unsigned_transaction(
            nonce=vm.state.get_nonce(sender), gas_price=0, gas=TX_GAS, to=contract.address, value=0,
            data=contract.encode(fn, *args),
        )
        try:
            output = self.chain.get_transaction_result(
                SpoofTransaction(unsigned, from_=sender), self.chain.get_canonical_head()
            )
        except Revert as exc:
            raise CallReverted(revert_reason(exc.args[0])) from exc
        return contract.decode_output(fn, output)
