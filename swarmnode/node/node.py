"""Node: builds every piece of a swarm node from its config and runs them until SIGINT/SIGTERM.

Who owns what (README "Inside a node" has the picture):
- ChainExecutor (consensus/executor.py): the one thread that runs py-evm and the tx pool. The consensus
  driver, chain sync, JSON-RPC, the round reader, the transaction sender and gossip ingestion submit
  work to it, by priority; none of that work waits for the network.
- ConsensusDriver (consensus/driver.py): Tendermint over direct libp2p streams; SwarmApplication below is
  its Application (the execution chain plus the data-availability rule and the node's pending work).
- P2PNode (swarmnode/p2p): host, gossip topics, blob exchange, chain sync, peer exchange.
- BlobFetcher: update and model blobs from peers, the instant "do we hold every committed update?".
- TxIngest: gossiped transactions into the pool (a commit once its update is held).
- TxSender: the node's own transactions, followed until included or lost.
- RoundLoop + machine: the round protocol (a pure state machine and the shell that feeds it).
- RoundWork: training, aggregation, scoring, pruning, model fetches.
- RpcServer (consensus/rpc.py): eth_*, swarm_* and swarm_node on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, overload

import trio

from consensus.chain import ExecutionChain
from consensus.chain_app import ChainApplication
from consensus.driver import ConsensusDriver, DriverConfig
from consensus.engine.types import TimeoutConfig
from consensus.executor import ChainExecutor, Priority
from consensus.genesis import Genesis, load_genesis
from consensus.interfaces import Verdict
from consensus.messages import MAX_MESSAGE_BYTES
from consensus.rpc import RpcServer
from consensus.service import ChainService, make_pool
from consensus.signing_record import SigningRecord
from consensus.txpool import TxPool
from swarmnode import progress
from swarmnode.adversary.participant import ByzantineParticipant
from swarmnode.experiment import ClientData
from swarmnode.learning.tasks import Task
from swarmnode.node import machine, txs
from swarmnode.node.blobfetch import BlobFetcher
from swarmnode.node.config import NodeConfig
from swarmnode.node.ingest import TxIngest
from swarmnode.node.keys import address_of, load_key
from swarmnode.node.metrics import MetricsError, NodeMetrics, best_known_height, read_node, start_server
from swarmnode.node.roundloop import RoundLoop
from swarmnode.node.secagg_node import SecAggNode
from swarmnode.node.store import ModelStore
from swarmnode.node.txsender import TxSender
from swarmnode.node.work import History, RoundWork
from swarmnode.p2p import (
    CONSENSUS,
    TX,
    UPDATES,
    DirectoryBlobStore,
    P2PConfig,
    P2PError,
    P2PNode,
    TopicPolicy,
)
from swarmnode.p2p.consensus_net import height_window
from swarmnode.privacy.config import PrivacyConfig, PrivacyConfigError

log = logging.getLogger("swarmnode.node")


class NodeError(Exception):
    """The node cannot start: bad genesis, key, data dir or dataset (the message says which)."""


class SwarmApplication(ChainApplication):
    """The execution chain as the driver's Application, with the node's rules:
    - data availability: a block is valid only if this node holds every update it commits to. The check
      runs on the chain executor and answers at once (`held(cid)` is a file stat); the waiting happened
      before (the BlobFetcher prefetches on gossip, and the driver's prepare step waits for a proposal's
      updates on the event loop);
    - pending work (has_pending_transactions, asked on the event loop): pool transactions, plus whatever
      `pending_work()` says (commits whose update is being fetched, a round deadline a block would pass);
    - proposing: the round's own calls to SwarmRounds first (txs.round_priority), then the rest by tip,
      within the chain's execution-time budget per block (consensus.chain.BLOCK_CPU_BUDGET_S)."""

    def __init__(self, chain: ExecutionChain, coinbase: bytes, pool: TxPool, held: Callable[[bytes], bool],
                 pending_work: Callable[[], bool]) -> None:
        super().__init__(chain, coinbase, pool=pool, availability=self._availability)
        self._held = held
        self._pending_work = pending_work
        # whether an address is an active participant, from a cache (set by the node to its Registry's)
        self.participant: Callable[[bytes], bool] = lambda address: False
        self.counters = {"da_rejected": 0}

    def propose_block(self, height: int, round_: int, timestamp: int) -> bytes:
        """The round's own calls first (txs.round_priority, and a node's cancel of a stuck nonce), but only
        from the swarm's members: a validator of this height or an active participant. A stranger's commit or attestation selector
        buys no rank (it would revert anyway), so a flood of them cannot push the members' calls out."""
        validators = {address for address, stake in self.chain.reader.validator_set_for_height(height) if stake > 0}
        participant = self.participant

        def rank(tx: Any, sender: bytes) -> int:
            if not (sender in validators or participant(sender)):
                return 0
            # a member's zero-value transfer to itself is a node cancelling a stuck nonce (txs.sign_cancel):
            # its later round calls wait behind it
            return 1 if txs.round_priority(tx) or (bytes(tx.to) == sender and tx.value == 0) else 0

        self.priority = rank
        return super().propose_block(height, round_, timestamp)

    def _availability(self, height: int, block_txs: Sequence[Any]) -> Verdict:
        missing = [c.update_hash for c in txs.commits_in(block_txs) if not self._held(c.update_hash)]
        if missing:
            self.counters["da_rejected"] += 1
            return Verdict(False, f"committed update 0x{missing[0].hex()} not held ({len(missing)} missing)")
        return Verdict(True)

    def has_pending_transactions(self) -> bool:
        return len(self.pool or ()) > 0 or self._pending_work()


