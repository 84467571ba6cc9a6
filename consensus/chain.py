"""The execution layer: a py-evm Prague chain on LevelDB that builds, validates, executes and commits blocks.

Life of a block at height h (the BFT engine drives it):
  1. the proposer calls `build_block(txs, coinbase=..., now=...)`, or any node calls
     `execute_block(block_rlp, now=...)` on a proposal; both execute the block and keep the result
     PENDING, in memory only (see db.StagedDB). Executing another block at the same height replaces it.
  2. once the block is final, `commit(block_hash, certificate, consensus)` writes the block, its state,
     its receipts, its commit certificate and its consensus bytes in ONE atomic fsynced LevelDB batch.
     A process killed at any point therefore reopens at the last committed block.
  `import_envelope(envelope, certificate)` is 1+2 for sync. Reads (RPC, tx pool) see committed data only.

Timestamp rule (py-evm needs strictly increasing integer seconds, and we may run faster than 1 block/s):
  the proposer stamps  ts = max(parent.ts + 1, floor(now));
  an importer accepts  parent.ts < ts <= max(parent.ts + 1, floor(now) + MAX_FUTURE_DRIFT).
  At more than 1 block/s the chain clock therefore runs ahead of wall time by one second per extra block
  and catches up when blocks slow down. The drift is bounded against the importer's wall clock, not the
  parent: a proposer cannot ratchet the chain clock ahead by MAX_FUTURE_DRIFT per block it proposes, which
  matters because SwarmRounds measures commit windows in block-timestamp seconds.
  `now=None` skips the wall-clock bound (used when syncing final, certified blocks).

Other header rules: gas_limit is pinned to the genesis value; prevrandao (mix_hash) is the parent hash
(deterministic, NOT random); extra_data is b"swarmnode"; parent_beacon_block_root carries an optional
32-byte consensus commitment chosen by the proposer; there are no withdrawals (no beacon chain: py-evm
would credit whatever a proposer listed).

Transaction rule: every transaction is a call (no contract creation) to an address that is not one of
the VM's precompiles. So the only code that runs is the genesis contracts'. A precompile's running time
is not bounded by its gas (a 29M-gas block of MODEXP calls costs every importer ~1.4 s, one of creations
calling it ~2.1 s), nor is arbitrary deployed code's. A block holding such a transaction is invalid; the
pool refuses it (consensus.txpool.ForbiddenTarget). The genesis contracts' own cost per gas is not
bounded by this rule either (README, Known gaps: ~250-300 ns per gas for opcode-heavy calls).

Blocks and transactions from peers are decoded by `decode_block` / `decode_transaction`, which bound
their RLP first (consensus.rlp_guard) and raise only InvalidBlock / InvalidTransaction.

Threading: py-evm is not thread-safe. An ExecutionChain must be used from one thread only; the async
shell calls it via `trio.to_thread.run_sync(fn, limiter=CapacityLimiter(1))` with one shared limiter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plyvel
import rlp
from eth.abc import (
    BlockAPI,
    BlockHeaderAPI,
    BlockImportResult,
    ReceiptAPI,
    SignedTransactionAPI,
    VirtualMachineAPI,
)
from eth.constants import BLANK_ROOT_HASH
from eth.vm.forks.prague.computation import PragueComputation

from consensus.chain_reads import ChainReader
from consensus.db import LevelDB, StagedDB
from consensus.envelope import Envelope
from consensus.errors import ConsensusError
from consensus.genesis import Genesis
from consensus.genesis_block import chain_class, genesis_hash, genesis_params, genesis_state
from consensus.rlp_guard import MalformedRLP, check_block, check_transaction, max_block_items

MAX_FUTURE_DRIFT = 15  # seconds
# what a proposer lets its block's execution cost (CPU seconds; the block stops growing once it is spent,
# or twice it in wall-clock time). py-evm runs opcode-heavy contract code at ~250-300 ns per gas, so a full
# 30M-gas block could take an importer 8-9 s, past the propose timeout; honest blocks of a swarm round
# take well under 0.2 s. An importer also decodes the block, recovers every sender and hashes the state:
# about 1.2-1.3 s for a block built within 1 s.
BLOCK_CPU_BUDGET_S = 1.0
# the encoded transactions a proposer puts in one block: a proposal (block, vote, valid round) must fit in
# one consensus message (consensus.messages.MAX_MESSAGE_BYTES, 900 KiB); the header and the rest take < 2 KB
MAX_BLOCK_TX_BYTES = 900 * 1024 - 64 * 1024
EXTRA_DATA = b"swarmnode"
ZERO32 = b"\x00" * 32
ALLOWED_TX_TYPES = (None, 1, 2)  # legacy (EIP-155), access list, dynamic fee
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
# the addresses a transaction may not call: Prague's precompiles (0x01-0x11 in py-evm), read from the VM
PRECOMPILES = frozenset(bytes(a) for a in PragueComputation._precompiles)

_CERT_PREFIX = b"swarm:cert:"
_CONSENSUS_PREFIX = b"swarm:consensus:"
_GENESIS_KEY = b"swarm:meta:genesis-hash"


class ChainError(ConsensusError):
    """Base class of execution-layer errors."""


class GenesisMismatch(ChainError):
    """The data dir holds a different network than the genesis file describes."""


class InvalidBlock(ChainError):
    """A block fails validation or execution; the message says why."""


class InvalidTransaction(ChainError):
    """Bytes that do not decode to a signed transaction (junk, too deep, too many items)."""


class UnknownBlock(ChainError):
    """No committed block (or pending block) with that number or hash."""


@dataclass(frozen=True)
class ExecutedBlock:
    """A block whose transactions have been executed against its parent's state."""

    block: BlockAPI
    receipts: tuple[ReceiptAPI, ...] | None  # None for an imported block (reading them back is slow)

    @property
    def hash(self) -> bytes:
        return bytes(self.block.hash)

    @property
    def number(self) -> int:
        return int(self.block.number)

    @property
    def header(self) -> BlockHeaderAPI:
        return self.block.header

    def encode(self) -> bytes:
        """The block's RLP, as carried in an Envelope."""
        return rlp.encode(self.block)


