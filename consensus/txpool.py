"""The transaction pool: admission checks with typed rejections, per-sender nonce order, fee priority.

Entry checks (each failure raises a TxRejected subclass whose `reason` is a short stable code):
size, decoding, type, target (a call, not to a precompile: see consensus.chain), signature, chain id, gas (intrinsic <= gas <= block gas limit), fee cap vs the
next base fee, nonce (no gaps: the next expected nonce, or a fee-bumped replacement of a pending one),
balance (covers every pending tx of the sender at its maximum cost), per-sender and total bounds.

Selection for a block walks senders' queues in nonce order and, across senders, takes the highest
effective tip first (ties: arrival order). Only transactions valid in sequence against the committed
state are handed to the proposer. The pool is plain data plus a `StateView`; it does no I/O.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from eth.abc import SignedTransactionAPI

from consensus.chain import ALLOWED_TX_TYPES, signature_problem, target_problem
from consensus.errors import ConsensusError

MAX_TX_BYTES = 128 * 1024
MAX_POOL_TXS = 4096
MAX_PER_SENDER = 64
REPLACEMENT_BUMP_PERCENT = 10


class StateView(Protocol):
    """Committed state the pool checks against."""

    def get_nonce(self, address: bytes) -> int: ...

    def get_balance(self, address: bytes) -> int: ...


class TxRejected(ConsensusError):
    """A transaction was refused by the pool; `reason` is a stable machine-readable code."""

    reason = "rejected"

    def __init__(self, message: str) -> None:
        super().__init__(f"{self.reason}: {message}")


class ForbiddenTarget(TxRejected):
    reason = "forbidden-target"


class OversizedTransaction(TxRejected):
    reason = "oversized"


class MalformedTransaction(TxRejected):
    reason = "malformed"


class UnsupportedTxType(TxRejected):
    reason = "unsupported-type"


class InvalidTxSignature(TxRejected):
    reason = "bad-signature"


class WrongChainId(TxRejected):
    reason = "wrong-chain-id"


class IntrinsicGasTooLow(TxRejected):
    reason = "intrinsic-gas"


class GasLimitExceeded(TxRejected):
    reason = "gas-limit"


class FeeTooLow(TxRejected):
    reason = "fee-too-low"


class NonceTooLow(TxRejected):
    reason = "nonce-too-low"


class NonceGap(TxRejected):
    reason = "nonce-gap"


class InsufficientFunds(TxRejected):
    reason = "insufficient-funds"


class AlreadyKnown(TxRejected):
    reason = "already-known"


class ReplacementUnderpriced(TxRejected):
    reason = "replacement-underpriced"


class SenderLimit(TxRejected):
    reason = "sender-limit"


class PoolFull(TxRejected):
    reason = "pool-full"


@dataclass(frozen=True)
class PoolLimits:
    max_tx_bytes: int = MAX_TX_BYTES
    max_txs: int = MAX_POOL_TXS
    max_per_sender: int = MAX_PER_SENDER
    block_gas_limit: int = 30_000_000


@dataclass(order=True)
class _Entry:
    seq: int
    tx: SignedTransactionAPI = field(compare=False)
    sender: bytes = field(compare=False)
    size: int = field(default=0, compare=False)  # encoded bytes


def max_cost(tx: SignedTransactionAPI) -> int:
    """The most a transaction can take from its sender's balance."""
    fee_cap = tx.max_fee_per_gas if getattr(tx, "type_id", None) == 2 else tx.gas_price
    return int(tx.gas * fee_cap + tx.value)


def fee_cap(tx: SignedTransactionAPI) -> int:
    return int(tx.max_fee_per_gas if getattr(tx, "type_id", None) == 2 else tx.gas_price)


def effective_tip(tx: SignedTransactionAPI, base_fee: int) -> int:
    if getattr(tx, "type_id", None) == 2:
        return int(min(tx.max_priority_fee_per_gas, tx.max_fee_per_gas - base_fee))
    return int(tx.gas_price - base_fee)


