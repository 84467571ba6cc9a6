"""RoundWork: carries out the round machine's heavy actions (fetch a model, train, aggregate, score, prune).

Each method does one action and returns the machine's result type, or raises a typed error: the round
loop turns it into ActionFailed (retried, or given up when `retryable` says the input cannot work).
Training and aggregation run in compute threads off the event loop (training at a lower CPU priority,
aggregation at normal priority because every attestation waits for it, scoring at the lowest).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import trio
from eth_utils import keccak

from consensus.executor import Priority
from consensus.service import ChainService
from swarmnode.adversary.participant import ByzantineParticipant
from swarmnode.aggregation.codec import GlobalModel, QTensor, content_id, decode_model, encode_model
from swarmnode.aggregation.errors import AggregationError
from swarmnode.aggregation.exact import round_div
from swarmnode.aggregation.rules import Contribution, RuleSpec, aggregate
from swarmnode.experiment import ClientData, contribution_from_blob, local_update
from swarmnode.learning.evaluate import EvalResult, evaluate
from swarmnode.learning.tasks import Task, initial_params
from swarmnode.node import txs, views
from swarmnode.node.blobfetch import BlobFetcher
from swarmnode.node.compute import ComputeThreads
from swarmnode.node.machine import (
    Aggregate,
    Aggregated,
    CommitCall,
    FetchModel,
    MaskKeysCall,
    ModelReady,
    RevealCall,
    ShareKeyCall,
    Train,
    Trained,
)
from swarmnode.node.secagg_node import RoundKeys, SecAggNode, dealing_may_start, round_keys
from swarmnode.node.store import CorruptObject, ModelStore, NotInStore, atomic_write
from swarmnode.p2p import P2PNode
from swarmnode.privacy import secagg as secagg_lib
from swarmnode.privacy.config import PrivacyConfig, epsilon_to_micro
from swarmnode.privacy.dp import DPError, dp_noise_for, private_generator

log = logging.getLogger("swarmnode.node")
progress_log = logging.getLogger("swarmnode.progress")

SHARE_KEY_WAIT_S = 5  # how long (block time) key posting waits for participants without a share key
DEALING_POLL_S = 0.25  # how often that wait reads the chain again
DEALING_WAIT_LIMIT_S = 30.0  # local seconds after which the wait gives up (the chain made too few blocks)
HISTORY_ROUNDS = 256  # rounds this node keeps a record of (swarm_node's history); the chain keeps all
VAL_SCORES_KEPT = 4  # validation scores remembered (this round's base and the last final models)
VAL_SCORE_WAIT_S = 10.0  # the progress line's score waits this long for the next round's held-out score


class WorkError(Exception):
    """An action cannot complete now; `retryable` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class DamagedModel(WorkError):
    """A stored model failed its hash check; the store set it aside. `model_hash` says which."""

    def __init__(self, model_hash: bytes, message: str) -> None:
        super().__init__(message)
        self.model_hash = model_hash


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


class History:
    """The newest HISTORY_ROUNDS round records (bounded: a node runs for weeks)."""

    def __init__(self, limit: int = HISTORY_ROUNDS) -> None:
        self._records: OrderedDict[int, RoundRecord] = OrderedDict()
        self._limit = limit

    def get(self, round_: int) -> RoundRecord:
        rec = self._records.get(round_)
        if rec is None:
            rec = self._records[round_] = RoundRecord(round_, time.monotonic())
            while len(self._records) > self._limit:
                self._records.popitem(last=False)
        return rec

    def records(self) -> list[RoundRecord]:
        return sorted(self._records.values(), key=lambda x: x.round)

    def progress(self, rec: RoundRecord) -> None:
        rec.seconds = time.monotonic() - rec.started
        acc = f"{rec.val_accuracy * 100:5.1f}%" if rec.val_accuracy is not None else "  n/a"
        test = f" | test acc {rec.test_accuracy * 100:5.1f}%" if rec.test_accuracy is not None else ""
        agree = "" if rec.local_hash is None or rec.final_hash is None else (
            " | agrees" if rec.local_hash == rec.final_hash else " | MISMATCH")
        progress_log.info("round %d final | %d/%d committed | global val acc %s%s | %.1f s | model 0x%s%s",
                          rec.round, rec.commits, rec.participants, acc, test, rec.seconds,
                          (rec.final_hash or b"").hex()[:12], agree)