@dataclass(frozen=True)
class Tip:
    """The committed head as last published by the chain's owner thread: readable from any thread."""

    height: int
    hash: bytes
    timestamp: int


# ---------------------------------------------------------------- pure rules


def next_timestamp(parent_timestamp: int, now: float) -> int:
    """The timestamp a proposer gives the child of a block stamped `parent_timestamp`."""
    return max(parent_timestamp + 1, int(now))


def check_timestamp(timestamp: int, parent_timestamp: int, now: float | None) -> None:
    if timestamp <= parent_timestamp:
        raise InvalidBlock(f"timestamp {timestamp} does not exceed parent timestamp {parent_timestamp}")
    if now is not None:
        latest = max(parent_timestamp + 1, int(now) + MAX_FUTURE_DRIFT)
        if timestamp > latest:
            raise InvalidBlock(f"timestamp {timestamp} is too far in the future (latest allowed {latest})")


def check_header(header: BlockHeaderAPI, parent: BlockHeaderAPI, gas_limit: int, now: float | None) -> None:
    """Our header rules on top of py-evm's; raises InvalidBlock naming the field."""
    if header.parent_hash != parent.hash:
        raise InvalidBlock(f"block #{header.block_number} has parent 0x{header.parent_hash.hex()}, "
                           f"expected head 0x{parent.hash.hex()}")
    if header.block_number != parent.block_number + 1:
        raise InvalidBlock(f"block number {header.block_number}, expected {parent.block_number + 1}")
    if header.gas_limit != gas_limit:
        raise InvalidBlock(f"gas_limit {header.gas_limit}, the genesis pins {gas_limit}")
    if header.mix_hash != parent.hash:
        raise InvalidBlock("prevrandao (mix_hash) must equal the parent hash")
    if header.withdrawals_root != BLANK_ROOT_HASH:
        # there is no beacon chain: py-evm would credit any withdrawal a proposer lists (minting ether)
        raise InvalidBlock("withdrawals are not allowed (withdrawals_root must be the empty trie's)")
    check_timestamp(header.timestamp, parent.timestamp, now)