class OwnData(Sequence[ClientData]):
    """A node training on its own data: the same data whatever participant index the chain gives it (a
    benchmark task instead gives index i the i-th slice of the dataset, and none beyond num_clients)."""

    def __init__(self, data: ClientData) -> None:
        self.data = data

    def __len__(self) -> int:
        return 2**31  # any index the contract hands out

    @overload
    def __getitem__(self, index: int) -> ClientData: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ClientData]: ...
    def __getitem__(self, index: int | slice) -> ClientData | Sequence[ClientData]:
        if isinstance(index, slice):
            raise TypeError("OwnData cannot be sliced")
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.data


def local_client(task: Task, cfg: NodeConfig) -> ClientData:
    """The node's own data, checked against the genesis schema, split into training and held-out rows;
    NodeError names the mismatch (the node refuses to start)."""
    from swarmnode.learning.errors import LearningError
    from swarmnode.learning.localdata import holdout_split, load_local

    if cfg.local_data is None:
        raise NodeError(f"the task trains on each node's own data (task.dataset = {task.dataset!r}): set "
                        "[learning] data = \"PATH\" in the node config (`swarmnode data check` shows what it finds)")
    schema = task.schema()
    assert schema is not None
    try:
        local = load_local(task.dataset, cfg.local_data, schema)
    except LearningError as exc:
        raise NodeError(f"local data {cfg.local_data} does not match the genesis: {exc}") from None
    for warning in local.warnings:
        log.warning("event=local_data_warning %s", warning)
    train, held_out = holdout_split(local.split, cfg.holdout_fraction, task.seed)
    if len(train) == 0:
        raise NodeError(f"local data {cfg.local_data}: nothing left to train on after holding out "
                        f"{cfg.holdout_fraction:.0%}")
    log.info("event=local_data path=%s train=%d held_out=%d", cfg.local_data, len(train), len(held_out))
    return ClientData(0, train, held_out)


def training_device(wanted: str) -> str:
    """"cpu", "cuda", or "auto" (CUDA when torch sees a GPU); NodeError when "cuda" is asked for and absent."""
    import torch

    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise NodeError("[learning] device = \"cuda\", but torch sees no CUDA device (use \"auto\" or \"cpu\")")
    return wanted


