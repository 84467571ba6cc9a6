"""Read-only queries over committed chain data: blocks, transactions, receipts, logs, state, calls.

These back the JSON-RPC server and the tx pool. They read the base LevelDB directly, so a block that
is executed but not committed is invisible here. Same thread rule as ExecutionChain.

eth_call and eth_estimateGas from RPC clients run elsewhere: `CallWorkers` executes them in separate
worker processes (see that section below), so that a call, whatever its code, never holds the chain's
thread, the interpreter lock of the node's process, or its memory.
"""

from __future__ import annotations

import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from eth._utils.address import generate_contract_address
from eth.abc import BlockAPI, BlockHeaderAPI, ReceiptAPI, SignedTransactionAPI, StateAPI
from eth.chains.base import Chain
from eth.db.atomic import AtomicDBWriteBatch
from eth.db.backends.base import BaseAtomicDB
from eth.exceptions import BlockNotFound, HeaderNotFound, OutOfGas, Revert, TransactionNotFound
from eth.vm.message import Message
from eth.vm.spoof import SpoofTransaction
from eth_abi import decode as abi_decode
from eth_bloom import BloomFilter
from eth_utils import ValidationError, keccak

from consensus.db import CACHED_KEY_LENGTH, ByteLRU
from consensus.errors import ConsensusError
from consensus.genesis import Genesis
from consensus.genesis_block import STAKING_ADDRESS

ZERO_ADDRESS = b"\x00" * 20
MAX_LOG_RANGE = 10_000  # blocks per eth_getLogs query
MAX_LOGS = 10_000


class ReadError(ConsensusError):
    """A read refers to something that does not exist or asks for too much."""


class CallFailed(ConsensusError):
    """eth_call / eth_estimateGas: execution reverted (`reverted`, with the revert data in `output`) or
    failed otherwise (out of gas, invalid opcode, a value the sender cannot pay, ...)."""

    def __init__(self, message: str, output: bytes = b"", *, reverted: bool = False) -> None:
        super().__init__(message)
        self.output = output
        self.reverted = reverted


class CallTimeout(ConsensusError):
    """eth_call / eth_estimateGas did not finish within its wall-clock limit."""


class CallWorkerError(ConsensusError):
    """No call worker could run the call: it could not start, it died, or the workers are closed."""


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

    def __init__(self, chain: Chain, genesis: Genesis | None) -> None:
        """`genesis` is needed only for validator sets (a call worker has none)."""
        self._chain = chain
        self._genesis = genesis
        # Validator sets by the hash of the block whose state holds them. A block's state never changes,
        # and one set serves a whole epoch: the driver asks once or twice per height (~12 ms in py-evm).
        self._validator_sets: dict[bytes, tuple[tuple[bytes, int], ...]] = {}
        self._costless: tuple[bytes, StateAPI, Any] | None = None

    @property
    def base_db(self) -> Any:
        """The database this reader reads (committed data only): call workers read it too."""
        return self._chain.chaindb.db

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
        first, last = self.log_range(from_block, to_block)
        found, _ = self.logs_part(first, last, addresses, topics)
        return found

    def log_range(self, from_block: int, to_block: int) -> tuple[int, int]:
        """[from_block, to_block] cut at the head; ReadError beyond MAX_LOG_RANGE blocks."""
        to_block = min(to_block, int(self.head().block_number))
        if to_block - from_block + 1 > MAX_LOG_RANGE:
            raise ReadError(f"block range {from_block}..{to_block} exceeds {MAX_LOG_RANGE} blocks")
        return from_block, to_block

    def logs_part(self, from_block: int, to_block: int, addresses: Sequence[bytes] = (),
                  topics: Sequence[Sequence[bytes] | None] = (), budget: float | None = None,
                  found_before: int = 0) -> tuple[list[LogEntry], int]:
        """The logs of blocks from_block.. as `logs`, stopping after the block during which `budget` seconds
        ran out (None: no limit): (logs, the next block to read; to_block + 1 when done). A query split in
        parts counts the logs of the earlier parts in `found_before` against MAX_LOGS."""
        deadline = time.monotonic() + budget if budget is not None else None
        found: list[LogEntry] = []
        for number in range(from_block, to_block + 1):
            header = self.header_by_number(number)
            if header.bloom and _bloom_may_match(header.bloom, addresses, topics):  # bloom 0: no logs at all
                found.extend(_matching_logs(self, self.block_by_number(number), addresses, topics))
                if found_before + len(found) > MAX_LOGS:
                    raise ReadError(f"query matches more than {MAX_LOGS} logs; narrow the range")
            if deadline is not None and time.monotonic() > deadline:
                return found, number + 1
        return found, to_block + 1

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
            raise CallFailed(_revert_message(computation), bytes(computation.output),
                             reverted=isinstance(computation.error, Revert))
        return bytes(computation.output)

    def view(self, to: bytes, data: bytes, header: BlockHeaderAPI) -> bytes:
        """A read-only call of `to` from the zero address at `header`: `call(CallRequest(to=to, data=data))`
        without the transaction around the message (no spoofed transaction, nonce, fee, refund or coinbase
        bookkeeping, and no fresh VM state for the sender's nonce). The output is the same; the node's own
        contract reads (the round reader, the registry, validator sets, swarm_* RPC) make several per block,
        and the transaction around each cost twice the message itself."""
        state = self._call_state(header)
        snapshot = state.snapshot()
        try:
            message = Message(gas=header.gas_limit, to=to, sender=ZERO_ADDRESS, value=0, data=data,
                              code=state.get_code(to))
            context = state.get_transaction_context_class()(gas_price=0, origin=ZERO_ADDRESS)
            computation = state.computation_class.apply_message(state, message, context)
        finally:
            state.revert(snapshot)  # every call starts from the state after `header`
            state.clear_transient_storage()
        if computation.is_error:
            raise CallFailed(_revert_message(computation), bytes(computation.output),
                             reverted=isinstance(computation.error, Revert))
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
        assert self._genesis is not None, "validator sets need the genesis"
        if not state.get_code(STAKING_ADDRESS):
            return tuple((v.address, v.stake) for v in self._genesis.validators)
        output = self.view(STAKING_ADDRESS, keccak(b"getValidators()")[:4], header)
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
        assert self._genesis is not None, "epochs need the genesis"
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