def decode_block(block_rlp: bytes, vm_class: type[VirtualMachineAPI], gas_limit: int) -> BlockAPI:
    """Decode an encoded block of `vm_class`; InvalidBlock for anything else. Total: the RLP's depth and
    item count (typed transaction payloads included, bounded by `gas_limit`) are checked before pyrlp's
    recursive decoder sees it."""
    try:
        check_block(block_rlp, max_items=max_block_items(gas_limit))
        return rlp.decode(block_rlp, sedes=vm_class.get_block_class())
    except MemoryError:
        raise  # our machine, not the block (the guard bounds what a block can make us allocate)
    except Exception as exc:  # MalformedRLP, and pyrlp / py-evm / eth-utils raise many unrelated types
        raise InvalidBlock(f"block is not a valid RLP Prague block: {type(exc).__name__}: {exc}") from exc


def decode_transaction(raw: bytes, vm_class: type[VirtualMachineAPI]) -> SignedTransactionAPI:
    """Decode a signed transaction with `vm_class`'s builder; InvalidTransaction for anything else.
    Total, like decode_block: the RLP is bounded before py-evm decodes it."""
    try:
        check_transaction(raw)
        return vm_class.get_transaction_builder().decode(bytes(raw))
    except MemoryError:
        raise
    except MalformedRLP as exc:
        raise InvalidTransaction(str(exc)) from exc
    except Exception as exc:  # rlp, eth-utils and py-evm raise many unrelated types for junk input
        raise InvalidTransaction(f"{type(exc).__name__}: {exc}") from exc


def signature_problem(tx: SignedTransactionAPI) -> str | None:
    """Why a signature is unacceptable (EIP-2: 0 < r < N, 0 < s <= N/2), or None if it is fine."""
    if not 0 < tx.r < SECP256K1_N:
        return f"r out of range: {tx.r}"
    if not 0 < tx.s <= SECP256K1_N // 2:
        return f"s out of range (EIP-2 requires low s): {tx.s}"
    return None


def target_problem(tx: SignedTransactionAPI) -> str | None:
    """Why a transaction's target is not allowed (a contract creation, a precompile), or None."""
    to = bytes(tx.to)
    if not to:
        return "it creates a contract (only calls are allowed)"
    if to in PRECOMPILES:
        return f"it calls precompile 0x{to.hex()} (its running time is not bounded by its gas)"
    return None


def check_transactions(txs: Sequence[SignedTransactionAPI], chain_id: int) -> None:
    for i, tx in enumerate(txs):
        problem = signature_problem(tx)
        if problem is None:
            try:
                tx.sender  # noqa: B018 - recovers the sender; junk signatures raise here
            except Exception as exc:  # eth-keys: BadSignature / ValidationError, which share no base class
                problem = f"sender does not recover ({type(exc).__name__}: {exc})"
        if problem is not None:
            raise InvalidBlock(f"transaction {i} has an invalid signature: {problem}")
        tx_type = getattr(tx, "type_id", None)
        if tx_type not in ALLOWED_TX_TYPES:
            raise InvalidBlock(f"transaction {i} has unsupported type {tx_type}")
        if tx.chain_id != chain_id:
            raise InvalidBlock(f"transaction {i} has chain id {tx.chain_id}, expected {chain_id}")
        target = target_problem(tx)
        if target is not None:
            raise InvalidBlock(f"transaction {i} is not allowed: {target}")


