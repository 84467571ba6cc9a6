"""The daemon: the chain, the BFT driver, libp2p and the round protocol wired into one trio program."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from consensus.chain import ExecutionChain
from consensus.chain_app import ChainApplication
from consensus.driver import ConsensusDriver, DriverConfig
from consensus.engine.types import TimeoutConfig
from consensus.genesis import Genesis, load_genesis
from consensus.interfaces import Verdict
from consensus.messages import MAX_MESSAGE_BYTES
from consensus.rpc import RpcServer
from consensus.service import ChainService, make_pool, submit_raw
from consensus.signing_record import SigningRecord
from consensus.txpool import TxRejected
from swarmnode.aggregation.codec import GlobalModel, content_id, decode_model, encode_model, model_hash
from swarmnode.aggregation.errors import AggregationError
from swarmnode.aggregation.rules import RuleSpec, aggregate
from swarmnode.experiment import ClientData, build_clients, contribution_from_blob, local_update
from swarmnode.learning.data import load_dataset
from swarmnode.learning.evaluate import evaluate
from swarmnode.learning.tasks import Task, initial_params
from swarmnode.node import rounds, txs, views
from swarmnode.node.compute import ComputeThreads
from swarmnode.node.config import NodeConfig
from swarmnode.node.keys import address_of, load_key
from swarmnode.node.store import CorruptObject, ModelStore, NotInStore, StoreError
from swarmnode.p2p import (
    CONSENSUS,
    TX,
    UPDATES,
    DirectoryBlobStore,
    P2PConfig,
    P2PError,
    P2PNode,
    SerializedApplication,
    TopicPolicy,
    height_window,
)
from swarmnode.p2p.errors import BlobCorrupted

log = logging.getLogger("swarmnode.node")
progress_log = logging.getLogger("swarmnode.progress")
T = TypeVar("T")

RECENT_BLOB_BYTES = 32 * 1024 * 1024  # a round of updates is ~8 MB with the seed task and 10 participants
BLOB_FETCH_TIMEOUT = 15.0  # one data-availability check or one model fetch, all providers
POLL_INTERVAL = 0.25  # the round loop looks at the committed head on every commit, and at least this often


class DaemonError(Exception):
    """The daemon cannot start: bad genesis, key, data dir or dataset (the message says which)."""


class LockedChainService(ChainService):
    """ChainService whose chain calls also take the lock the driver and chain sync use: RPC, the round
    protocol, the driver and sync each run in their own worker thread, and py-evm is not thread-safe."""

    def __init__(self, chain: ExecutionChain, lock: threading.RLock, **kwargs: Any) -> None:
        super().__init__(chain, **kwargs)
        self.lock = lock

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        def locked() -> T:
            with self.lock:
                return fn(*args)

        return await trio.to_thread.run_sync(locked, limiter=self.limiter)

    async def run_quick(self, fn: Callable[..., T], *args: Any) -> T:
        """`run` for calls of well under a millisecond (the head's height, decoding a transaction): on the
        event loop when the lock is free, in a worker thread only when another thread holds it. A trip to a
        worker thread and back costs more than such calls, and far more on a loaded machine."""
        if self.lock.acquire(blocking=False):
            try:
                return fn(*args)
            finally:
                self.lock.release()
        return await self.run(fn, *args)


class SharedLockApplication(SerializedApplication):
    """SerializedApplication around a lock we also hand to the RPC service (one lock for the chain).

    `awaiting()` says whether transactions have arrived that wait only for their data (a commit is
    admitted to the pool once its update is held). They count as pending: on an idle chain a proposer
    that has not finished fetching the update would otherwise wait out the empty-block interval while the
    validators that had it started the height, and the height would go on only at their propose timeout
    (seen: a 2.7 s proposal in a 10-node swarm). A peer can make us expect work this way only for as long
    as its fetch may take (BLOB_FETCH_TIMEOUT), and the cost is empty blocks at block_interval."""

    def __init__(self, inner: ChainApplication, lock: threading.RLock,
                 awaiting: Callable[[], bool] = lambda: False) -> None:
        super().__init__(inner)
        self._lock = lock
        self._awaiting = awaiting

    def has_pending_transactions(self) -> bool:
        return self.inner.has_pending_transactions() or self._awaiting()


@dataclass
class RoundRecord:
    """What this node saw of one round, for the progress line and swarm_node."""

    round: int
    started: float
    participants: int = 0
    commits: int = 0
    local_hash: bytes | None = None
    final_hash: bytes | None = None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    seconds: float | None = None


class Daemon:
    """`await Daemon(cfg).run()` until SIGINT/SIGTERM (or cancellation)."""

    def __init__(self, cfg: NodeConfig, *, evaluate_test: bool = False) -> None:
        self.cfg = cfg
        self.evaluate_test = evaluate_test
        try:
            self.genesis: Genesis = load_genesis(cfg.genesis)
        except Exception as exc:  # GenesisError and I/O errors: both are the user's to fix
            raise DaemonError(f"genesis {cfg.genesis}: {exc}") from exc
        self.task = Task.from_dict(self.genesis.task)
        self.secret = load_key(cfg.key_file)
        self.address = address_of(self.secret)
        self.lock = threading.RLock()
        self.train_limiter = trio.CapacityLimiter(1)
        self.eval_limiter = trio.CapacityLimiter(1)  # scoring never queues the next round's training
        self._score_wanted = -1  # the newest round whose model is waiting to be scored
        # training runs below the priority of consensus, libp2p and the chain
        self.compute = ComputeThreads(workers=2, niceness=cfg.compute_niceness)
        # scoring is for people (the progress line), never on the round's critical path: one thread at the
        # lowest priority, so that it takes only what training and aggregation leave (it ran next to the
        # aggregation of slower nodes, delaying their attestations and with them the round's final block)
        self.scoring = ComputeThreads(workers=1, niceness=19 if cfg.compute_niceness else 0)
        # aggregating is short (~0.1 s of CPU) and every validator's attestation waits for it, and the round's
        # final block for those: it runs at normal priority
        self.aggregating = ComputeThreads(workers=1, niceness=0)
        self.models = ModelStore(cfg.store_dir)
        self.blobs = DirectoryBlobStore(cfg.blob_dir)
        self.height = 0
        self._awaiting_data = 0  # gossiped commits whose update is still being fetched
        # updates verified in this process (fetched, or trained here), newest last: aggregation reads the
        # round's updates from here rather than re-reading and re-hashing files written a moment ago
        self._recent: OrderedDict[bytes, bytes] = OrderedDict()
        self._recent_bytes = 0
        self.busy: set[tuple[str, int]] = set()
        self.done: set[tuple[str, int]] = set()
        self.aggregates: dict[int, bytes] = {}
        self._prune_lock = trio.Lock()
        self.history: dict[int, RoundRecord] = {}
        self.observation: rounds.RoundObservation | None = None
        self.client: ClientData | None = None
        self.test_split: Any = None
        self.counters: dict[str, int] = {"mismatches": 0, "models_fetched": 0, "da_fetched": 0, "da_rejected": 0,
                                      "blob_bytes_fetched": 0}
        self._nursery: trio.Nursery | None = None
        self._tx_lock = trio.Lock()
        self._next_nonce = 0
        self._trained: dict[int, txs.CommitCall] = {}  # round -> our commit, kept so a failed send is not retrained

    # ---------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.chain = ExecutionChain.open(self.cfg.chain_dir, self.genesis)
        except Exception as exc:
            raise DaemonError(f"cannot open the chain in {self.cfg.chain_dir}: {exc}") from exc
        try:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as root:
                    root.start_soon(self._on_signals, signals, root.cancel_scope)
                    await self._serve(root, task_status)
                    root.cancel_scope.cancel()
        finally:
            stopped = [pool.stop() for pool in (self.compute, self.scoring, self.aggregating)]
            if not all(stopped):
                log.warning("event=compute_threads_still_running (exiting anyway)")
            with self.lock:
                self.chain.close()
            log.info("event=stopped address=0x%s", self.address.hex())

    async def _on_signals(self, signals: Any, scope: trio.CancelScope) -> None:
        async for signum in signals:  # keeps receiving: a second signal must not kill a clean shutdown
            log.info("event=shutdown signal=%s", signal.Signals(signum).name)
            scope.cancel()

    async def _serve(self, root: trio.Nursery, task_status: trio.TaskStatus[None]) -> None:
        pool = make_pool(self.chain)
        self.app = ChainApplication(self.chain, self.address, pool=pool, availability=self._availability)
        self.sapp = SharedLockApplication(self.app, self.lock, awaiting=lambda: self._awaiting_data > 0)
        self.service = LockedChainService(self.chain, self.lock, pool=pool, on_transaction=self._gossip_tx)
        self.pool = pool
        self.height = await self.service.run(lambda: self.chain.height)
        p2p_cfg = P2PConfig(secret=self.secret, chain_id=self.genesis.chain_id, genesis_hash=self.chain.genesis_hash,
                            listen_addrs=self.cfg.listen, bootstrap=self.cfg.bootstrap)
        consensus_policy = TopicPolicy(MAX_MESSAGE_BYTES, window=height_window(lambda: self.height))
        self.p2p = P2PNode(p2p_cfg, store=self.blobs, app=self.sapp, head_height=lambda: self.height,
                           policies={CONSENSUS: consensus_policy})
        self.rpc = RpcServer(self.service, host=self.cfg.rpc_host, port=self.cfg.rpc_port)
        self.rpc.register_method("swarm_node", self._rpc_node)
        await trio.to_thread.run_sync(self._load_data)
        async with self.p2p.run(), trio.open_nursery() as nursery:
            self._nursery = nursery
            port = await nursery.start(self.rpc.serve)
            self._write_info(port)
            nursery.start_soon(self._ingest_txs)
            nursery.start_soon(self._drain_updates)
            await self._initial_sync()
            self.net = self.p2p.consensus  # direct streams between peers (swarmnode/p2p/direct.py)
            vset = await self.service.run(self.app.validator_set, self.height + 1)
            is_validator = any(v.address == self.address for v in vset.validators)
            c = self.genesis.consensus
            dcfg = DriverConfig(
                chain_id=self.genesis.chain_id,
                timeouts=TimeoutConfig(propose=c.propose_timeout_ms / 1000, propose_delta=c.timeout_delta_ms / 1000,
                                       prevote=c.prevote_timeout_ms / 1000, prevote_delta=c.timeout_delta_ms / 1000,
                                       precommit=c.precommit_timeout_ms / 1000,
                                       precommit_delta=c.timeout_delta_ms / 1000),
                block_interval=c.block_interval_ms / 1000,
                empty_block_interval=c.empty_block_interval_ms / 1000,
            )
            record = SigningRecord.open(self.cfg.signing_record)
            self.driver = ConsensusDriver(dcfg, self.sapp, self.net, self.secret if is_validator else None, record)
            await nursery.start(self.driver.run)
            nursery.start_soon(self._round_loop)
            log.info("event=started address=0x%s peer_id=%s validator=%s height=%d rpc=%s:%d listen=%s",
                     self.address.hex(), self.p2p.peer_id, is_validator, self.height, self.cfg.rpc_host, port,
                     ",".join(self.p2p.listen_addrs()))
            task_status.started()
            await trio.sleep_forever()

    def _write_info(self, rpc_port: int) -> None:
        info = {"pid": os.getpid(), "address": "0x" + self.address.hex(), "peer_id": str(self.p2p.peer_id),
                "rpc": f"http://{self.cfg.rpc_host}:{rpc_port}", "listen": self.p2p.listen_addrs()}
        tmp = self.cfg.info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, self.cfg.info_file)

    def _load_data(self) -> None:
        """This node's training and validation split (the partition at its participant index)."""
        import torch

        torch.set_num_threads(self.cfg.torch_threads)
        dataset = load_dataset(self.task.dataset, self.cfg.dataset_dir)
        self.dataset = dataset
        self.clients = build_clients(self.task, dataset)
        if self.evaluate_test:
            self.test_split = dataset.test

    async def _initial_sync(self) -> None:
        """Restarted or late: sync the chain from peers (certificates verified) before consensus starts."""
        if not self.cfg.bootstrap:
            return
        with trio.move_on_after(10):
            await self.p2p.host.wait_peers(1)
        if not self.p2p.peers():
            log.warning("event=no_peers bootstrap=%s", ",".join(self.cfg.bootstrap))
            return
        try:
            reached = await self.p2p.catch_up()
        except P2PError as exc:
            log.warning("event=sync_failed error=%r", str(exc))
            return
        self.height = reached
        log.info("event=synced height=%d", reached)

    # ---------------------------------------------------------------- transactions

    async def _gossip_tx(self, raw: bytes) -> None:
        self._notify_driver()
        await self.p2p.gossip.publish(TX, raw)

    def _notify_driver(self) -> None:
        driver = getattr(self, "driver", None)
        if driver is not None:
            driver.notify_pending()

    async def _ingest_txs(self) -> None:
        """Gossiped transactions into the pool. A commitUpdate is admitted only once its update is held
        (fetched and verified), so proposers never build blocks that fail the data-availability check."""
        fetching = trio.CapacityLimiter(8)
        async with trio.open_nursery() as nursery:
            async for msg in self.p2p.gossip.channel(TX):
                try:
                    tx = await self.service.run_quick(self.chain.decode_transaction, msg.body)
                except Exception as exc:  # py-evm/rlp raise many types for malformed bytes: drop the message
                    log.debug("event=tx_undecodable from=%s error=%r", msg.sender, str(exc))
                    continue
                missing = [c.update_hash for c in txs.commits_in([tx]) if not self.blobs.has(c.update_hash)]
                if missing:
                    nursery.start_soon(self._admit_when_available, msg.body, missing, fetching)
                else:
                    await self._admit(msg.body)

    async def _admit(self, raw: bytes) -> None:
        try:
            await self.service.run(submit_raw, self.chain, self.pool, raw)
            self._notify_driver()
        except TxRejected as exc:
            log.debug("event=tx_rejected reason=%s", exc)

    async def _admit_when_available(self, raw: bytes, cids: list[bytes], limiter: trio.CapacityLimiter) -> None:
        self._awaiting_data += 1  # pending work for the driver from now on (SharedLockApplication)
        self._notify_driver()
        try:
            async with limiter:
                try:
                    await self._fetch_blobs(cids)
                except (P2PError, trio.TooSlowError) as exc:
                    log.warning("event=commit_dropped reason=update_unavailable error=%r", str(exc))
                    return
            await self._admit(raw)
        finally:
            self._awaiting_data -= 1

    async def _drain_updates(self) -> None:
        """Announcements register providers inside P2PNode; the channel itself must still be drained."""
        async for _msg in self.p2p.gossip.channel(UPDATES):
            pass

    async def _send_call(self, data: bytes, what: str) -> bytes:
        def sign() -> tuple[int, bytes]:
            # the pool's view, but never below a nonce we already used: the pool has been seen to report a
            # pending nonce as free right after a finalizing block (then admission fails as a replacement)
            nonce = max(self.pool.next_nonce(self.address, self.chain.state_view()), self._next_nonce)
            return nonce, txs.sign_call(self.secret, self.genesis.chain_id, nonce, data, self.chain.next_base_fee())

        async with self._tx_lock:  # one nonce at a time: sign and admit together
            nonce, raw = await self.service.run(sign)
            try:
                tx_hash = await self.service.submit_raw_transaction(raw)
            except TxRejected:
                self._next_nonce = 0  # fall back on the pool's view next time (e.g. our tx was dropped)
                raise
            self._next_nonce = nonce + 1
        log.info("event=tx_sent what=%s hash=0x%s", what, tx_hash.hex())
        return tx_hash

    # ---------------------------------------------------------------- data availability

    def _availability(self, height: int, block_txs: Sequence[Any]) -> Verdict:
        """Runs in a chain worker thread: every committed update of the block must be held or fetched."""
        missing = [c.update_hash for c in txs.commits_in(block_txs) if not self.blobs.has(c.update_hash)]
        if not missing:
            return Verdict(True)
        try:
            trio.from_thread.run(self._fetch_blobs, missing)
        except (P2PError, trio.TooSlowError) as exc:
            self.counters["da_rejected"] += 1
            return Verdict(False, f"committed update unavailable: {exc}")
        except RuntimeError as exc:  # not called from a trio worker thread: cannot fetch, so reject
            return Verdict(False, f"committed update 0x{missing[0].hex()} not held ({exc})")
        self.counters["da_fetched"] += len(missing)
        return Verdict(True)

    def _quarantine_blob(self, cid: bytes) -> None:
        name = cid.hex()
        path = self.cfg.blob_dir / name[:2] / name  # DirectoryBlobStore's layout
        target = self.cfg.data_dir / "corrupt-blobs"
        target.mkdir(exist_ok=True)
        try:
            os.replace(path, target / name)
        except FileNotFoundError:
            pass

    def _providers(self, cid: bytes) -> list[Any]:
        """Peers that announced `cid` first, then every other peer; each group in random order, which
        spreads the load over providers and keeps one bad provider from always being asked first or last."""
        announced = self.p2p.blobs.providers(cid)
        others = [p.peer_id for p in self.p2p.peers() if p.peer_id not in announced]
        random.shuffle(announced)
        random.shuffle(others)
        return announced + others

    def _remember(self, cid: bytes, blob: bytes) -> None:
        """Keep verified bytes for the aggregation that follows (at most RECENT_BLOB_BYTES, oldest out)."""
        if cid in self._recent:
            self._recent.move_to_end(cid)
            return
        self._recent[cid] = blob
        self._recent_bytes += len(blob)
        while self._recent_bytes > RECENT_BLOB_BYTES and len(self._recent) > 1:
            _, old = self._recent.popitem(last=False)
            self._recent_bytes -= len(old)

    def _set_aside(self, cid: bytes, exc: BlobCorrupted) -> None:
        """Our stored copy of `cid` is damaged: quarantine it (the caller fetches it again from peers)."""
        log.error("event=CORRUPT_BLOB cid=0x%s error=%r action=quarantined_and_refetching", cid.hex(), str(exc))
        self._quarantine_blob(cid)

    def _read_held(self, cids: list[bytes]) -> dict[bytes, bytes]:
        """The blobs among `cids` this node holds intact (a damaged copy is quarantined and left out)."""
        found: dict[bytes, bytes] = {}
        for cid in cids:
            try:
                blob = self.blobs.get(cid)
            except BlobCorrupted as exc:
                self._set_aside(cid, exc)
                continue
            if blob is not None:
                found[cid] = blob
        return found

    async def _fetch_blobs(self, cids: list[bytes], timeout: float = BLOB_FETCH_TIMEOUT) -> list[bytes]:
        """Every blob, verified; a blob no provider holds yet is asked for again (its committer's neighbours
        may still be fetching it) until `timeout`, then the last BlobNotFound propagates."""
        # verified in this process a moment ago (memory), else from the store in one trip to a worker thread
        held = {cid: self._recent[cid] for cid in cids if cid in self._recent}
        if len(held) < len(cids):
            held.update(await trio.to_thread.run_sync(self._read_held, [c for c in cids if c not in held]))
        out: list[bytes] = []
        deadline = trio.current_time() + timeout
        for cid in cids:
            if cid in held:
                out.append(held[cid])
                continue
            delay = 0.2
            while True:
                try:
                    had = await trio.to_thread.run_sync(self.blobs.has, cid)
                    with trio.fail_after(max(0.1, deadline - trio.current_time())):
                        out.append(await self.p2p.blobs.fetch(cid, providers=self._providers(cid)))
                    self._remember(cid, out[-1])  # verified: on arrival, or by the store's read
                    if not had:
                        self.counters["blob_bytes_fetched"] += len(out[-1])
                    break
                except BlobCorrupted as exc:  # our own copy is damaged on disk: set it aside, fetch again
                    await trio.to_thread.run_sync(self._set_aside, cid, exc)
                    continue
                except P2PError:
                    if trio.current_time() + delay >= deadline:
                        raise
                    await trio.sleep(delay)
                    delay = min(2.0, delay * 2)
        return out

    # ---------------------------------------------------------------- the round protocol

    async def _round_loop(self) -> None:
        last = -1
        reader = views.RoundReader(self.address, self.genesis.genesis_model_hash)
        while True:
            self.height = await self.service.run_quick(lambda: self.chain.height)
            if self.height != last:
                last = self.height
                obs = await self.service.run(reader.observe, self.chain)
                self._on_observation(obs)
            with trio.move_on_after(POLL_INTERVAL):  # woken by the driver's next commit; the timeout
                await self.driver.wait_height(last + 1)  # covers heights that arrive by chain sync

    def _local_view(self, obs: rounds.RoundObservation) -> rounds.LocalView:
        return rounds.LocalView(
            has_base=self.models.has_model(obs.base_hash), num_clients=len(self.clients),
            busy=frozenset(self.busy), done=frozenset(self.done), aggregates=tuple(self.aggregates.items()),
        )

    def _on_observation(self, obs: rounds.RoundObservation) -> None:
        prev = self.observation
        self.observation = obs
        rec = self.history.setdefault(obs.round, RoundRecord(obs.round, time.monotonic()))
        rec.participants, rec.commits = obs.participant_count, len(obs.commits)
        if prev is not None and obs.round > prev.round:
            self._on_finalized(obs.round - 1, obs.base_hash)
        if not obs.window_open and (prev is None or prev.round != obs.round or prev.window_open):
            log.info("event=window_closed round=%d height=%d commits=%d", obs.round, obs.height, len(obs.commits))
        self._start_actions(obs)

    def _start_actions(self, obs: rounds.RoundObservation) -> None:
        for action in rounds.decide(obs, self._local_view(obs)):
            self.busy.add(action.key)
            assert self._nursery is not None
            self._nursery.start_soon(self._perform, action)

    def _on_finalized(self, round_: int, final: bytes) -> None:
        rec = self.history.setdefault(round_, RoundRecord(round_, time.monotonic()))
        rec.final_hash = final
        ours = rounds.mismatch(self._local_view_stub(), round_, final)
        if ours is not None:
            self.counters["mismatches"] += 1
            log.error("event=MODEL_MISMATCH round=%d ours=0x%s final=0x%s action=fetching_final_model",
                      round_, ours.hex(), final.hex())
        elif round_ in self.aggregates:
            log.info("event=round_final round=%d model=0x%s agrees=true", round_, final.hex())
        rec.seconds = time.monotonic() - rec.started
        self._progress(rec)
        if self.cfg.keep_update_rounds and self._nursery is not None:
            self._nursery.start_soon(self._prune_updates, round_ - self.cfg.keep_update_rounds)

    async def _prune_updates(self, through: int) -> None:
        """Delete the update blobs of every round up to `through` not pruned yet (progress survives restarts
        in <data_dir>/pruned.json). Final models are kept: `model export` and late joiners need them."""
        try:
            await self._prune_updates_locked(through)
        except Exception as exc:  # housekeeping: a failure is logged and retried next round, never fatal
            log.error("event=prune_failed through=%d error=%r", through, str(exc))

    async def _prune_updates_locked(self, through: int) -> None:
        async with self._prune_lock:
            marker = self.cfg.data_dir / "pruned.json"
            try:
                start = int(json.loads(marker.read_text())["through"]) + 1
            except (OSError, ValueError, KeyError, TypeError):
                start = 0
            if through < start:
                return

            def collect() -> list[bytes]:
                return [h for q in range(start, through + 1) for h in views.update_hashes(self.chain, q)]

            removed = 0
            for cid in await self.service.run(collect):
                removed += await trio.to_thread.run_sync(self.blobs.remove, cid)
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps({"through": through}) + "\n")
            os.replace(tmp, marker)
            self.counters["update_blobs_pruned"] = self.counters.get("update_blobs_pruned", 0) + removed
            log.info("event=pruned rounds=%d..%d update_blobs=%d", start, through, removed)

    def _local_view_stub(self) -> rounds.LocalView:
        return rounds.LocalView(has_base=True, num_clients=0, aggregates=tuple(self.aggregates.items()))

    def _progress(self, rec: RoundRecord) -> None:
        acc = f"{rec.val_accuracy * 100:5.1f}%" if rec.val_accuracy is not None else "  n/a"
        test = f" | test acc {rec.test_accuracy * 100:5.1f}%" if rec.test_accuracy is not None else ""
        agree = "" if rec.local_hash is None or rec.final_hash is None else (
            " | agrees" if rec.local_hash == rec.final_hash else " | MISMATCH")
        progress_log.info("round %d final | %d/%d committed | global val acc %s%s | %.1f s | model 0x%s%s",
                          rec.round, rec.commits, rec.participants, acc, test, rec.seconds or 0.0,
                          (rec.final_hash or b"").hex()[:12], agree)

    async def _perform(self, action: rounds.Action) -> None:
        try:
            if isinstance(action, rounds.FetchModel):
                await self._fetch_model(action.round, action.model_hash)
            elif isinstance(action, rounds.Train):
                await self._train(action)
            elif isinstance(action, rounds.Aggregate):
                await self._aggregate(action)
            elif isinstance(action, rounds.Attest):
                await self._send_call(txs.attest_data(action.round, action.model_hash), f"attest:{action.round}")
            self.done.add(action.key)
            if isinstance(action, rounds.Aggregate) and self.observation is not None:
                # attesting our aggregate starts now rather than at the next block, which on an idle chain is
                # empty_block_interval away. (Doing the same after FetchModel, so that training starts before
                # the first block is observed, made the system test's first validator's transactions never
                # be included: see README "Known gaps".)
                self._start_actions(self.observation)
        except CorruptObject as exc:  # our store is damaged: loud, and the next block refetches by hash
            log.error("event=CORRUPT_MODEL action=%s round=%d error=%r next=refetch_by_hash", type(action).__name__,
                      action.round, str(exc))
        except (P2PError, StoreError, AggregationError, TxRejected, trio.TooSlowError, DaemonError) as exc:
            # retried on the next block: the chain tells us again what is still to do
            log.warning("event=action_failed action=%s round=%d error=%s: %s", type(action).__name__,
                        action.round, type(exc).__name__, exc)
        finally:
            self.busy.discard(action.key)

    async def _load_model(self, h: bytes) -> GlobalModel:
        try:
            return await trio.to_thread.run_sync(self.models.get_model, h)
        except CorruptObject:
            # the same bytes are usually also in the blob store (served to peers): check that copy now, so
            # that a damaged one is set aside before anyone asks for it; then get a good copy back from
            # peers even if the swarm has moved on (final models serve `model export` and late joiners)
            await trio.to_thread.run_sync(self._check_blob, h)
            assert self._nursery is not None
            self._nursery.start_soon(self._repair_model, h)
            raise

    async def _repair_model(self, h: bytes) -> None:
        try:
            await self._fetch_model(None, h)
        except (P2PError, StoreError, AggregationError, DaemonError, trio.TooSlowError) as exc:
            log.warning("event=model_repair_failed model=0x%s error=%s: %s", h.hex(), type(exc).__name__, exc)

    def _check_blob(self, cid: bytes) -> None:
        try:
            self.blobs.get(cid)
        except BlobCorrupted as exc:
            log.error("event=CORRUPT_BLOB cid=0x%s error=%r action=quarantined", cid.hex(), str(exc))
            self._quarantine_blob(cid)

    async def _fetch_model(self, round_: int | None, h: bytes) -> None:
        """G_r by hash (round None: a stored model being repaired): the genesis model is rebuilt locally;
        any other comes from peers, verified."""
        if h == self.genesis.genesis_model_hash:
            model = GlobalModel(initial_params(self.task))
        else:
            (blob,) = await self._fetch_blobs([h])
            model = decode_model(blob)
            self.counters["models_fetched"] += 1
        got = await trio.to_thread.run_sync(self.models.put_model, model)
        if got != h:
            raise DaemonError(f"model for round {round_} hashes to 0x{got.hex()}, expected 0x{h.hex()}")
        log.info("event=model_obtained round=%s model=0x%s source=%s", round_, h.hex(),
                 "genesis" if h == self.genesis.genesis_model_hash else "peers")

    async def _train(self, action: rounds.Train) -> None:
        if action.round in self._trained:
            await self._send_call(txs.commit_data(self._trained[action.round]), f"commit:{action.round}")
            return
        model = await self._load_model(action.base_hash)
        data = self.clients[action.client_index].train
        t0 = time.monotonic()
        upd = await self.compute.run(local_update, self.task, model.params, data, action.round,
                                     action.client_index, limiter=self.train_limiter)
        cid = await self.p2p.announce_blob(action.round, upd.blob, upd.update_id)
        self._remember(cid, upd.blob)
        log.info("event=trained round=%d update=0x%s bytes=%d samples=%d loss=%.4f acc=%.4f seconds=%.2f",
                 action.round, cid.hex(), len(upd.blob), upd.result.num_samples, upd.result.loss,
                 upd.result.accuracy, time.monotonic() - t0)
        call = txs.CommitCall(action.round, upd.update_id, upd.result.num_samples, txs.fixed(upd.result.loss),
                              txs.fixed(upd.result.accuracy))
        self._trained[action.round] = call
        await self._send_call(txs.commit_data(call), f"commit:{action.round}")

    async def _aggregate(self, action: rounds.Aggregate) -> None:
        t0 = time.monotonic()
        base = await self._load_model(action.base_hash)
        t_base = time.monotonic()
        blobs = await self._fetch_blobs([c.update_hash for c in action.commits])
        t_fetch = time.monotonic()

        def compute() -> tuple[GlobalModel, list[str], bytes, bytes]:
            contribs, excluded = [], []
            for c, blob in zip(action.commits, blobs, strict=True):
                try:
                    # each blob was verified against c.update_hash on arrival or on its read from the store
                    contribs.append(contribution_from_blob(blob, c.num_samples, base.params, self.task.max_update_norm,
                                                           update_id=c.update_hash))
                except AggregationError as exc:
                    excluded.append(f"0x{c.update_hash.hex()[:12]}:{exc}")
            new, _result = aggregate(RuleSpec(self.task.rule, dict(self.task.rule_params)), base, contribs)
            encoded = encode_model(new)  # encoded and hashed once: the model and blob stores share them
            return new, excluded, encoded, content_id(encoded)

        new, excluded, encoded, h = await self.aggregating.run(compute, limiter=self.train_limiter)
        t_compute = time.monotonic()
        def store() -> None:
            self.models.put_model(new, h)
            self.blobs.put_verified(h, encoded)

        await trio.to_thread.run_sync(store)
        t_store = time.monotonic()
        self.aggregates[action.round] = h
        # Not announced: every honest node computes and serves the same model, and a node that needs it
        # (mismatch, late join, repair) asks every peer (_providers). Ten identical announcements per
        # round cost each node ~10 gossip copies apiece for nothing (DESIGN: models by hash from any peer).
        rec = self.history.setdefault(action.round, RoundRecord(action.round, time.monotonic()))
        rec.local_hash = h
        log.info("event=aggregated round=%d commits=%d excluded=%s model=0x%s ms=base:%.0f,updates:%.0f,compute:%.0f,"
                 "store:%.0f", action.round, len(action.commits), excluded or "[]", h.hex(), 1000 * (t_base - t0),
                 1000 * (t_fetch - t_base), 1000 * (t_compute - t_fetch), 1000 * (t_store - t_compute))
        assert self._nursery is not None
        self._nursery.start_soon(self._score, action.round, new, rec)  # off the critical path

    async def _score(self, round_: int, model: GlobalModel, rec: RoundRecord) -> None:
        """Accuracy of the new model on this node's validation split (and the test set with --eval-test).
        Scoring runs at low priority off the critical path; when it falls behind, only the newest round
        waiting is scored, so the backlog never grows."""
        self._score_wanted = max(self._score_wanted, round_)
        async with self.eval_limiter:
            if round_ < self._score_wanted:
                log.debug("event=score_skipped round=%d newer=%d", round_, self._score_wanted)
                return
            mine = self._my_index()
            val = self.clients[mine].val if mine is not None else None
            if val is not None and len(val):
                rec.val_accuracy = (await self.scoring.run(evaluate, self.task.model, model.params, val)).accuracy
            if self.test_split is not None:
                rec.test_accuracy = (await self.scoring.run(evaluate, self.task.model, model.params,
                                                            self.test_split)).accuracy
        log.info("event=evaluated round=%d val_acc=%s test_acc=%s", round_, rec.val_accuracy, rec.test_accuracy)

    def _my_index(self) -> int | None:
        obs = self.observation
        idx = obs.participant_index if obs is not None else None
        return idx if idx is not None and idx < len(self.clients) else None

    # ---------------------------------------------------------------- RPC

    async def _rpc_node(self, params: Any) -> dict[str, Any]:
        obs = self.observation
        return {
            "address": "0x" + self.address.hex(), "peerId": str(self.p2p.peer_id),
            "listen": self.p2p.listen_addrs(), "peers": len(self.p2p.peers()),
            "height": self.height, "driver": self.driver.committed_height if hasattr(self, "driver") else None,
            "round": obs.round if obs else None, "windowOpen": obs.window_open if obs else None,
            "participantIndex": obs.participant_index if obs else None,
            "validator": obs.validator if obs else None,
            "baseModel": "0x" + obs.base_hash.hex() if obs else None,
            "haveBase": self.models.has_model(obs.base_hash) if obs else False,
            "aggregates": {str(r): "0x" + h.hex() for r, h in sorted(self.aggregates.items())},
            "history": [{"round": rec.round, "localHash": "0x" + rec.local_hash.hex() if rec.local_hash else None,
                         "finalHash": "0x" + rec.final_hash.hex() if rec.final_hash else None,
                         "valAccuracy": rec.val_accuracy, "testAccuracy": rec.test_accuracy,
                         "seconds": rec.seconds} for rec in sorted(self.history.values(), key=lambda x: x.round)],
            "counters": dict(self.counters),
            "p2p": {"gossip": self.p2p.gossip.statistics(), "blobs": self.p2p.blobs.statistics(),
                    "consensus": self.p2p.consensus.statistics(), "peerExchange": self.p2p.peer_exchange.statistics()},
        }


def model_export_bytes(store: ModelStore, h: bytes) -> bytes:
    from swarmnode.node.store import model_to_safetensors

    try:
        return model_to_safetensors(store.get_model(h))
    except NotInStore as exc:
        raise DaemonError(str(exc)) from exc


def setup_logging(level: str, name: str | None = None) -> None:
    prefix = f"[{name}] " if name else ""
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format=f"%(asctime)s {prefix}%(levelname)s %(name)s %(message)s")
    for noisy in ("libp2p", "multiaddr", "async_service", "eth", "trio-websocket"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _ = model_hash  # re-exported for tools