# ---------------------------------------------------------------- calls in worker processes
#
# An RPC client's eth_call runs code of the client's choosing. py-evm runs ~1-3 M opcodes/s here (a loop of
# 5,000,000 gas takes 1.4-3.2 s), and one precompile can hold the interpreter far longer than 100 ms
# without reaching a bytecode boundary (MODEXP with a small modulus and a ~100 KB exponent is one pow()
# of ~0.4 s at 5M gas). In a thread of the node it would take the interpreter lock from the chain's
# thread and the event loop. So calls from RPC clients run in worker processes:
#   - a worker is `python -c "...call_worker_main()"`, niced, speaking length-prefixed frames on its
#     stdin/stdout. It builds its own py-evm chain over a database that asks the node for each value
#     (`_NodeDB`): LevelDB reads are thread-safe, and a call reads only content-addressed values (trie
#     nodes, code, headers, kept in a bounded cache) and the canonical head/number keys, which a commit
#     changes in one atomic batch;
#   - the node side (`_Worker.run`) runs in a thread of the caller's: it sends the call and answers the
#     worker's reads (one LevelDB get each) until the result comes;
#   - each call has a wall-clock limit: the worker's SIGALRM aborts the EVM and it answers "timeout"; a
#     worker still silent WORKER_GRACE seconds later is killed, and a new one starts on the next call.

DEFAULT_GAS_CAP = 5_000_000
ESTIMATE_TOLERANCE = 21_000  # as py-evm's default estimator: an estimate is at most this far above the need
WORKER_GRACE = 2.0  # seconds past its limit before a silent worker is killed
_FRAME = struct.Struct(">I")
_MAX_FRAME = 64 << 20
_WORKER_CODE = "from consensus.chain_reads import call_worker_main; call_worker_main()"


@dataclass(frozen=True)
class CallLimits:
    """Limits of eth_call / eth_estimateGas for RPC clients."""

    gas_cap: int = DEFAULT_GAS_CAP  # gas of one call; a request asking for more is clamped to it (as geth)
    timeout: float = 5.0  # wall-clock seconds for one eth_call, or for one whole eth_estimateGas
    workers: int = 2  # worker processes, i.e. calls that run at once (more wait for one)
    niceness: int = 10  # workers run this much nicer than the node (0: same priority)
    cache_bytes: int = 32 << 20  # content-addressed values a worker keeps between calls
    startup_timeout: float = 60.0  # a worker imports py-evm (~1.5 s of CPU here) before its first call