class RoundWork:
    def __init__(self, *, task: Task, genesis_model_hash: bytes, models: ModelStore, fetcher: BlobFetcher,
                 p2p: P2PNode, service: ChainService, clients: list[ClientData], test_split: Any,
                 history: History, data_dir: Path, niceness: int, keep_update_rounds: int = 16,
                 keep_model_rounds: int = 64, byzantine: ByzantineParticipant | None = None,
                 max_samples: int = 2**64, initial: dict[str, Any] | None = None, device: str = "cpu",
                 privacy: PrivacyConfig | None = None, me: bytes = b"", min_participants: int = 1,
                 secagg: SecAggNode | None = None, observe: Callable[[str, float], None] | None = None) -> None:
        self.task = task
        # metrics: observe("train" | "aggregate", seconds) after each local training and aggregation
        self._observe = observe or (lambda job, seconds: None)
        # secure aggregation: updates are committed masked; only the round's sum is ever unmasked
        self.secagg = secagg
        # (round, our unmasked delta, its LocalUpdate, its epsilon claim): masked again if the key set grows
        self._unmasked: tuple[int, Any, Any, int] | None = None
        # round -> head time at which our key dealing first waited for a participant's share key
        self._dealing_blocked: dict[int, int] = {}
        # differential privacy (genesis [privacy]): noise from this node's own generator, never a public seed
        self.privacy = privacy if privacy is not None and privacy.dp_on else None
        self.me = me
        self.min_participants = min_participants
        self._dp_generator = private_generator() if self.privacy is not None else None
        # updates this node has published under DP, on disk: one whose commit never landed was still seen
        self._dp_marker = data_dir / "dp-releases.json"
        # top-k compression's error feedback: what this node's updates have not sent yet, kept across restarts
        self._residual_file = data_dir / "compression-residual.swnm"
        self._residual: dict[str, Any] | None = None
        # the genesis model's parameters, checked against genesis_model_hash at startup (Node.from_config)
        self._initial = initial
        self.genesis_model_hash = genesis_model_hash
        self.models = models
        self.fetcher = fetcher
        self.p2p = p2p
        self.service = service
        self.clients = clients
        self.test_split = test_split
        self.history = history
        self.prune_marker = data_dir / "pruned.json"
        self.keep_update_rounds = keep_update_rounds  # 0: keep every update blob
        self.keep_model_rounds = keep_model_rounds  # 0: keep every final model
        self.byzantine = byzantine  # tests and benchmarks: this node attacks instead of training honestly
        self.max_samples = max_samples  # the genesis cap on a commit's numSamples (the contract refuses more)
        self.device = device  # where local training runs; aggregation is exact integer arithmetic on the CPU
        # validation scores by (model hash, client index), newest last, and the ones being computed
        self._val_scores: OrderedDict[tuple[bytes, int], EvalResult] = OrderedDict()
        self._val_running: dict[tuple[bytes, int], trio.Event] = {}
        self._val_changed = trio.Event()  # set when a score starts or ends (then replaced)
        # training runs below the priority of consensus, libp2p and the chain
        self.compute = ComputeThreads(workers=2, niceness=niceness, name="train")
        # scoring is for people, never on the round's critical path: one thread at the lowest priority
        self.scoring = ComputeThreads(workers=1, niceness=19 if niceness else 0, name="score")
        # aggregating is short and every validator's attestation waits for it: normal priority
        self.aggregating = ComputeThreads(workers=1, niceness=0, name="aggregate")
        self.train_limiter = trio.CapacityLimiter(1)
        self.eval_limiter = trio.CapacityLimiter(1)
        self._prune_lock = trio.Lock()
        self._score_wanted = -1
        self.counters = {"models_fetched": 0, "update_blobs_pruned": 0, "models_pruned": 0}

    def stop(self) -> bool:
        """Wait for the compute threads' calls in progress (a thread inside torch at exit aborts)."""
        return all([pool.stop() for pool in (self.compute, self.scoring, self.aggregating)])

    # ---- step 1 ----

    async def fetch_model(self, action: FetchModel) -> ModelReady:
        await self.obtain_model(action.round, action.model_hash)
        return ModelReady(action.model_hash)

    async def obtain_model(self, round_: int | None, h: bytes) -> None:
        """G_r by hash into the store: the genesis model is rebuilt locally, any other comes from peers."""
        if h == self.genesis_model_hash:
            model = GlobalModel(self._initial if self._initial is not None else initial_params(self.task))
        else:
            (blob,) = await self.fetcher.fetch([h])
            model = decode_model(blob)
            self.counters["models_fetched"] += 1
        got = await trio.to_thread.run_sync(self.models.put_model, model)
        if got != h:
            raise WorkError(f"model for round {round_} hashes to 0x{got.hex()}, expected 0x{h.hex()}")
        log.info("event=model_obtained round=%s model=0x%s source=%s", round_, h.hex(),
                 "genesis" if h == self.genesis_model_hash else "peers")

    async def load_model(self, h: bytes) -> GlobalModel:
        try:
            return await trio.to_thread.run_sync(self.models.get_model, h)
        except NotInStore as exc:
            raise WorkError(str(exc)) from exc
        except CorruptObject as exc:
            # the same bytes are usually also in the blob store (served to peers): check that copy now so
            # a damaged one is set aside before anyone asks for it; the store quarantined its own copy
            log.error("event=CORRUPT_MODEL model=0x%s error=%r next=refetch_by_hash", h.hex(), str(exc))
            await trio.to_thread.run_sync(self.fetcher.check, h)
            raise DamagedModel(h, str(exc)) from exc

    async def repair_model(self, h: bytes) -> None:
        """Fetch a damaged stored model again from peers, even when the swarm has moved on."""
        await self.obtain_model(None, h)

    # ---- step 2 ----

    async def train(self, action: Train) -> Trained:
        if action.client_index >= len(self.clients):
            raise WorkError(f"no data partition {action.client_index} (the task has {len(self.clients)})", False)
        model = await self.load_model(action.base_hash)
        held_out = await self.score_held_out(model, action.client_index, action.base_hash)
        data = self.clients[action.client_index].train
        if self.byzantine is not None:
            data = self.byzantine.training_data(data)
        if self.secagg is not None and self._unmasked is not None and self._unmasked[0] == action.round:
            return await self._masked_commit(action, self._unmasked[2], self._unmasked[3], held_out)  # remask
        if self.secagg is not None and await trio.to_thread.run_sync(self._announced_masked) == action.round:
            # published a masked update this round, then restarted: another update under the same masks
            # would hand everyone the difference of the two
            raise WorkError(f"a masked update for round {action.round} left this node before it restarted; "
                            f"it sits this round out", retryable=False)
        epsilon_claim = await self._privacy_claim(action.round, len(data)) if self.privacy is not None else 0
        t0 = time.monotonic()
        residual = await trio.to_thread.run_sync(self._load_residual) if self.task.compression_spec().on else None
        upd = await self.compute.run(local_update, self.task, model.params, data, action.round,
                                     action.client_index, self.device, self.privacy if self.byzantine is None else None,
                                     self._dp_generator, self.min_participants, residual, limiter=self.train_limiter)
        self._observe("train", time.monotonic() - t0)
        if upd.residual is not None:
            await trio.to_thread.run_sync(self._store_residual, upd.residual)
        if self.secagg is not None:
            if self.privacy is not None:
                await trio.to_thread.run_sync(self._record_dp_release, action.round)
            self._unmasked = (action.round, upd.result.delta, upd, epsilon_claim)
            return await self._masked_commit(action, upd, epsilon_claim, held_out)
        # capped, not refused by the contract; the simulation reports the same (experiment.Swarm._commits)
        cid, samples = upd.update_id, min(upd.result.num_samples, self.max_samples)
        if samples < upd.result.num_samples:
            log.info("event=samples_capped round=%d trained=%d reported=%d (genesis max_samples)", action.round,
                     upd.result.num_samples, samples)
        if self.byzantine is None:
            if self.privacy is not None:  # counted before it leaves the node: a lost commit still released it
                await trio.to_thread.run_sync(self._record_dp_release, action.round)
            await self.p2p.announce_blob(action.round, upd.blob, cid)
            self.fetcher.remember(cid, upd.blob)
        else:
            sub = self.byzantine.submit(action.round, action.client_index, upd)
            cid, samples = sub.committed_hash, sub.num_samples
            if sub.served is not None:  # stored and served under the committed hash, matching or not
                await self.p2p.announce_blob(action.round, sub.served, cid)
        log.info("event=trained round=%d update=0x%s bytes=%d samples=%d loss=%.4f acc=%.4f seconds=%.2f",
                 action.round, cid.hex(), len(upd.blob), samples, upd.result.loss,
                 upd.result.accuracy, time.monotonic() - t0)
        ho_loss, ho_acc, ho_count = txs.held_out_fields(held_out, self.max_samples)
        return Trained(CommitCall(action.round, cid, samples, txs.fixed(upd.result.loss),
                                  txs.fixed(upd.result.accuracy), held_out_loss=ho_loss,
                                  held_out_accuracy=ho_acc, held_out_count=ho_count, epsilon_spent=epsilon_claim))

    # ---- secure aggregation ----

    async def _round_keys(self, round_: int, *, scan_from: int) -> RoundKeys:
        assert self.secagg is not None
        chain = self.service.chain
        await self.service.run(self.secagg.cache.scan, chain, scan_from)
        return await self.service.run(round_keys, chain, round_)

    async def _scan_start(self, round_: int) -> int:
        """The first block that may hold round `round_`'s key posts: the opening of round - 1."""
        info = await self.service.run(views.round_info, self.service.chain, max(0, round_ - 1))
        return int(info["openBlock"]) if info else 0

    async def _masked_commit(self, action: Train, upd: Any, epsilon_claim: int,
                             held_out: tuple[float, float, int] | None) -> Trained:
        """Mask our update over the round's key set as the chain has it now, announce it, and commit it."""
        assert self.secagg is not None
        view = await self._round_keys(action.round, scan_from=await self._scan_start(action.round))
        ks, rejected, missing = self.secagg.keyset(view)
        if missing:
            raise WorkError(f"bundles of {missing} not read from our blocks yet")
        mine = [p for p in view.posts if p[0] == action.client_index]
        if action.client_index not in ks.entries or not mine:
            raise WorkError(f"we are not in round {action.round}'s key set ({rejected.get(action.client_index, 'no post')})",
                            retryable=False)
        secret = self.secagg.secret_for(action.round, mine[0][2])
        if secret is None:
            raise WorkError(f"the secret of our round-{action.round} key post is gone (restarted after posting?): "
                            f"this round cannot take our update", retryable=False)
        blob = await self.compute.run(self.secagg.masked_blob, upd.result.delta, ks, secret, limiter=self.train_limiter)
        cid = content_id(blob)
        samples = min(upd.result.num_samples, self.max_samples)
        await trio.to_thread.run_sync(self._record_masked, action.round)
        await self.p2p.announce_blob(action.round, blob, cid)
        self.fetcher.remember(cid, blob)
        log.info("event=trained round=%d update=0x%s bytes=%d samples=%d loss=%.4f acc=%.4f masked_over=%d "
                 "key_posts=%d", action.round, cid.hex(), len(blob), samples, upd.result.loss, upd.result.accuracy,
                 len(ks.entries), len(view.posts))
        ho_loss, ho_acc, ho_count = txs.held_out_fields(held_out, self.max_samples)
        return Trained(CommitCall(action.round, cid, samples, txs.fixed(upd.result.loss),
                                  txs.fixed(upd.result.accuracy), held_out_loss=ho_loss, held_out_accuracy=ho_acc,
                                  held_out_count=ho_count, epsilon_spent=epsilon_claim, key_count=len(view.posts)))

    def _announced_masked(self) -> int:
        """The last round this node published a masked update for (-1: none)."""
        assert self.secagg is not None
        try:
            return int(json.loads((self.secagg.dir / "announced.json").read_text())["round"])
        except FileNotFoundError:
            return -1
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WorkError(f"{self.secagg.dir / 'announced.json'} is unreadable ({exc}): fix or remove it",
                            retryable=False) from exc

    def _record_masked(self, round_: int) -> None:
        assert self.secagg is not None
        self.secagg.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.secagg.dir / "announced.json", json.dumps({"round": round_}).encode())

    async def _wait_for_share_keys(self, round_: int, view: RoundKeys) -> RoundKeys:
        """Shares go to the share-key holders on chain when we deal: while an active participant has none,
        give it SHARE_KEY_WAIT_S of block time (`dealing_may_start`), reading the chain again every
        DEALING_POLL_S. Waiting here, not failing the action, matters: a retry's back-off let a participant
        whose share key came last deal, train and commit (freezing the key set without us) before our retry
        came round. A chain that makes no blocks for DEALING_WAIT_LIMIT_S ends the wait with a WorkError."""
        started = trio.current_time()
        self._dealing_blocked = {r: t for r, t in self._dealing_blocked.items() if r >= round_ - 1}
        while len(view.recipients) < view.active:
            info = await self.service.run(views.round_info, self.service.chain, min(round_, view.round))
            opened = int(info["openTime"]) if info else 0
            if round_ not in self._dealing_blocked:
                log.info("event=dealing_waits round=%d without_share_key=%d wait_s=%d", round_,
                         view.active - len(view.recipients), SHARE_KEY_WAIT_S)
            first_blocked = self._dealing_blocked.setdefault(round_, view.head_time)
            if dealing_may_start(view, opened, first_blocked, SHARE_KEY_WAIT_S):
                break
            if trio.current_time() - started > DEALING_WAIT_LIMIT_S:
                raise WorkError(f"{view.active - len(view.recipients)} participants have no share key yet")
            await trio.sleep(DEALING_POLL_S)  # polled: share keys arrive in blocks, read through views
            view = await self._round_keys(round_, scan_from=await self._scan_start(round_))
        return view

    async def secagg_calldata(self, call: ShareKeyCall | MaskKeysCall | RevealCall, my_index: int | None) -> bytes:
        """The calldata of a secure-aggregation transaction, built when it is sent (keys dealt, shares opened)."""
        if self.secagg is None or my_index is None:
            raise WorkError("secure aggregation is off, or this node is not a participant", retryable=False)
        if isinstance(call, ShareKeyCall):
            return self.secagg.share_key_calldata()
        view = await self._round_keys(call.round, scan_from=await self._scan_start(call.round))
        if isinstance(call, MaskKeysCall):
            view = await self._wait_for_share_keys(call.round, view)
            try:
                return await trio.to_thread.run_sync(self.secagg.post_keys_calldata, view, call.round, my_index)
            except secagg_lib.SecAggError as exc:
                raise WorkError(f"cannot deal round {call.round}'s keys: {exc}") from exc
        if self.byzantine is not None and self.byzantine.attack.changes.reveals:
            raise WorkError(f"byzantine ({self.byzantine.attack.name}): withholding our shares of round {call.round}",
                            retryable=False)
        committed = await self.service.run(views.update_committers, self.service.chain, call.round)
        indices = [view.indices[a] for a in committed if a in view.indices]
        if len(indices) < max(2, self.min_participants):  # the contract refuses it too: the "sum" would be one update
            raise WorkError(f"round {call.round} has {len(indices)} commits: nothing is revealed for fewer than "
                            f"{max(2, self.min_participants)}", retryable=False)
        try:
            return await trio.to_thread.run_sync(self.secagg.reveal_calldata, view, indices, my_index)
        except secagg_lib.SecAggError as exc:
            raise WorkError(f"cannot reveal for round {call.round}: {exc}") from exc

    async def _secagg_aggregate(self, action: Aggregate, base: GlobalModel) -> tuple[GlobalModel, list[str], bytes, bytes]:
        """Unmask the round's sum once enough shares are revealed (or, past the reveal deadline, settle on the
        base model: the sum cannot be recovered). The mean of the committed updates is then applied by the
        genesis rule like one update. Waits (polling the chain) while neither is decided."""
        assert self.secagg is not None
        sa = self.secagg
        scan_from = await self._scan_start(action.round)
        blobs = await self.fetcher.fetch([c.update_hash for c in action.commits])
        view = await self._round_keys(action.round, scan_from=scan_from)
        ks, rejected, missing = sa.keyset(view)  # frozen: the round has commits
        if missing:
            raise WorkError(f"bundles of {missing} not read from our blocks yet")
        holders = set().union(*(e.bundle.recipients for e in ks.entries.values())) if ks.entries else set()
        # decided on a reveal list every node sees whole: every share holder revealed, or the deadline passed
        # (the contract takes no reveal after it); never on a prefix that happens to suffice here
        while True:
            revealers, deadline, head_time = await self.service.run(views.reveal_state, self.service.chain,
                                                                    action.round)
            if holders <= set(view.indices.get(a, -1) for a in revealers) or head_time >= deadline:
                break
            await trio.sleep(0.5)
        view = await self._round_keys(action.round, scan_from=scan_from)
        masked, excluded, committed = {}, [], []
        for c, blob in zip(action.commits, blobs, strict=True):
            index = view.indices.get(c.participant)
            if index is None or index not in ks.entries:
                excluded.append(f"0x{c.update_hash.hex()[:12]}:not in the key set")
                continue
            committed.append(index)
            try:
                masked[index] = sa.masked_input(blob)
            except AggregationError as exc:
                excluded.append(f"0x{c.update_hash.hex()[:12]}:{exc}")
        layout = {n: tuple(t.shape) for n, t in base.params.items()}
        try:
            result = await self.aggregating.run(sa.unmask, view, ks, committed, masked, layout,
                                                limiter=self.train_limiter)
        except secagg_lib.SecAggError as exc:  # a reveal on chain not read from our blocks: a node fault
            raise WorkError(f"round {action.round}'s reveals: {exc}") from exc
        if not result.ok:
            log.warning("event=secagg_unrecoverable round=%d reason=%r unrecoverable=%s revealer_problems=%s "
                        "(the round settles on its base model)", action.round, result.reason, result.unrecoverable,
                        result.revealers)
            encoded = encode_model(base)
            return base, [*excluded, f"secagg:{result.reason}"], encoded, content_id(encoded)
        task = self.task

        def compute() -> tuple[GlobalModel, list[str], bytes, bytes]:
            n = len(committed)
            mean = {name: QTensor(round_div(torch.from_numpy(total), n), sa.exponent)
                    for name, total in result.sum.items()}
            # a sum outside n * B means someone masked values beyond the bound (or the sum is wrong): refuse it
            limit = n * secagg_lib.MAX_ABS_VALUE
            if any(int(t.abs().max()) > limit for t in (torch.from_numpy(v) for v in result.sum.values()) if t.numel()):
                raise AggregationError(f"the unmasked sum exceeds {n} x the value bound")
            contrib = Contribution(keccak(b"swarmnode-secagg-mean" + action.round.to_bytes(8, "big")), n, mean)
            new, _ = aggregate(RuleSpec(task.rule, dict(task.rule_params)), base, [contrib])
            encoded = encode_model(new)
            return new, excluded, encoded, content_id(encoded)

        try:
            return await self.aggregating.run(compute, limiter=self.train_limiter)
        except AggregationError as exc:
            log.warning("event=secagg_sum_refused round=%d error=%s (the round settles on its base model)",
                        action.round, exc)
            encoded = encode_model(base)
            return base, [*excluded, f"secagg:{exc}"], encoded, content_id(encoded)

    # ---- compression ----

    def _load_residual(self) -> dict[str, Any] | None:
        """The error-feedback residual of the last top-k update, from memory or disk. A missing or damaged
        file restarts it at zero (only the unsent remainder of past updates is lost, never committed state)."""
        if self._residual is None and self._residual_file.exists():
            try:
                self._residual = dict(decode_model(self._residual_file.read_bytes()).params)
            except (OSError, AggregationError) as exc:
                log.warning("event=compression_residual_unreadable file=%s error=%r next=start_from_zero",
                            self._residual_file, str(exc))
        return self._residual

    def _store_residual(self, residual: dict[str, Any]) -> None:
        self._residual = residual
        atomic_write(self._residual_file, encode_model(GlobalModel(residual)))

    # ---- differential privacy ----

    def _dp_releases(self) -> dict[str, int]:
        try:
            raw = json.loads(self._dp_marker.read_text())
        except FileNotFoundError:
            return {"count": 0, "last_round": -1}
        except (OSError, ValueError) as exc:  # a damaged ledger must not let the node spend more than it did
            raise WorkError(f"{self._dp_marker} is unreadable ({exc}): the node cannot tell how much of its "
                            f"privacy budget it spent; fix or remove it knowingly", retryable=False) from exc
        if not (isinstance(raw, dict) and isinstance(raw.get("count"), int) and isinstance(raw.get("last_round"), int)):
            raise WorkError(f"{self._dp_marker} is malformed: expected count and last_round", retryable=False)
        return raw

    def _record_dp_release(self, round_: int) -> None:
        """Count one more noised update published, durably, before it leaves the node. Every draw of noise
        counts: an update trained again after a restart is a second release, even in the same round."""
        rec = self._dp_releases()
        atomic_write(self._dp_marker, json.dumps({"count": rec["count"] + 1, "last_round": round_}).encode())

    async def _privacy_claim(self, round_: int, n_train: int) -> int:
        """The micro-epsilon this round's commit reports: the accountant's figure after one more release,
        counting every release the chain recorded or this node published (whichever is more). WorkError,
        not retryable, once the genesis budget would be exceeded: the node stops contributing updates."""
        assert self.privacy is not None
        try:
            noise = dp_noise_for(self.privacy, self.task, n_train, min_participants=self.min_participants)
        except DPError as exc:
            raise WorkError(f"differential privacy: {exc}", retryable=False) from exc
        spent, on_chain = await self.service.run(views.privacy_spent, self.service.chain, self.me)
        local = await trio.to_thread.run_sync(self._dp_releases)
        released = max(on_chain, local["count"])
        claim = max(epsilon_to_micro(noise.epsilon_after(released + 1)), spent + 1)
        budget = self.privacy.epsilon_budget_micro
        if claim > budget:
            log.warning("event=privacy_budget_exhausted round=%d releases=%d epsilon_spent=%.6f next=%.6f "
                        "budget=%.6f (this node contributes no more updates)", round_, released, spent / 1e6,
                        claim / 1e6, budget / 1e6)
            raise WorkError(f"privacy budget exhausted: one more update would spend epsilon {claim / 1e6:.4f} "
                            f"of {budget / 1e6:g}", retryable=False)
        log.info("event=privacy_claim round=%d releases=%d epsilon=%.6f budget=%.6f z=%.4f", round_, released + 1,
                 claim / 1e6, budget / 1e6, noise.noise_multiplier)
        return claim

    async def score_held_out(self, model: GlobalModel, client_index: int,
                             h: bytes) -> tuple[float, float, int] | None:
        """The round's base model scored on this node's held-out split, committed with the update:
        (loss, accuracy, examples scored), or None when the node has no held-out split (not scored)."""
        val = self.clients[client_index].val if client_index < len(self.clients) else None
        if val is None or len(val) == 0:
            return None
        result = await self._val_score((h, client_index), model.params, val)
        return result.loss, result.accuracy, len(val)

    async def _val_score(self, key: tuple[bytes, int], params: Any, val: Any) -> EvalResult:
        """A model (by hash) scored on a client's validation split, computed once: round r's final model is
        round r + 1's base, so the held-out score committed with r + 1 and the progress line's score of r
        are one evaluation (each daemon evaluated its split twice per round). Computed here at training's
        priority: it is on the commit's critical path (at scoring's lowest priority, two busy cores held
        it back long enough to slow the demo's rounds by half)."""
        while key not in self._val_scores and key in self._val_running:
            await self._val_running[key].wait()
        cached = self._val_scores.get(key)
        if cached is not None:
            return cached
        done = self._val_running[key] = trio.Event()
        self._val_news()
        try:
            result = await self.compute.run(evaluate, self.task.model_spec(), params, val, limiter=self.train_limiter)
            self._remember_val_score(key, result)
        finally:
            del self._val_running[key]
            done.set()
        return result

    def _remember_val_score(self, key: tuple[bytes, int], result: EvalResult) -> None:
        self._val_scores[key] = result
        while len(self._val_scores) > VAL_SCORES_KEPT:
            self._val_scores.popitem(last=False)
        self._val_news()

    def _val_news(self) -> None:
        """Wake whoever waits for a validation score to start or end."""
        self._val_changed.set()
        self._val_changed = trio.Event()

    # ---- step 4 ----

    async def aggregate(self, action: Aggregate) -> Aggregated:
        t0 = time.monotonic()
        base = await self.load_model(action.base_hash)
        t_base = time.monotonic()
        if self.secagg is not None and action.commits:
            new, excluded, encoded, h = await self._secagg_aggregate(action, base)
            await self._store_aggregate(action, new, encoded, h, excluded)
            return Aggregated(h)
        blobs = await self.fetcher.fetch([c.update_hash for c in action.commits])
        t_fetch = time.monotonic()
        task = self.task

        def compute() -> tuple[GlobalModel, list[str], bytes, bytes]:
            contribs, excluded = [], []
            for c, blob in zip(action.commits, blobs, strict=True):
                try:
                    # each blob was verified against c.update_hash on arrival or on its read from the store
                    contribs.append(contribution_from_blob(blob, c.num_samples, base.params, task.max_update_norm,
                                                           update_id=c.update_hash,
                                                           compression=task.compression_spec()))
                except AggregationError as exc:
                    excluded.append(f"0x{c.update_hash.hex()[:12]}:{exc}")
                except Exception as exc:  # a decoder bug: this input is excluded, not the round (or the node)
                    log.exception("event=update_check_crashed update=0x%s", c.update_hash.hex())
                    excluded.append(f"0x{c.update_hash.hex()[:12]}:unchecked {type(exc).__name__}")
            new, _result = aggregate(RuleSpec(task.rule, dict(task.rule_params)), base, contribs)
            encoded = encode_model(new)  # encoded and hashed once: the model and blob stores share them
            return new, excluded, encoded, content_id(encoded)

        try:
            new, excluded, encoded, h = await self.aggregating.run(compute, limiter=self.train_limiter)
        except AggregationError as exc:  # the rule itself fails on these inputs: every node would
            raise WorkError(f"aggregation rule {task.rule} failed: {exc}", retryable=False) from exc
        t_compute = time.monotonic()
        self._observe("aggregate", t_compute - t_fetch)

        await self._store_aggregate(action, new, encoded, h, excluded, log_it=False)
        t_store = time.monotonic()
        self.history.get(action.round).local_hash = h
        log.info("event=aggregated round=%d commits=%d excluded=%s model=0x%s ms=base:%.0f,updates:%.0f,"
                 "compute:%.0f,store:%.0f", action.round, len(action.commits), excluded or "[]", h.hex(),
                 1000 * (t_base - t0), 1000 * (t_fetch - t_base), 1000 * (t_compute - t_fetch),
                 1000 * (t_store - t_compute))
        return Aggregated(h)

    async def _store_aggregate(self, action: Aggregate, new: GlobalModel, encoded: bytes, h: bytes,
                               excluded: list[str], *, log_it: bool = True) -> None:
        def store() -> None:
            self.models.put_model(new, h)
            self.fetcher.store.put_verified(h, encoded)

        await trio.to_thread.run_sync(store)
        self.history.get(action.round).local_hash = h
        if log_it:
            log.info("event=aggregated round=%d commits=%d excluded=%s model=0x%s secagg=true", action.round,
                     len(action.commits), excluded or "[]", h.hex())

    # ---- step 5 ----

    async def score(self, round_: int, h: bytes, my_index: int | None) -> None:
        """Accuracy of a final model on this node's validation split (and the test set with --eval-test).
        Runs at the lowest priority; when it falls behind, only the newest round waiting is scored. The
        validation score is the next round's held-out score of the same model when this node trains it
        (waited for up to VAL_SCORE_WAIT_S), otherwise computed here."""
        self._score_wanted = max(self._score_wanted, round_)
        async with self.eval_limiter:
            if round_ < self._score_wanted:
                log.debug("event=score_skipped round=%d newer=%d", round_, self._score_wanted)
                return
            rec = self.history.get(round_)
            val = self.clients[my_index].val if my_index is not None and my_index < len(self.clients) else None
            model: GlobalModel | None = None
            if val is not None and len(val):
                assert my_index is not None
                result = await self._shared_val_score((h, my_index))
                if result is None:
                    model = await self.load_model(h)
                    result = await self.scoring.run(evaluate, self.task.model_spec(), model.params, val)
                    self._remember_val_score((h, my_index), result)
                rec.val_accuracy = result.accuracy
            if self.test_split is not None:
                model = model if model is not None else await self.load_model(h)
                rec.test_accuracy = (await self.scoring.run(evaluate, self.task.model_spec(), model.params,
                                                            self.test_split)).accuracy
        log.info("event=evaluated round=%d val_acc=%s test_acc=%s", round_, rec.val_accuracy, rec.test_accuracy)

    async def _shared_val_score(self, key: tuple[bytes, int]) -> EvalResult | None:
        """The held-out score of `key` once the next round's training computes it (it starts as the round
        opens, when this final model is scored), or None if it does not start within VAL_SCORE_WAIT_S."""
        with trio.move_on_after(VAL_SCORE_WAIT_S):
            while key not in self._val_scores and key not in self._val_running:
                await self._val_changed.wait()
            while key not in self._val_scores and key in self._val_running:
                await self._val_running[key].wait()
        return self._val_scores.get(key)

    async def prune(self, final_round: int) -> None:
        """Round `final_round` is final: delete the update blobs of rounds more than keep_update_rounds
        behind it, and the final models (model store and blob store) of rounds more than keep_model_rounds
        behind it. The newest final models stay: late joiners fetch the current base, `model export`
        reads recent ones. Progress survives restarts in <data_dir>/pruned.json."""
        if self.secagg is not None:  # the round is final: its masking secrets are no longer needed
            old = await self.service.run(views.round_info, self.service.chain, max(0, final_round - 4))
            await trio.to_thread.run_sync(self.secagg.forget_before, final_round + 1,
                                          int(old["openBlock"]) if old else None)
        async with self._prune_lock:
            marker = self._read_marker()
            chain = self.service.chain
            plan = prune_plan(marker, final_round, self.keep_update_rounds, self.keep_model_rounds)
            if plan is None:
                return
            u0, updates_through, m0, models_through, kept_from = plan

            def collect() -> tuple[list[bytes], list[bytes]]:
                updates = [h for q in range(u0, updates_through + 1) for h in views.update_hashes(chain, q)]
                if models_through < m0:
                    return updates, []
                # a skipped round's final hash is its base, the round before's: a model still referred to
                # by a kept round is kept. Only the first kept round can refer to a pruned one (a run of
                # skipped rounds passes through it), so one read suffices: reading all keep_model_rounds
                # kept rounds every round cost ~1 s of executor time per round (the soak's rounds went
                # from 2 s to 3 s once pruning of models began at round 65)
                kept = {h for _, h in views.final_hashes(chain, kept_from, kept_from)}
                old = {h for _, h in views.final_hashes(chain, m0, models_through)}
                return updates, sorted(old - kept)

            updates, models = await self.service.run(collect, priority=Priority.NODE)
            removed_updates = removed_models = 0
            for cid in updates:
                self.fetcher.forget(cid)
                removed_updates += await trio.to_thread.run_sync(self.fetcher.store.remove, cid)
            for h in models:
                self.fetcher.forget(h)
                removed_models += await trio.to_thread.run_sync(self.models.remove_model, h)
                await trio.to_thread.run_sync(self.fetcher.store.remove, h)
            self._write_marker({"through": max(updates_through, marker["through"]),
                                "models_through": max(models_through, marker["models_through"])})
            self.counters["update_blobs_pruned"] += removed_updates
            self.counters["models_pruned"] += removed_models
            log.info("event=pruned final_round=%d update_blobs=%d (through round %d) models=%d (through round %d)",
                     final_round, removed_updates, updates_through, removed_models, models_through)

    def _read_marker(self) -> dict[str, int]:
        try:
            raw = json.loads(self.prune_marker.read_text())
            return {"through": int(raw["through"]), "models_through": int(raw.get("models_through", -1))}
        except (OSError, ValueError, KeyError, TypeError):
            return {"through": -1, "models_through": -1}

    def _write_marker(self, marker: dict[str, int]) -> None:
        tmp = self.prune_marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(marker) + "\n")
        os.replace(tmp, self.prune_marker)


PRUNE_CHUNK_ROUNDS = 64  # rounds of backlog one prune pass covers (one executor job, then the next round)


def prune_plan(marker: dict[str, int], final_round: int, keep_updates: int, keep_models: int,
               chunk: int = PRUNE_CHUNK_ROUNDS) -> tuple[int, int, int, int, int] | None:
    """What one prune pass after `final_round` covers: (u0, updates_through, m0, models_through, kept_from),
    or None when nothing is due. A node with a long backlog (first start with pruning, a marker lost)
    works through it `chunk` rounds at a time, one pass per finalized round, instead of reading every
    round's commits in one job that would hold the chain executor for seconds. Models of rounds from
    kept_from on stay (keep 0 = keep everything)."""
    u0, m0 = marker["through"] + 1, marker["models_through"] + 1
    updates_target = final_round - keep_updates if keep_updates else -1
    models_target = final_round - keep_models if keep_models else -1
    updates_through = min(updates_target, u0 + chunk - 1)
    models_through = min(models_target, m0 + chunk - 1)
    if updates_through < u0 and models_through < m0:
        return None
    return u0, updates_through, m0, models_through, models_target + 1