# ---------------------------------------------------------------- the chain


class ExecutionChain:
    """py-evm chain + LevelDB for one node. Single-threaded: see the module docstring."""

    def __init__(self, db: LevelDB, genesis: Genesis, network_id: bytes) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.genesis_hash = network_id
        self._db = db
        self._staged = StagedDB(db)
        self._cls = chain_class(genesis.chain_id)
        self._vm_class = self._cls.get_vm_class_for_block_number(0)  # Prague from genesis on: one VM class
        self._evm = self._cls(self._staged)
        self._pending: ExecutedBlock | None = None
        self._view: tuple[bytes, Any, int] | None = None  # (head hash, state, next base fee)
        self._head: BlockHeaderAPI | None = None  # this object is the only writer: cache until commit
        self.reader = ChainReader(self._cls(db), genesis)
        self.tip = self._make_tip()  # replaced (never mutated) at every commit: safe to read anywhere

    # -------------------------------------------------------- open / close

    @classmethod
    def open(cls, data_dir: Path | str, genesis: Genesis, *, sync_writes: bool = True) -> ExecutionChain:
        """Open the chain in `data_dir` (created from `genesis` if empty), resuming at the last commit."""
        db = LevelDB(Path(data_dir) / "chain", sync_writes=sync_writes)
        try:
            network_id = genesis_hash(genesis)
            stored = db.get(_GENESIS_KEY)
            if stored is None:
                _write_genesis(db, genesis, network_id)
            elif stored != network_id:
                raise GenesisMismatch(f"data dir {data_dir} holds network 0x{stored.hex()}, "
                                      f"the genesis file describes 0x{network_id.hex()}")
        except BaseException:
            db.close()
            raise
        return cls(db, genesis, network_id)

    def cache_statistics(self) -> dict[str, int]:
        """The database's read cache: see consensus.db.LevelDB."""
        return self._db.cache_statistics()

    def close(self) -> None:
        self.discard_pending()
        self._db.close()

    # -------------------------------------------------------- committed state

    @property
    def head(self) -> BlockHeaderAPI:
        """Header of the last committed block."""
        if self._head is None:
            self._head = self.reader.head()
        return self._head

    @property
    def height(self) -> int:
        return int(self.head.block_number)

    @property
    def pending(self) -> ExecutedBlock | None:
        return self._pending

    def next_base_fee(self) -> int:
        """Base fee of the block that will be built on the committed head (EIP-1559)."""
        return self._head_view()[2]

    def decode_transaction(self, raw: bytes) -> SignedTransactionAPI:
        """Decode a signed transaction with the Prague builder (InvalidTransaction on junk).
        Touches no chain state: safe from any thread (the chain is Prague from block 0)."""
        return decode_transaction(raw, self._vm_class)

    def decode_block_transactions(self, block_rlp: bytes) -> tuple[SignedTransactionAPI, ...]:
        """The transactions of an encoded block, without executing it (InvalidBlock if it does not decode).
        Touches no chain state: safe from any thread."""
        return tuple(self._decode_block(block_rlp).transactions)

    def get_certificate(self, block_hash: bytes) -> bytes | None:
        return self._db.get(_CERT_PREFIX + block_hash)

    def get_consensus_bytes(self, block_hash: bytes) -> bytes | None:
        return self._db.get(_CONSENSUS_PREFIX + block_hash)

    def get_envelope(self, number: int) -> Envelope:
        """The committed block at `number` in its envelope (for sync)."""
        block = self.reader.block_by_number(number)
        return Envelope(rlp.encode(block), self.get_consensus_bytes(bytes(block.hash)) or b"")

    def block_hash(self, block_rlp: bytes) -> bytes:
        """The hash (id that votes sign) of an encoded block; InvalidBlock if it does not decode."""
        return bytes(self._decode_block(block_rlp).hash)

    def committed_block(self, number: int) -> tuple[Envelope, bytes] | None:
        """A committed block in its envelope with its commit certificate (to serve sync), or None."""
        if not 0 < number <= self.height:
            return None
        envelope = self.get_envelope(number)
        block_hash = bytes(self.reader.header_by_number(number).hash)
        return envelope, self.get_certificate(block_hash) or b""

    # -------------------------------------------------------- execution (pending)

    def build_block(self, txs: Sequence[SignedTransactionAPI], *, coinbase: bytes, now: float,
                    consensus_root: bytes = ZERO32, time_budget_s: float | None = None,
                    clock: Callable[[], float] = time.thread_time) -> ExecutedBlock:
        """Execute `txs` on top of the committed head as the next block; it stays pending until commit.

        The caller (the pool) must hand over only transactions valid in sequence; one that is not makes
        the whole build fail with InvalidBlock and nothing changes.

        `time_budget_s`: stop adding transactions once executing the block so far has taken that long (by
        `clock`: this thread's CPU time, what an importer will spend too, whatever else the machine runs),
        or twice that in wall-clock time;
        the block then holds a prefix of `txs` (still valid in sequence: the pool orders each sender's
        transactions by nonce) and costs an importer about the budget plus one transaction, whatever their
        gas. The rest stay in the pool for the next block. None: all of `txs`.
        """
        self.discard_pending()
        parent = self.head
        header = self._evm.header.copy(
            coinbase=coinbase, timestamp=next_timestamp(parent.timestamp, now), gas_limit=self.genesis.block_gas_limit,
            mix_hash=parent.hash, extra_data=EXTRA_DATA, parent_beacon_block_root=consensus_root,
        )
        self._evm.header = header
        try:
            check_transactions(txs, self.chain_id)
            if time_budget_s is None:
                result, receipts, _ = self._evm.mine_all(list(txs), coinbase=coinbase)
            else:
                result, receipts = self._mine_within(list(txs), coinbase, time_budget_s, clock)
        except (OSError, MemoryError, plyvel.Error):
            self.discard_pending()
            raise
        except Exception as exc:  # an invalid transaction: py-evm raises many unrelated types
            self.discard_pending()
            raise InvalidBlock(f"cannot build block #{parent.block_number + 1}: {type(exc).__name__}: {exc}") from exc
        self._pending = ExecutedBlock(result.imported_block, tuple(receipts))
        return self._pending

    def _mine_within(self, txs: list[SignedTransactionAPI], coinbase: bytes, budget_s: float,
                     clock: Callable[[], float]) -> tuple[Any, tuple[ReceiptAPI, ...]]:
        """py-evm's MiningChain.mine_all, applying one transaction at a time until the time budget is
        spent: the same block as mine_all of the transactions it took (tests/unit/test_chain.py)."""
        chain = self._evm
        base_header = chain.header
        vm = chain.get_vm(chain._custom_header(base_header, coinbase=coinbase))
        taken: list[SignedTransactionAPI] = []
        receipts: list[ReceiptAPI] = []
        header = base_header
        start, wall_start = clock(), time.perf_counter()
        for tx in txs:
            # CPU time is what an importer pays too; wall time, at twice the budget, bounds the proposal's
            # delay when the process's other threads (training) or other processes hold the cores
            if taken and (clock() - start >= budget_s or time.perf_counter() - wall_start >= 2 * budget_s):
                break
            header, tx_receipts, _ = vm.apply_all_transactions([tx], header)
            taken.append(tx)
            receipts.extend(tx_receipts)
        filled = vm.set_block_transactions_and_withdrawals(vm.get_block(), header, taken, tuple(receipts),
                                                           withdrawals=None)
        mined = vm.mine_block(filled, coinbase=coinbase)
        persisted = chain.persist_block(mined.block)
        chain.header = chain.create_header_from_parent(mined.block.header)
        return BlockImportResult(*persisted, mined.meta_witness), tuple(receipts)

    def execute_block(self, block_rlp: bytes, *, now: float | None) -> ExecutedBlock:
        """Decode, validate and re-execute a block proposed by another node; it stays pending."""
        block = self._decode_block(block_rlp)
        if self._pending is not None and self._pending.hash == block.hash:
            return self._pending
        self.discard_pending()
        parent = self.head
        check_header(block.header, parent, self.genesis.block_gas_limit, now)
        if tuple(block.withdrawals):
            raise InvalidBlock(f"block #{block.number} lists {len(block.withdrawals)} withdrawals: none are allowed")
        check_transactions(block.transactions, self.chain_id)
        try:
            result = self._evm.import_block(block)
        except (OSError, MemoryError, plyvel.Error):
            self.discard_pending()  # our machine failed, not the block
            raise
        except Exception as exc:  # py-evm and the eth-* libraries raise many unrelated types for bad blocks
            self.discard_pending()
            raise InvalidBlock(f"block #{block.number} 0x{block.hash.hex()} rejected: "
                               f"{type(exc).__name__}: {exc}") from exc
        self._pending = ExecutedBlock(result.imported_block, None)
        return self._pending

    def discard_pending(self) -> None:
        """Forget the pending block (e.g. the round moved on)."""
        if self._pending is not None or self._staged.has_pending:
            self._staged.discard()
            self._evm = self._cls(self._staged)
        self._pending = None

    # -------------------------------------------------------- commit

    def commit(self, block_hash: bytes, certificate: bytes = b"", consensus: bytes = b"") -> BlockHeaderAPI:
        """Make the pending block `block_hash` final: one atomic, fsynced write with its certificate."""
        if self._pending is None or self._pending.hash != block_hash:
            have = "none" if self._pending is None else "0x" + self._pending.hash.hex()
            raise UnknownBlock(f"cannot commit 0x{block_hash.hex()}: pending block is {have}")
        self._staged.flush({_CERT_PREFIX + block_hash: certificate, _CONSENSUS_PREFIX + block_hash: consensus})
        self._head = None
        self._pending = None
        self._evm = self._cls(self._staged)
        self.tip = self._make_tip()
        return self.head

    def import_envelope(self, envelope: Envelope, certificate: bytes = b"", *,
                        now: float | None = None) -> BlockHeaderAPI:
        """Execute and commit a block received with its certificate (sync); the caller checked the cert."""
        executed = self.execute_block(envelope.block_rlp, now=now)
        return self.commit(executed.hash, certificate, envelope.consensus)

    # -------------------------------------------------------- helpers

    def _make_tip(self) -> Tip:
        head = self.head
        return Tip(int(head.block_number), bytes(head.hash), int(head.timestamp))

    def _decode_block(self, block_rlp: bytes) -> BlockAPI:
        return decode_block(block_rlp, self._vm_class, self.genesis.block_gas_limit)

    def state_view(self) -> Any:
        """Committed state at the head (for the tx pool): has get_nonce/get_balance. Read only."""
        return self._head_view()[1]

    def _head_view(self) -> tuple[bytes, Any, int]:
        # Building a py-evm state costs ~1 ms; the pool asks for it per transaction, so keep one per head.
        head = self.head
        if self._view is None or self._view[0] != head.hash:
            base_fee = int(self.reader.child_header(head).base_fee_per_gas)
            self._view = (bytes(head.hash), self.reader.state_at(head), base_fee)
        return self._view


def _write_genesis(db: LevelDB, genesis: Genesis, network_id: bytes) -> None:
    staged = StagedDB(db)
    chain = chain_class(genesis.chain_id).from_genesis(staged, genesis_params(genesis), genesis_state(genesis))
    made = bytes(chain.get_canonical_head().hash)
    if made != network_id:
        raise GenesisMismatch(f"genesis build is not deterministic: 0x{made.hex()} != 0x{network_id.hex()}")
    staged.flush({_GENESIS_KEY: network_id})