class TxPool:
    """Bounded pool of valid pending transactions, per sender in nonce order."""

    def __init__(self, chain_id: int, decode: Callable[[bytes], SignedTransactionAPI],
                 limits: PoolLimits = PoolLimits()) -> None:
        self.chain_id = chain_id
        self.limits = limits
        self._decode = decode
        self._by_sender: dict[bytes, dict[int, _Entry]] = {}  # sender -> nonce -> entry
        self._by_hash: dict[bytes, _Entry] = {}
        self._seq = 0

    # -------------------------------------------------------- queries

    def __len__(self) -> int:
        return len(self._by_hash)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._by_hash

    def get(self, tx_hash: bytes) -> SignedTransactionAPI | None:
        entry = self._by_hash.get(tx_hash)
        return entry.tx if entry else None

    def next_nonce(self, sender: bytes, state: StateView) -> int:
        """The nonce the sender's next transaction must carry (state nonce + contiguous pending)."""
        nonce = state.get_nonce(sender)
        pending = self._by_sender.get(sender, {})
        while nonce in pending:
            nonce += 1
        return nonce

    def statistics(self) -> dict[str, int]:
        return {"txs": len(self._by_hash), "senders": len(self._by_sender)}

    # -------------------------------------------------------- admission

    def add_raw(self, raw: bytes, state: StateView, base_fee: int) -> SignedTransactionAPI:
        """Decode and admit a raw signed transaction; raises a TxRejected subclass."""
        if len(raw) > self.limits.max_tx_bytes:
            raise OversizedTransaction(f"{len(raw)} bytes, limit {self.limits.max_tx_bytes}")
        try:
            tx = self._decode(raw)
        except Exception as exc:  # rlp, eth-utils and py-evm raise many unrelated types for junk input
            raise MalformedTransaction(f"cannot decode transaction: {exc}") from exc
        return self.add(tx, state, base_fee)

    def add(self, tx: SignedTransactionAPI, state: StateView, base_fee: int) -> SignedTransactionAPI:
        """Admit a decoded transaction after every entry check; returns it."""
        sender, replaced = self._checked(tx, state, base_fee)
        self._insert(tx, sender, replaced)
        return tx

    def check(self, tx: SignedTransactionAPI, state: StateView, base_fee: int) -> None:
        """Every entry check of `add`, without admitting: would the pool take `tx` now? (TxRejected if not.)
        For work worth doing only for an admissible transaction, such as fetching the data it refers to."""
        self._checked(tx, state, base_fee)

    def _checked(self, tx: SignedTransactionAPI, state: StateView, base_fee: int) -> tuple[bytes, _Entry | None]:
        self._check_static(tx, base_fee)
        sender = self._recover_sender(tx)
        if bytes(tx.hash) in self._by_hash:
            raise AlreadyKnown(f"transaction 0x{tx.hash.hex()} is already pending")
        replaced = self._check_nonce(tx, sender, state)
        self._check_balance(tx, sender, state, replaced)
        self._check_capacity(sender, replaced)
        return sender, replaced

    def _check_static(self, tx: SignedTransactionAPI, base_fee: int) -> None:
        tx_type = getattr(tx, "type_id", None)
        if tx_type not in ALLOWED_TX_TYPES:
            raise UnsupportedTxType(f"type {tx_type} (accepted: legacy, 1, 2)")
        target = target_problem(tx)
        if target is not None:
            raise ForbiddenTarget(f"not accepted: {target}")
        size = len(tx.encode())
        if size > self.limits.max_tx_bytes:
            raise OversizedTransaction(f"{size} bytes, limit {self.limits.max_tx_bytes}")
        if tx.chain_id != self.chain_id:
            raise WrongChainId(f"chain id {tx.chain_id}, this chain is {self.chain_id}")
        if tx.gas > self.limits.block_gas_limit:
            raise GasLimitExceeded(f"gas {tx.gas} exceeds the block gas limit {self.limits.block_gas_limit}")
        if tx.gas < tx.intrinsic_gas:
            raise IntrinsicGasTooLow(f"gas {tx.gas} is below the intrinsic gas {tx.intrinsic_gas}")
        if getattr(tx, "type_id", None) == 2 and tx.max_priority_fee_per_gas > tx.max_fee_per_gas:
            raise FeeTooLow("max priority fee exceeds max fee")
        if fee_cap(tx) < base_fee:
            raise FeeTooLow(f"fee cap {fee_cap(tx)} is below the base fee {base_fee}")

    @staticmethod
    def _recover_sender(tx: SignedTransactionAPI) -> bytes:
        problem = signature_problem(tx)
        if problem is not None:
            raise InvalidTxSignature(problem)
        try:
            return bytes(tx.sender)  # recovery fails for an invalid signature (one ecrecover, not two)
        except Exception as exc:  # eth-keys raises BadSignature / ValidationError / ValueError
            raise InvalidTxSignature(f"signature does not recover: {exc}") from exc

    def _check_nonce(self, tx: SignedTransactionAPI, sender: bytes, state: StateView) -> _Entry | None:
        state_nonce = state.get_nonce(sender)
        if tx.nonce < state_nonce:
            raise NonceTooLow(f"nonce {tx.nonce}, account 0x{sender.hex()} is at {state_nonce}")
        existing = self._by_sender.get(sender, {}).get(tx.nonce)
        if existing is not None:
            needed = fee_cap(existing.tx) * (100 + REPLACEMENT_BUMP_PERCENT) // 100
            if fee_cap(tx) < needed:
                raise ReplacementUnderpriced(f"nonce {tx.nonce} is pending; a replacement needs fee cap >= {needed}")
            return existing
        expected = self.next_nonce(sender, state)
        if tx.nonce != expected:
            raise NonceGap(f"nonce {tx.nonce}, expected {expected} for 0x{sender.hex()}")
        return None

    def _check_balance(self, tx: SignedTransactionAPI, sender: bytes, state: StateView,
                       replaced: _Entry | None) -> None:
        pending = self._by_sender.get(sender, {}).values()
        committed = sum(max_cost(e.tx) for e in pending if e is not replaced)
        balance = state.get_balance(sender)
        if committed + max_cost(tx) > balance:
            raise InsufficientFunds(f"balance {balance} < {committed + max_cost(tx)} "
                                    f"(this tx {max_cost(tx)} + pending {committed})")

    def _check_capacity(self, sender: bytes, replaced: _Entry | None) -> None:
        if replaced is not None:
            return
        if len(self._by_sender.get(sender, {})) >= self.limits.max_per_sender:
            raise SenderLimit(f"0x{sender.hex()} already has {self.limits.max_per_sender} pending")
        if len(self._by_hash) >= self.limits.max_txs:
            raise PoolFull(f"pool holds {self.limits.max_txs} transactions")

    def _insert(self, tx: SignedTransactionAPI, sender: bytes, replaced: _Entry | None) -> None:
        if replaced is not None:
            del self._by_hash[bytes(replaced.tx.hash)]
        self._seq += 1
        entry = _Entry(self._seq, tx, sender, len(tx.encode()))
        self._by_sender.setdefault(sender, {})[int(tx.nonce)] = entry
        self._by_hash[bytes(tx.hash)] = entry

    # -------------------------------------------------------- selection and removal

    def select(self, state: StateView, base_fee: int, gas_limit: int, max_txs: int | None = None,
               priority: Callable[[SignedTransactionAPI, bytes], int] | None = None,
               max_bytes: int | None = None) -> list[SignedTransactionAPI]:
        """Transactions for the next block: valid in sequence, nonce order per sender, best tip first.

        `priority(tx, sender)` (higher first) ranks before the tip: a proposer that builds within a time
        budget puts the transactions its protocol needs ahead of others, so a flood of other calls cannot
        outbid them into a later block. A sender's transactions still go in nonce order. `max_bytes`
        bounds the encoded transactions together (a block must fit in one consensus message)."""
        heap: list[tuple[int, int, int, bytes, int]] = []
        budgets: dict[bytes, int] = {}
        for sender in self._by_sender:
            nonce = state.get_nonce(sender)
            budgets[sender] = state.get_balance(sender)
            self._push(heap, sender, nonce, base_fee, priority)
        chosen: list[SignedTransactionAPI] = []
        gas_left = gas_limit
        bytes_left = max_bytes if max_bytes is not None else -1
        while heap and (max_txs is None or len(chosen) < max_txs):
            _, _, _, sender, nonce = heapq.heappop(heap)
            entry = self._by_sender[sender][nonce]
            tx = entry.tx
            cost = max_cost(tx)
            if tx.gas > gas_left or cost > budgets[sender] or (max_bytes is not None and entry.size > bytes_left):
                continue  # this sender's later nonces cannot go either
            chosen.append(tx)
            gas_left -= tx.gas
            bytes_left -= entry.size
            budgets[sender] -= cost
            self._push(heap, sender, nonce + 1, base_fee, priority)
        return chosen

    def _push(self, heap: list[tuple[int, int, int, bytes, int]], sender: bytes, nonce: int, base_fee: int,
              priority: Callable[[SignedTransactionAPI, bytes], int] | None) -> None:
        entry = self._by_sender[sender].get(nonce)
        if entry is None or fee_cap(entry.tx) < base_fee:
            return
        rank = priority(entry.tx, sender) if priority is not None else 0
        heapq.heappush(heap, (-rank, -effective_tip(entry.tx, base_fee), entry.seq, sender, nonce))

    def remove(self, tx_hashes: Iterable[bytes]) -> None:
        for tx_hash in tx_hashes:
            entry = self._by_hash.pop(bytes(tx_hash), None)
            if entry is not None:
                self._drop_from_sender(entry)

    def prune(self, state: StateView) -> int:
        """After a commit: drop transactions whose nonce is used, and those no longer affordable
        (with every later nonce of that sender, which would now be a gap). Returns how many."""
        dropped = 0
        for sender in list(self._by_sender):
            expected, balance = state.get_nonce(sender), state.get_balance(sender)
            queue = self._by_sender[sender]
            for n in sorted(queue):
                tx = queue[n].tx
                if n == expected and max_cost(tx) <= balance:
                    expected += 1
                    balance -= max_cost(tx)
                    continue
                self.remove([bytes(tx.hash)])
                dropped += 1
        return dropped

    def _drop_from_sender(self, entry: _Entry) -> None:
        queue = self._by_sender.get(entry.sender, {})
        queue.pop(int(entry.tx.nonce), None)
        if not queue:
            self._by_sender.pop(entry.sender, None)