class _ChannelClosed(Exception):
    """The other end of a worker channel went away or broke the framing."""


class _Deadline(BaseException):  # noqa: N818 - BaseException: py-evm's `except Exception` must not swallow it
    """Worker side: the running call's wall-clock limit has passed."""


def _wait_fd(fd: int, events: int, deadline: float) -> None:
    poller = select.poll()
    poller.register(fd, events | select.POLLERR | select.POLLHUP)
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not poller.poll(max(1, int(remaining * 1000) + 1)):
        raise CallTimeout("call worker did not answer in time")


class _Channel:
    """Length-prefixed frames over two pipe fds. Calls with a deadline (time.monotonic()) need
    non-blocking fds and raise CallTimeout when the other end is late."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self._buf = bytearray()

    def send(self, payload: bytes, deadline: float | None = None) -> None:
        view = memoryview(_FRAME.pack(len(payload)) + payload)
        while view:
            if deadline is not None:
                _wait_fd(self.wfd, select.POLLOUT, deadline)
            try:
                view = view[os.write(self.wfd, view):]
            except BlockingIOError:
                continue
            except OSError as exc:  # EPIPE: the other end is gone
                raise _ChannelClosed(str(exc)) from exc

    def recv(self, deadline: float | None = None) -> bytes:
        while True:
            if len(self._buf) >= _FRAME.size:
                (size,) = _FRAME.unpack_from(self._buf)
                if size > _MAX_FRAME:
                    raise _ChannelClosed(f"frame of {size} bytes")
                if len(self._buf) >= _FRAME.size + size:
                    payload = bytes(self._buf[_FRAME.size:_FRAME.size + size])
                    del self._buf[:_FRAME.size + size]
                    return payload
            if deadline is not None:
                _wait_fd(self.rfd, select.POLLIN, deadline)
            try:
                chunk = os.read(self.rfd, 1 << 16)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _ChannelClosed(str(exc)) from exc
            if not chunk:
                raise _ChannelClosed("end of stream")
            self._buf += chunk


# ---- worker side


class _Alarm:
    """The running call's wall-clock limit, delivered as SIGALRM. The handler raises _Deadline wherever the
    EVM is, except while a read from the node is in flight (its reply would stay in the pipe and answer the
    wrong question): that read completes first, then `check()` raises."""

    def __init__(self) -> None:
        self.armed = False
        self.deferring = False
        self.expired = False

    def handler(self, signum: int, frame: Any) -> None:
        if not self.armed:
            return
        self.expired = True
        if not self.deferring:
            raise _Deadline

    def check(self) -> None:
        if self.armed and self.expired:
            raise _Deadline


class _NodeDB(BaseAtomicDB):
    """Worker side: the node's committed database, read over the channel. 32-byte keys are content
    addresses (trie nodes, code, headers, bodies), immutable, so their values are kept (LRU, bounded).
    Writes (py-evm's scratch) stay in an overlay that `reset()` drops: a call never persists anything."""

    def __init__(self, channel: _Channel, alarm: _Alarm, cache_bytes: int) -> None:
        self._channel, self._alarm = channel, alarm
        self._cache = ByteLRU(cache_bytes, max_value=cache_bytes // 8)
        self._overlay: dict[bytes, bytes | None] = {}
        self.reads = 0

    def reset(self) -> None:
        self._overlay.clear()

    def __getitem__(self, key: bytes) -> bytes:
        if key in self._overlay:
            value = self._overlay[key]
            if value is None:
                raise KeyError(key)
            return value
        cached = self._cache.get(bytes(key))
        if cached is not None:
            return cached
        self._alarm.deferring = True
        try:
            self._channel.send(b"G" + bytes(key))
            reply = self._channel.recv()
            self.reads += 1
            if reply[:1] == b"V" and len(key) == CACHED_KEY_LENGTH:
                self._cache.put(bytes(key), reply[1:])
        finally:
            self._alarm.deferring = False
        self._alarm.check()
        if reply[:1] == b"V":
            return reply[1:]
        if reply[:1] == b"N":
            raise KeyError(key)
        raise ReadError(f"node database: {reply[1:].decode(errors='replace')}")

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._overlay[bytes(key)] = bytes(value)

    def __delitem__(self, key: bytes) -> None:
        if key not in self:
            raise KeyError(key)
        self._overlay[bytes(key)] = None

    def _exists(self, key: bytes) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    @contextmanager
    def atomic_batch(self) -> Iterator[Any]:
        with AtomicDBWriteBatch._commit_unless_raises(self) as batch:
            yield batch


def call_worker_main() -> None:
    """A call worker process (started by CallWorkers): serves calls until its stdin closes."""
    out_fd = os.dup(1)
    os.dup2(2, 1)  # frames go to a private copy of stdout; anything printed goes to stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the node, and the node stops its workers
    chain_id, niceness, cache_bytes = (int(a) for a in sys.argv[1:4])
    if niceness:
        os.nice(niceness)
    from consensus.genesis_block import chain_class

    alarm = _Alarm()
    signal.signal(signal.SIGALRM, alarm.handler)
    channel = _Channel(0, out_fd)
    db = _NodeDB(channel, alarm, cache_bytes)
    try:
        chain = chain_class(chain_id)(db)
        reader = ChainReader(chain, None)
        channel.send(b"H")
        while True:
            frame = channel.recv()
            if frame[:1] != b"C":
                continue
            try:
                reply = _serve_call(chain, reader, db, alarm, msgpack.unpackb(frame[1:]))
            except _Deadline:  # raised between the call's end and disarming the timer
                reply = ["timeout"]
            channel.send(b"R" + msgpack.packb(reply))
    except _ChannelClosed:  # the node closed the channel or is gone
        return


def _serve_call(chain: Chain, reader: ChainReader, db: _NodeDB, alarm: _Alarm, msg: dict[str, Any]) -> list[Any]:
    db.reset()
    alarm.expired = False
    alarm.armed = True
    signal.setitimer(signal.ITIMER_REAL, max(0.001, float(msg["timeout"])))
    try:
        header = _worker_header(reader, msg["block"])
        request = CallRequest(sender=msg["from"], to=msg["to"], data=msg["data"],
                              value=int.from_bytes(msg["value"], "big"), gas=int(msg["gas"]))
        if msg["op"] == "estimate":
            return ["ok", _worker_estimate(chain, header, request)]
        return ["ok", _worker_call(chain, header, request)]
    except _Deadline:
        return ["timeout"]
    except CallFailed as exc:
        return ["revert" if exc.reverted else "fail", str(exc), exc.output]
    except ReadError as exc:
        return ["read", str(exc)]
    except Exception as exc:  # a py-evm error outside the EVM's own (VMError is a result, not this)
        return ["error", f"{type(exc).__name__}: {exc}"[:500]]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        alarm.armed = False


def _worker_header(reader: ChainReader, ref: list[Any]) -> BlockHeaderAPI:
    kind, value = ref
    if kind == "number":
        number = int.from_bytes(value, "big")
        if number > 2**63:
            raise ReadError(f"no committed block #{number}")
        return reader.header_by_number(number)
    if kind == "hash":
        return reader.block_by_hash(bytes(value)).header
    return reader.header_by_number(0) if value == "earliest" else reader.head()


def _call_tx(vm: Any, state: StateAPI, request: CallRequest, gas: int) -> SignedTransactionAPI:
    unsigned = vm.create_unsigned_transaction(
        nonce=state.get_nonce(request.sender), gas_price=0, gas=gas,
        to=request.to if request.to is not None else b"", value=request.value, data=request.data,
    )
    return SpoofTransaction(unsigned, from_=request.sender)  # type: ignore[return-value]


def _with_gas(tx: SignedTransactionAPI, gas: int) -> SignedTransactionAPI:
    return SpoofTransaction(tx, gas=gas)  # type: ignore[return-value]


def _apply(state: StateAPI, tx: SignedTransactionAPI) -> Any:
    snapshot = state.snapshot()
    try:
        return state.costless_execute_transaction(tx)
    except ValidationError as exc:  # e.g. the value exceeds the sender's balance, gas below intrinsic
        raise CallFailed(f"invalid call: {exc}") from exc
    finally:
        state.revert(snapshot)


def _failure(computation: Any, gas: int) -> CallFailed:
    if isinstance(computation.error, Revert):
        return CallFailed(_revert_message(computation), bytes(computation.output), reverted=True)
    if isinstance(computation.error, OutOfGas):
        return CallFailed(f"out of gas (gas limit {gas})")
    return CallFailed(_revert_message(computation))


def _worker_call(chain: Chain, header: BlockHeaderAPI, request: CallRequest) -> bytes:
    gas = int(request.gas or 0)
    vm = chain.get_vm(header)
    with vm.in_costless_state() as state:
        computation = _apply(state, _call_tx(vm, state, request, gas))
    if computation.is_error:
        raise _failure(computation, gas)
    return bytes(computation.output)


def _worker_estimate(chain: Chain, header: BlockHeaderAPI, request: CallRequest) -> int:
    """py-evm's binary search, bounded by the request's gas (at most the cap) instead of the block's."""
    high = int(request.gas or 0)
    vm = chain.get_vm(header)
    with vm.in_costless_state() as state:
        tx = _call_tx(vm, state, request, high)
        computation = _apply(state, tx)  # at the top first: a call that fails there says why
        if computation.is_error:
            if isinstance(computation.error, OutOfGas):
                raise CallFailed(f"gas required exceeds allowance ({high})")
            raise _failure(computation, high)
        low = int(tx.intrinsic_gas)
        if low >= high:
            return high
        if not _apply(state, _with_gas(tx, low)).is_error:
            return low
        while high - low > ESTIMATE_TOLERANCE:
            mid = (low + high) // 2
            if _apply(state, _with_gas(tx, mid)).is_error:
                low = mid
            else:
                high = mid
        return high


# ---- node side


class _Worker:
    """The node's end of one worker process."""

    def __init__(self, proc: subprocess.Popen[bytes], channel: _Channel) -> None:
        self.proc, self.channel = proc, channel

    @classmethod
    def start(cls, chain_id: int, limits: CallLimits, read: Callable[[bytes], bytes | None]) -> _Worker:
        root = str(Path(__file__).resolve().parents[1])
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, str(chain_id), str(limits.niceness), str(limits.cache_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        os.set_blocking(proc.stdin.fileno(), False)
        os.set_blocking(proc.stdout.fileno(), False)
        worker = cls(proc, _Channel(proc.stdout.fileno(), proc.stdin.fileno()))
        try:
            worker._pump(b"H", time.monotonic() + limits.startup_timeout, read)
        except BaseException:
            worker.kill()
            raise
        return worker

    def run(self, message: dict[str, Any], deadline: float, read: Callable[[bytes], bytes | None]) -> list[Any]:
        self.channel.send(b"C" + msgpack.packb(message), deadline)
        reply = msgpack.unpackb(self._pump(b"R", deadline, read))
        if not isinstance(reply, list) or not reply:
            raise _ChannelClosed(f"bad reply {reply!r:.80}")
        return reply

    def _pump(self, until: bytes, deadline: float, read: Callable[[bytes], bytes | None]) -> bytes:
        """Answer the worker's reads until it sends a frame of kind `until`."""
        while True:
            frame = self.channel.recv(deadline)
            kind = frame[:1]
            if kind == b"G":
                try:
                    value = read(frame[1:])
                    answer = b"N" if value is None else b"V" + value
                except Exception as exc:  # the database is closed or failing: the call fails, the worker lives
                    answer = b"E" + f"{type(exc).__name__}: {exc}".encode()[:300]
                self.channel.send(answer, deadline)
            elif kind == until:
                return frame[1:]
            else:
                raise _ChannelClosed(f"unexpected frame {kind!r}")

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass


class CallWorkers:
    """eth_call / eth_estimateGas for RPC clients, in up to `limits.workers` worker processes started on
    first use. `run` blocks (call it from a thread of its own; at most `limits.workers` at once) and never
    touches the chain's thread. `close()` before closing the database."""

    def __init__(self, db: Any, chain_id: int, limits: CallLimits | None = None) -> None:
        """`db[key]` reads committed values (KeyError if absent) from any thread: consensus.db.LevelDB."""
        self._db, self.chain_id = db, chain_id
        self.limits = limits or CallLimits()
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._running = 0
        self._done = threading.Condition(self._lock)
        self._closed = False
        self.started = self.killed = self.timeouts = 0

    def call(self, op: str, block: tuple[str, Any], request: CallRequest) -> bytes | int:
        """Run one call ("call": its output; "estimate": the gas it needs) at the committed block `block`:
        ("tag", "latest"|"earliest"|...), ("number", n) or ("hash", 32 bytes). Raises CallFailed,
        ReadError (no such block), CallTimeout or CallWorkerError."""
        kind, ref = block
        message = {
            "op": op, "block": [kind, ref.to_bytes(32, "big") if kind == "number" else ref],
            "from": request.sender, "to": request.to, "data": request.data,
            "value": request.value.to_bytes(32, "big"), "gas": min(int(request.gas or self.limits.gas_cap),
                                                                   self.limits.gas_cap),
            "timeout": self.limits.timeout,
        }
        reply = self._run(message)
        status = reply[0]
        if status == "ok":
            return reply[1]  # type: ignore[no-any-return]
        if status in ("revert", "fail"):
            raise CallFailed(str(reply[1]), bytes(reply[2]), reverted=status == "revert")
        if status == "read":
            raise ReadError(str(reply[1]))
        if status == "timeout":
            with self._lock:
                self.timeouts += 1
            raise CallTimeout(f"execution aborted (timeout = {self.limits.timeout:g}s)")
        raise CallWorkerError(f"call failed in its worker: {reply[1] if len(reply) > 1 else reply}")

    def _run(self, message: dict[str, Any]) -> list[Any]:
        worker = self._checkout()
        healthy = False
        try:
            reply = worker.run(message, time.monotonic() + self.limits.timeout + WORKER_GRACE, self._read)
            healthy = True
        except CallTimeout:
            with self._lock:
                self.timeouts += 1
            raise CallTimeout(f"execution aborted (timeout = {self.limits.timeout:g}s; worker stopped)") from None
        except (_ChannelClosed, ValueError, msgpack.UnpackException) as exc:
            raise CallWorkerError(f"call worker failed: {exc}") from exc
        finally:
            self._checkin(worker, healthy)
        return reply

    def warm(self, count: int | None = None) -> None:
        """Start workers until `count` (default: all) are ready, so that the first calls do not wait for a
        worker to import py-evm (~1 s). Blocks; call it from a thread."""
        while True:
            with self._lock:
                if self._closed or len(self._idle) + len(self._busy) >= (count or self.limits.workers):
                    return
            worker = self._checkout(new=True)
            self._checkin(worker, True)

    def _checkout(self, new: bool = False) -> _Worker:
        with self._lock:
            if self._closed:
                raise CallWorkerError("calls are shut down")
            self._running += 1
            worker = self._idle.pop() if self._idle and not new else None
            if worker is not None:
                self._busy.add(worker)
                return worker
        try:
            worker = _Worker.start(self.chain_id, self.limits, self._read)
        except BaseException as exc:
            with self._lock:
                self._running -= 1
                self._done.notify_all()
            if isinstance(exc, Exception):
                raise CallWorkerError(f"cannot start a call worker: {exc}") from exc
            raise
        with self._lock:
            self.started += 1
            self._busy.add(worker)
            closed = self._closed
        if closed:  # closed while it started
            self._checkin(worker, False)
            raise CallWorkerError("calls are shut down")
        return worker

    def _checkin(self, worker: _Worker, healthy: bool) -> None:
        with self._lock:
            self._busy.discard(worker)
            keep = healthy and not self._closed
            if keep:
                self._idle.append(worker)
        if not keep:
            worker.kill()
            with self._lock:
                self.killed += 1
        with self._lock:
            self._running -= 1
            self._done.notify_all()

    def _read(self, key: bytes) -> bytes | None:
        if self._closed:
            raise CallWorkerError("calls are shut down")
        try:
            return bytes(self._db[key])
        except KeyError:
            return None

    def close(self, timeout: float = 10.0) -> bool:
        """Stop every worker and wait until no thread reads the database for a call any more (then the
        database may close). False if calls were still running after `timeout`."""
        with self._lock:
            self._closed = True
            workers = self._idle + list(self._busy)
            self._idle = []
        for worker in workers:
            worker.kill()  # a busy one's thread sees the end of its stream at once
        with self._lock:
            return self._done.wait_for(lambda: self._running == 0, timeout)

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return {"workers": len(self._idle) + len(self._busy), "running": self._running,
                    "started": self.started, "killed": self.killed, "timeouts": self.timeouts}