class Node:
    """`Node.from_config(cfg)` then `await node.run()` (returns on SIGINT/SIGTERM or cancellation)."""

    def __init__(self, cfg: NodeConfig, genesis: Genesis, task: Task, secret: bytes, chain: ExecutionChain,
                 clients: Sequence[Any], test_split: Any, byzantine: ByzantineParticipant | None = None,
                 initial: dict[str, Any] | None = None, device: str = "cpu",
                 privacy: PrivacyConfig | None = None) -> None:
        self.cfg = cfg
        self.genesis = genesis
        self.task = task
        self.address = address_of(secret)
        self.chain = chain
        self.executor = ChainExecutor()
        self.pool = make_pool(chain)
        self.service = ChainService(chain, self.pool, executor=self.executor, on_transaction=self._on_rpc_tx)
        self.models = ModelStore(cfg.store_dir)
        self.blob_store = DirectoryBlobStore(cfg.blob_dir)
        self.app = SwarmApplication(chain, self.address, self.pool, held=self.blob_store.has,
                                    pending_work=self._pending_work)
        p2p_cfg = P2PConfig(secret=secret, chain_id=genesis.chain_id, genesis_hash=chain.genesis_hash,
                            listen_addrs=cfg.listen, bootstrap=cfg.bootstrap, capture_dir=cfg.capture_traffic)
        if cfg.capture_traffic is not None:
            log.warning("event=traffic_capture dir=%s (every byte exchanged with peers, in plaintext, is written "
                        "there: --capture-traffic)", cfg.capture_traffic)
        # only the validators' signed frames get past the p2p layer (to the driver, or relayed): the
        # driver is built below, hence the late lookup
        consensus_policy = TopicPolicy(MAX_MESSAGE_BYTES, window=height_window(lambda: self.chain.tip.height),
                                       known_sender=lambda address: self.driver.is_validator(address))
        self.p2p = P2PNode(p2p_cfg, store=self.blob_store, head_height=lambda: self.chain.tip.height,
                           policies={CONSENSUS: consensus_policy}, app=self.app, app_runner=self._sync_runner)
        self.metrics = NodeMetrics()  # Prometheus; served by run() (swarmnode/node/metrics.py)
        self.metrics_server: Any = None
        self.fetcher = BlobFetcher(self.p2p, self.blob_store, cfg.blob_dir, cfg.data_dir / "corrupt-blobs",
                                   observe=self.metrics.observe_fetch)
        c = genesis.consensus
        dcfg = DriverConfig(
            chain_id=genesis.chain_id,
            timeouts=TimeoutConfig(propose=c.propose_timeout_ms / 1000, propose_delta=c.timeout_delta_ms / 1000,
                                   prevote=c.prevote_timeout_ms / 1000, prevote_delta=c.timeout_delta_ms / 1000,
                                   precommit=c.precommit_timeout_ms / 1000,
                                   precommit_delta=c.timeout_delta_ms / 1000),
            block_interval=c.block_interval_ms / 1000,
            empty_block_interval=c.empty_block_interval_ms / 1000,
        )
        # every node has its key in the driver: the engine votes only at heights where it holds stake, so a
        # node that deposits later becomes a voting validator at the next epoch without a restart
        self.driver = ConsensusDriver(dcfg, self.app, self.p2p.consensus, secret,
                                      SigningRecord.open(cfg.signing_record), app_runner=self._consensus_runner,
                                      prepare_block=self._prepare_block)
        self.sender = TxSender(secret, self.address, genesis.chain_id, self.service,
                               publish=self._publish_tx, notify=self.driver.notify_pending)
        self.ingest = TxIngest(self.p2p.gossip, self.service, self.fetcher, self.driver.notify_pending,
                               current_round=self._current_round)
        self.app.participant = self.ingest.registry.cached_active
        self.history = History()
        self.work = RoundWork(task=task, genesis_model_hash=genesis.genesis_model_hash, models=self.models,
                              fetcher=self.fetcher, p2p=self.p2p, service=self.service, clients=clients,
                              test_split=test_split, history=self.history, data_dir=cfg.data_dir,
                              niceness=cfg.compute_niceness, keep_update_rounds=cfg.keep_update_rounds,
                              keep_model_rounds=cfg.keep_model_rounds, byzantine=byzantine,
                              max_samples=genesis.rounds.max_samples, initial=initial, device=device,
                              privacy=privacy, me=self.address, min_participants=genesis.rounds.min_participants,
                              secagg=(SecAggNode(key=secret, chain_id=genesis.chain_id, privacy=privacy,
                                                 data_dir=cfg.data_dir)
                                      if privacy is not None and privacy.secure_aggregation else None),
                              observe=self.metrics.observe_work)
        self.loop = RoundLoop(config=machine.MachineConfig(num_clients=len(clients)),
                              address=self.address, service=self.service, work=self.work, sender=self.sender,
                              models=self.models, history=self.history, wait_height=self.driver.wait_height)
        self.rpc = RpcServer(self.service, host=cfg.rpc_host, port=cfg.rpc_port)
        self.rpc.register_method("swarm_node", self._rpc_node)
        self.metrics.watch(lambda: read_node(self))

    @classmethod
    def from_config(cls, cfg: NodeConfig, *, evaluate_test: bool = False, byzantine: str | None = None) -> Node:
        """Read the genesis, key and dataset and open the chain; NodeError says what is wrong.
        `byzantine`: an attack spec (tests and benchmarks): this node attacks instead of training honestly."""
        from swarmnode.adversary.attacks import AttackError
        from swarmnode.experiment import build_clients
        from swarmnode.learning.data import load_dataset
        from swarmnode.learning.errors import LearningError
        from swarmnode.learning.tasks import checked_initial_params

        try:
            genesis = load_genesis(cfg.genesis)
        except Exception as exc:  # GenesisError and I/O errors: both are the user's to fix
            raise NodeError(f"genesis {cfg.genesis}: {exc}") from exc
        task = Task.from_dict(genesis.task)
        try:
            privacy = PrivacyConfig.from_dict(genesis.privacy)
        except PrivacyConfigError as exc:
            raise NodeError(f"genesis {cfg.genesis}: {exc}") from None
        if privacy.secure_aggregation and genesis.rounds.min_participants < 2:
            raise NodeError(f"genesis {cfg.genesis}: secure aggregation needs rounds.min_participants >= 2")
        if privacy.secure_aggregation and task.rule not in ("fedavg", "fedavgm"):
            raise NodeError(f"genesis {cfg.genesis}: rule {task.rule!r} needs individual updates, but secure "
                            f"aggregation reveals only their sum: use fedavg or fedavgm")
        if privacy.secure_aggregation and task.compression_spec().on:
            raise NodeError(f"genesis {cfg.genesis}: task.compression cannot be used with secure aggregation "
                            f"(masks cover every coordinate at full width); remove one of them")
        try:
            attacker = ByzantineParticipant.from_spec(byzantine, task.seed) if byzantine else None
        except AttackError as exc:
            raise NodeError(f"--byzantine: {exc}") from None
        secret = load_key(cfg.key_file)
        import torch

        torch.set_num_threads(cfg.torch_threads)
        device = training_device(cfg.device)
        try:  # a node that would start from other initial weights than everyone else's must not join
            initial = checked_initial_params(task, genesis.genesis_model_hash, Path(cfg.genesis).resolve().parent)
        except LearningError as exc:
            raise NodeError(f"the genesis model: {exc}") from None
        test_split = None
        clients: Sequence[ClientData]
        if task.is_local():
            clients = OwnData(local_client(task, cfg))
        else:
            dataset = load_dataset(task.dataset, cfg.dataset_dir)
            clients = build_clients(task, dataset)
            capped = {i: len(c.train) for i, c in enumerate(clients) if len(c.train) > genesis.rounds.max_samples}
            if capped:  # e.g. a genesis made for equal shares whose task was changed to an unequal partition
                log.warning("event=shares_above_max_samples max_samples=%d shares=%s (these commits report "
                            "max_samples: rule weights and rewards use it)", genesis.rounds.max_samples, capped)
            test_split = dataset.test if evaluate_test else None
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            chain = ExecutionChain.open(cfg.chain_dir, genesis)
        except Exception as exc:
            raise NodeError(f"cannot open the chain in {cfg.chain_dir}: {exc}") from exc
        try:
            return cls(cfg, genesis, task, secret, chain, clients, test_split, attacker, initial, device, privacy)
        except BaseException:
            chain.close()
            raise

    # ---- running ----

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:  # before anything starts: a bad metrics address stops the node with a clear error
            self.metrics_server = start_server(self.metrics.registry, self.cfg.metrics_addr)
        except MetricsError as exc:
            self.chain.close()
            raise NodeError(str(exc)) from None
        try:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with self.executor.running(final=self.chain.close), trio.open_nursery() as root:
                    root.start_soon(self._on_signals, signals, root.cancel_scope)
                    await self._serve(task_status)
                    root.cancel_scope.cancel()
        finally:
            if not self.work.stop():
                log.warning("event=compute_threads_still_running (exiting anyway)")
            if self.metrics_server is not None:
                self.metrics_server.stop()
            log.info("event=stopped address=0x%s", self.address.hex())

    async def _on_signals(self, signals: Any, scope: trio.CancelScope) -> None:
        async for signum in signals:  # keeps receiving: a second signal must not kill a clean shutdown
            log.info("event=shutdown signal=%s", signal.Signals(signum).name)
            scope.cancel()

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        async with self.p2p.run(), trio.open_nursery() as nursery:
            port = await nursery.start(self.rpc.serve)
            self._write_info(port)
            await nursery.start(self.fetcher.run)
            await nursery.start(self.ingest.run)
            nursery.start_soon(self._drain_updates)
            await self._initial_sync()
            await nursery.start(self.driver.run)
            await nursery.start(self.loop.run)
            log.info("event=started address=0x%s peer_id=%s height=%d rpc=%s:%d listen=%s metrics=%s",
                     self.address.hex(), self.p2p.peer_id, self.chain.tip.height, self.cfg.rpc_host, port,
                     ",".join(self.p2p.listen_addrs()), self._metrics_url())
            task_status.started()
            await trio.sleep_forever()

    def _current_round(self) -> int | None:
        obs = self.loop.observation
        return obs.round if obs is not None else None

    def _pending_work(self) -> bool:
        return self.fetcher.awaiting > 0 or self.loop.block_due(time.time())

    async def _prepare_block(self, height: int, block: bytes) -> None:
        """Before validating a proposal (event loop; the driver bounds the wait): its updates, fetched."""
        try:
            block_txs = self.chain.decode_block_transactions(block)
        except Exception:  # not a block: validation says so
            return
        cids = [c.update_hash for c in txs.commits_in(block_txs)]
        if cids:
            await self.fetcher.wait_held(cids)

    async def _consensus_runner(self, fn: Any, *args: Any) -> Any:
        return await self.executor.run(fn, *args, priority=Priority.CONSENSUS)

    async def _sync_runner(self, fn: Any, *args: Any) -> Any:
        return await self.executor.run(fn, *args, priority=Priority.SYNC)

    async def _publish_tx(self, raw: bytes) -> None:
        await self.p2p.gossip.publish(TX, raw)

    async def _on_rpc_tx(self, raw: bytes) -> None:
        """A transaction admitted through eth_sendRawTransaction: gossip it, wake the driver."""
        self.driver.notify_pending()
        await self._publish_tx(raw)

    async def _drain_updates(self) -> None:
        """Announcements register providers inside P2PNode; the channel itself must still be drained."""
        async for _msg in self.p2p.gossip.channel(UPDATES):
            pass

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
            with progress.polled_bar("syncing the chain from peers", self._sync_progress, progress.wanted()):
                reached = await self.p2p.catch_up()
        except P2PError as exc:
            log.warning("event=sync_failed error=%r", str(exc))
            return
        log.info("event=synced height=%d", reached)

    def _sync_progress(self) -> tuple[int, int]:
        """(our height, the head peers stated) for the sync bar (read from rich's thread: both are snapshots)."""
        return self.chain.tip.height, best_known_height(self)

    def _write_info(self, rpc_port: int) -> None:
        info = {"pid": os.getpid(), "address": "0x" + self.address.hex(), "peer_id": str(self.p2p.peer_id),
                "rpc": f"http://{self.cfg.rpc_host}:{rpc_port}", "listen": self.p2p.listen_addrs(),
                "metrics": self._metrics_url()}
        tmp = self.cfg.info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, self.cfg.info_file)

    def _metrics_url(self) -> str | None:
        return self.metrics_server.url if self.metrics_server is not None else None

    # ---- RPC ----

    async def _rpc_node(self, params: Any) -> dict[str, Any]:
        obs = self.loop.observation
        best = best_known_height(self)
        return {
            "address": "0x" + self.address.hex(), "peerId": str(self.p2p.peer_id),
            "listen": self.p2p.listen_addrs(), "peers": len(self.p2p.peers()),
            "height": self.chain.tip.height, "driver": self.driver.committed_height,
            "bestKnownHeight": best, "syncLag": max(0, best - self.chain.tip.height), "metrics": self._metrics_url(),
            "consensus": dataclasses.asdict(self.driver.statistics()),
            "round": obs.round if obs else None, "windowOpen": obs.window_open if obs else None,
            "closeTime": obs.close_time if obs else None, "headTime": obs.head_time if obs else None,
            "participantIndex": obs.participant_index if obs else None,
            "active": obs.active if obs else None, "expected": obs.expected if obs else None,
            "validator": obs.validator if obs else None,
            "baseModel": "0x" + obs.base_hash.hex() if obs else None,
            "haveBase": self.models.has_model(obs.base_hash) if obs else False,
            "aggregates": {str(r): "0x" + h.hex() for r, h in sorted(self.loop.aggregates.items())},
            "history": [{"round": rec.round, "localHash": "0x" + rec.local_hash.hex() if rec.local_hash else None,
                         "finalHash": "0x" + rec.final_hash.hex() if rec.final_hash else None,
                         "valAccuracy": rec.val_accuracy, "testAccuracy": rec.test_accuracy,
                         "seconds": rec.seconds} for rec in self.history.records()],
            "counters": {**self.loop.counters, **self.work.counters, **self.app.counters,
                         "blob_bytes_fetched": self.fetcher.counters["bytes_fetched"]},
            "rounds": self.loop.statistics(),
            "txs": self.sender.statistics(),
            "privacy": dict(self.genesis.privacy),  # the genesis [privacy] table
            "ingest": self.ingest.statistics(),
            "fetcher": self.fetcher.statistics(),
            "executor": self.executor.statistics(),
            "chainCache": self.chain.cache_statistics(),
            "pool": self.pool.statistics(),
            "p2p": {"gossip": self.p2p.gossip.statistics(), "blobs": self.p2p.blobs.statistics(),
                    "consensus": self.p2p.consensus.statistics(), "peerExchange": self.p2p.peer_exchange.statistics(),
                    "pubsub": self.p2p.host.pubsub_view()},
        }


class AddConnFailureFilter(logging.Filter):
    """py-libp2p 0.8.1's Swarm.add_conn logs every failed connection set-up as a warning carrying a
    formatted traceback in its message ("[ADDCONN_FAIL] ... %r\n%s"), a trio.Cancelled included: a peer
    cut off by a partition, or a connection torn down at shutdown. Keep the line and the exception's
    repr, drop the library's traceback (a node log holds a traceback only for a fault of its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (isinstance(record.msg, str) and record.msg.startswith("[ADDCONN_FAIL]") and isinstance(args, tuple)
                and len(args) == 3):
            record.msg = "add_conn failed for peer %s: %r (py-libp2p's traceback left out)"
            record.args = args[:2]
        return True


def setup_logging(level: str, name: str | None = None) -> None:
    prefix = f"[{name}] " if name else ""
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format=f"%(asctime)s {prefix}%(levelname)s %(name)s %(message)s")
    for noisy in ("libp2p", "multiaddr", "async_service", "eth", "trio-websocket"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    swarm_log = logging.getLogger("libp2p.network.swarm")
    if not any(isinstance(f, AddConnFailureFilter) for f in swarm_log.filters):
        swarm_log.addFilter(AddConnFailureFilter())
