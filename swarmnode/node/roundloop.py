"""RoundLoop: the shell around the round machine. It turns chain heads, finished work, transaction
outcomes and time into events, steps the machine (machine.step) and carries out the actions it returns.

One task owns the machine's state and steps it; every action runs in a task of its own and reports back
through a bounded channel, so one failing action (bad input, a peer that never answers, a bug) costs
that action a retry and never the daemon: expected failures are typed errors, logged as warnings;
anything else is logged with its traceback (a bug to fix) and retried like the rest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from consensus.chain import ExecutionChain
from consensus.executor import Priority
from consensus.service import ChainService
from consensus.txpool import TxRejected
from swarmnode.node import machine as m
from swarmnode.node import txs, views
from swarmnode.node.store import ModelStore, StoreError
from swarmnode.node.txsender import Included, TxSender
from swarmnode.node.work import DamagedModel, History, RoundWork, WorkError
from swarmnode.p2p import P2PError

log = logging.getLogger("swarmnode.node")

POLL_INTERVAL = 0.25  # the chain is looked at on every commit, and at least this often (heads from sync)
EXPECTED_FAILURES = (WorkError, P2PError, StoreError, TxRejected, trio.TooSlowError)


class RoundLoop:
    def __init__(self, *, config: m.MachineConfig, address: bytes, service: ChainService, work: RoundWork,
                 sender: TxSender, models: ModelStore, history: History,
                 wait_height: Callable[[int], Awaitable[None]]) -> None:
        self.address = address
        self.service = service
        self.work = work
        self.sender = sender
        self.models = models
        self.history = history
        self._wait_height = wait_height
        self.state = m.initial_state(config)
        self.reader = views.RoundReader(address)
        self._send, self._recv = trio.open_memory_channel[m.Event](256)
        self._nursery: trio.Nursery | None = None
        # a transaction's outcome (from _watch_chain) must never reach the machine before the ActionDone
        # that says it was sent: held across send + ActionDone and across check + outcomes
        self._tx_order = trio.Lock()
        self._warned_no_data = False
        self.counters = {"mismatches": 0, "actions_failed": 0, "actions_crashed": 0, "gave_up": 0,
                         "tx_reverted": 0, "attest_late": 0, "attest_full_gas": 0, "events": 0,
                         "watch_crashed": 0}

    @property
    def chain(self) -> ExecutionChain:
        return self.service.chain

    @property
    def observation(self) -> m.RoundObservation | None:
        return self.state.obs

    @property
    def aggregates(self) -> dict[int, bytes]:
        return dict(self.state.aggregates)

    # ---- running ----

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_chain)
            task_status.started()
            await self._step_forever()

    async def _step_forever(self) -> None:
        while True:
            wake = self.state.next_wakeup()
            with trio.move_on_at(wake if wake is not None else math.inf) as scope:
                event = await self._recv.receive()
            if scope.cancelled_caught:
                event = m.DeadlinePassed(trio.current_time())
            self.counters["events"] += 1
            self.state, actions = m.step(self.state, event)
            for action in actions:
                self._carry_out(action)

    async def _watch_once(self) -> None:
        """One BlockObserved per new committed head (with RoundFinalized for rounds that ended since the
        previous one), then the outcomes of the node's transactions as of that head."""
        last_height, last_round = -1, None
        while True:
            if self.chain.tip.height != last_height:
                obs = await self.service.run(self.reader.observe, self.chain, priority=Priority.NODE)
                last_height = obs.height
                if last_round is not None and obs.round > last_round:
                    first = max(last_round, obs.round - m.KEEP_ROUNDS)
                    finals = await self.service.run(views.final_hashes, self.chain, first, obs.round - 1,
                                                    priority=Priority.NODE)
                    for r, h in finals:
                        await self._send.send(m.RoundFinalized(r, h, trio.current_time()))
                last_round = obs.round
                self._record(obs)
                await self._observed(obs)
                async with self._tx_order:
                    for outcome in await self.sender.check():
                        now = trio.current_time()
                        if isinstance(outcome, Included):
                            await self._send.send(m.TxIncluded(outcome.key, outcome.success, outcome.detail, now,
                                                                   outcome.out_of_gas))
                        else:
                            await self._send.send(m.TxLost(outcome.key, outcome.reason, now))
                await self.sender.forget_before(obs.round - 1)
            await self.sender.regossip()
            with trio.move_on_after(POLL_INTERVAL):  # woken by the driver's next commit; the timeout
                await self._wait_height(last_height + 1)  # covers heights that arrive by chain sync

    async def _watch_chain(self) -> None:
        """Run _watch_once (its own loop). A failure in it (a bug, a chain read that raised) is logged with
        its traceback and the watch starts afresh after POLL_INTERVAL: the round loop never dies of it."""
        while True:
            try:
                await self._watch_once()
            except Exception:
                self.counters["watch_crashed"] += 1
                log.exception("event=watch_crashed")
                await trio.sleep(POLL_INTERVAL)

    async def _observed(self, obs: m.RoundObservation) -> None:
        has_base = await trio.to_thread.run_sync(self.models.has_model, obs.base_hash)
        await self._send.send(m.BlockObserved(obs, has_base, trio.current_time()))

    def _record(self, obs: m.RoundObservation) -> None:
        index = obs.participant_index
        if index is not None and index >= self.state.config.num_clients and not self._warned_no_data:
            self._warned_no_data = True
            log.warning("event=no_data_slice participant_index=%d num_clients=%d: the genesis task splits its "
                        "data into %d slices; this participant has none and only aggregates and validates",
                        index, self.state.config.num_clients, self.state.config.num_clients)
        rec = self.history.get(obs.round)
        rec.participants, rec.commits = obs.participant_count, len(obs.commits)
        prev = self.state.obs
        if not obs.window_open and prev is not None and (prev.round != obs.round or prev.window_open):
            log.info("event=window_closed round=%d height=%d commits=%d expected=%d skipped=%s", obs.round,
                     obs.height, len(obs.commits), obs.expected_count, obs.skipped)

    # ---- actions ----

    def _carry_out(self, action: m.Action) -> None:
        if isinstance(action, m.Report):
            self._report(action)
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._perform, action)

    async def _perform(self, action: m.Action) -> None:
        if isinstance(action, m.SendTx):
            async with self._tx_order:
                await self._perform_ordered(action)
        else:
            await self._perform_ordered(action)

    async def _perform_ordered(self, action: m.Action) -> None:
        key = action.key  # type: ignore[union-attr]
        try:
            result = await self._do(action)
        except EXPECTED_FAILURES as exc:
            self.counters["actions_failed"] += 1
            retry = not isinstance(exc, WorkError) or exc.retryable
            log.warning("event=action_failed action=%s round=%d error=%s: %s retry=%s", key[0], key[1],
                        type(exc).__name__, exc, retry)
            await self._send.send(m.ActionFailed(key, f"{type(exc).__name__}: {exc}", retry, trio.current_time()))
            try:
                if isinstance(exc, DamagedModel):
                    await self._damaged(exc.model_hash)
                elif self.state.obs is not None:
                    await self._observed(self.state.obs)  # the store may have lost the base: look again
            except Exception:
                log.exception("event=action_followup_crashed action=%s round=%d", key[0], key[1])
        except Exception as exc:  # a bug: loud, with the traceback; the action is retried, the node lives on
            self.counters["actions_crashed"] += 1
            log.exception("event=action_crashed action=%s round=%d", key[0], key[1])
            await self._send.send(m.ActionFailed(key, f"{type(exc).__name__}: {exc}", True, trio.current_time()))
        else:
            await self._send.send(m.ActionDone(key, result, trio.current_time()))

    async def _do(self, action: m.Action) -> m.Result:
        if isinstance(action, m.FetchModel):
            return await self.work.fetch_model(action)
        if isinstance(action, m.Train):
            return await self.work.train(action)
        if isinstance(action, m.Aggregate):
            return await self.work.aggregate(action)
        if isinstance(action, m.SendTx):
            if isinstance(action.call, m.ShareKeyCall | m.MaskKeysCall | m.RevealCall):
                obs = self.state.obs
                data = await self.work.secagg_calldata(action.call, obs.participant_index if obs else None)
            else:
                data = txs.call_data(action.call)
            gas = None
            if isinstance(action.call, m.AttestCall):
                gas = await self.service.run(views.attest_gas, self.service.chain, action.call.round,
                                             action.call.full_gas, priority=Priority.NODE)
            return m.TxSubmitted(await self.sender.send(action.key, data, gas))
        if isinstance(action, m.Score):
            obs = self.state.obs
            await self.work.score(action.round, action.model_hash, obs.participant_index if obs else None)
            return m.Finished()
        if isinstance(action, m.Prune):
            await self.work.prune(action.final_round)
            return m.Finished()
        raise TypeError(f"unknown action {action!r}")

    async def _damaged(self, h: bytes) -> None:
        obs = self.state.obs
        if obs is not None and h == obs.base_hash:
            await self._observed(obs)  # the machine sees the base missing and fetches it again
            return
        try:  # an older final model (model export, late joiners): fetch it again from peers
            await self.work.repair_model(h)
        except EXPECTED_FAILURES as exc:
            log.warning("event=model_repair_failed model=0x%s error=%s: %s", h.hex(), type(exc).__name__, exc)

    def _report(self, report: m.Report) -> None:
        r = report.round
        if report.event == "round_final":
            rec = self.history.get(r)
            rec.final_hash = report.get("final")
            self.history.progress(rec)
            if report.get("agrees"):
                log.info("event=round_final round=%d model=0x%s agrees=true", r, rec.final_hash.hex())
        elif report.event == "MODEL_MISMATCH":
            self.counters["mismatches"] += 1
            rec = self.history.get(r)
            rec.final_hash = report.get("final")
            log.error("event=MODEL_MISMATCH round=%d ours=0x%s final=0x%s action=fetching_final_model", r,
                      report.get("ours").hex(), report.get("final").hex())
            self.history.progress(rec)
        elif report.event == "gave_up":
            self.counters["gave_up"] += 1
            log.error("event=gave_up round=%d action=%s attempts=%s error=%r", r, report.get("action"),
                      report.get("attempts"), report.get("error"))
        elif report.event == "tx_reverted" and report.get("what") == "attest" and r in self.state.finals:
            # the others' attestations finalized the round first (in this block or before): expected
            self.counters["attest_late"] += 1
            log.info("event=attest_late round=%d (the round was final before our attestation)", r)
        elif report.event == "attest_full_gas":
            self.counters["attest_full_gas"] += 1
            log.warning("event=attest_full_gas round=%d (our attestation ran out of gas while the round is "
                        "open: sent again at the full gas) reason=%r", r, report.get("reason"))
        elif report.event == "tx_reverted":
            self.counters["tx_reverted"] += 1
            log.warning("event=tx_reverted round=%d what=%s reason=%r", r, report.get("what"), report.get("reason"))
        else:
            log.info("event=%s round=%d %s", report.event, r, dict(report.detail))

    # ---- for the driver and RPC ----

    def block_due(self, now: float) -> bool:
        """A block built now would close the open window at its deadline: the driver makes one then,
        rather than at the next empty-block interval (the proposer stamps max(parent + 1, now))."""
        obs = self.state.obs
        if obs is None or not obs.window_open or obs.extended:
            return False
        return max(obs.head_time + 1, int(now)) >= obs.close_time

    def statistics(self) -> dict[str, Any]:
        s = self.state
        return {**self.counters, "running": sorted(f"{k[0]}:{k[1]}" for k in s.running),
                "sent": sorted(f"{k[0]}:{k[1]}" for k in s.sent),
                "retrying": {f"{k[0]}:{k[1]}": {"attempts": r.attempts, "error": r.error} for k, r in s.retries.items()}}
