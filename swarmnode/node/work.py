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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from consensus.executor import Priority
from consensus.service import ChainService
from swarmnode.adversary.participant import ByzantineParticipant
from swarmnode.aggregation.codec import GlobalModel, content_id, decode_model, encode_model
from swarmnode.aggregation.errors import AggregationError
from swarmnode.aggregation.rules import RuleSpec, aggregate
from swarmnode.experiment import ClientData, contribution_from_blob, local_update
from swarmnode.learning.evaluate import evaluate
from swarmnode.learning.tasks import Task, initial_params
from swarmnode.node import txs, views
from swarmnode.node.blobfetch import BlobFetcher
from swarmnode.node.compute import ComputeThreads
from swarmnode.node.machine import Aggregate, Aggregated, CommitCall, FetchModel, ModelReady, Train, Trained
from swarmnode.node.store import CorruptObject, ModelStore, NotInStore
from swarmnode.p2p import P2PNode

log = logging.getLogger("swarmnode.node")
progress_log = logging.getLogger("swarmnode.progress")

HISTORY_ROUNDS = 256  # rounds this node keeps a record of (swarm_node's history); the chain keeps all


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
                 max_samples: int = 2**64, initial: dict[str, Any] | None = None, device: str = "cpu") -> None:
        self.task = task
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
        self._held_out: tuple[bytes, tuple[float, float, int]] | None = None  # last (model hash, score)
        # training runs below the priority of consensus, libp2p and the chain
        self.compute = ComputeThreads(workers=2, niceness=niceness)
        # scoring is for people, never on the round's critical path: one thread at the lowest priority
        self.scoring = ComputeThreads(workers=1, niceness=19 if niceness else 0)
        # aggregating is short and every validator's attestation waits for it: normal priority
        self.aggregating = ComputeThreads(workers=1, niceness=0)
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
        t0 = time.monotonic()
        upd = await self.compute.run(local_update, self.task, model.params, data, action.round,
                                     action.client_index, self.device, limiter=self.train_limiter)
        # capped, not refused by the contract; the simulation reports the same (experiment.Swarm._commits)
        cid, samples = upd.update_id, min(upd.result.num_samples, self.max_samples)
        if samples < upd.result.num_samples:
            log.info("event=samples_capped round=%d trained=%d reported=%d (genesis max_samples)", action.round,
                     upd.result.num_samples, samples)
        if self.byzantine is None:
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
                                  held_out_accuracy=ho_acc, held_out_count=ho_count))

    async def score_held_out(self, model: GlobalModel, client_index: int,
                             h: bytes) -> tuple[float, float, int] | None:
        """The round's base model scored on this node's held-out split, committed with the update:
        (loss, accuracy, examples scored), or None when the node has no held-out split (not scored)."""
        val = self.clients[client_index].val if client_index < len(self.clients) else None
        if val is None or len(val) == 0:
            return None
        if self._held_out is None or self._held_out[0] != h:
            # on the commit's critical path: at training's priority, not the lowest (scoring's), where two
            # busy cores held it back long enough to slow the demo's rounds by half
            result = await self.compute.run(evaluate, self.task.model_spec(), model.params, val,
                                            limiter=self.train_limiter)
            self._held_out = (h, (result.loss, result.accuracy, len(val)))
        return self._held_out[1]

    # ---- step 4 ----

    async def aggregate(self, action: Aggregate) -> Aggregated:
        t0 = time.monotonic()
        base = await self.load_model(action.base_hash)
        t_base = time.monotonic()
        blobs = await self.fetcher.fetch([c.update_hash for c in action.commits])
        t_fetch = time.monotonic()
        task = self.task

        def compute() -> tuple[GlobalModel, list[str], bytes, bytes]:
            contribs, excluded = [], []
            for c, blob in zip(action.commits, blobs, strict=True):
                try:
                    # each blob was verified against c.update_hash on arrival or on its read from the store
                    contribs.append(contribution_from_blob(blob, c.num_samples, base.params, task.max_update_norm,
                                                           update_id=c.update_hash))
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

        def store() -> None:
            self.models.put_model(new, h)
            self.fetcher.store.put_verified(h, encoded)

        await trio.to_thread.run_sync(store)
        t_store = time.monotonic()
        self.history.get(action.round).local_hash = h
        log.info("event=aggregated round=%d commits=%d excluded=%s model=0x%s ms=base:%.0f,updates:%.0f,"
                 "compute:%.0f,store:%.0f", action.round, len(action.commits), excluded or "[]", h.hex(),
                 1000 * (t_base - t0), 1000 * (t_fetch - t_base), 1000 * (t_compute - t_fetch),
                 1000 * (t_store - t_compute))
        return Aggregated(h)

    # ---- step 5 ----

    async def score(self, round_: int, h: bytes, my_index: int | None) -> None:
        """Accuracy of a final model on this node's validation split (and the test set with --eval-test).
        Runs at the lowest priority; when it falls behind, only the newest round waiting is scored."""
        self._score_wanted = max(self._score_wanted, round_)
        async with self.eval_limiter:
            if round_ < self._score_wanted:
                log.debug("event=score_skipped round=%d newer=%d", round_, self._score_wanted)
                return
            model = await self.load_model(h)
            rec = self.history.get(round_)
            val = self.clients[my_index].val if my_index is not None and my_index < len(self.clients) else None
            if val is not None and len(val):
                rec.val_accuracy = (await self.scoring.run(evaluate, self.task.model_spec(), model.params, val)).accuracy
            if self.test_split is not None:
                rec.test_accuracy = (await self.scoring.run(evaluate, self.task.model_spec(), model.params,
                                                            self.test_split)).accuracy
        log.info("event=evaluated round=%d val_acc=%s test_acc=%s", round_, rec.val_accuracy, rec.test_accuracy)

    async def prune(self, final_round: int) -> None:
        """Round `final_round` is final: delete the update blobs of rounds more than keep_update_rounds
        behind it, and the final models (model store and blob store) of rounds more than keep_model_rounds
        behind it. The newest final models stay: late joiners fetch the current base, `model export`
        reads recent ones. Progress survives restarts in <data_dir>/pruned.json."""
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

