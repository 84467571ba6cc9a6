"""TxIngest: gossiped transactions into the node's pool. A commitUpdate is admitted only once its update is
held (prefetched as soon as the commit arrives, verified), so this node never proposes a block that
fails the data-availability check; a commit whose update cannot be fetched is dropped with a warning.

Nothing from gossip starts a fetch before it is checked. A commit is worth fetching for only when, in
this order (cheapest first):
1. it commits to the current round or the next one (our view of the chain may lag by a block);
2. fewer than MAX_WAITING commits wait for their updates;
3. the pool would take it (one ecrecover: its signature, then nonce and balance, on the chain executor);
4. its sender is a registered, active participant (Registry: from the SwarmRounds contract);
5. its sender has fewer than MAX_WAITING_PER_SENDER commits waiting for the round (an honest participant
   commits once; a hostile one could sign many commits at the same nonce);
6. the fetcher's queue (MAX_QUEUED_PREFETCHES) has room.
The same registry and round window decide which update announcements are accepted (TxIngest installs the
updates topic policy): a non-participant's or another round's announcement is ignored, so it records no
provider; provider records of finalized rounds are pruned as rounds move on.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import trio

from consensus.executor import Priority
from consensus.service import ChainService, submit_raw
from consensus.txpool import TxRejected
from swarmnode.node import txs
from swarmnode.node.blobfetch import FETCH_TIMEOUT, BlobFetcher
from swarmnode.p2p import TX, UPDATES, TopicPolicy
from swarmnode.p2p.gossip import Gossip
from swarmnode.p2p.topics import MAX_ANNOUNCE_BYTES

log = logging.getLogger("swarmnode.node.ingest")

MAX_WAITING = 256  # commits waiting for their update at once; more are dropped (a flood is not our work)
MAX_WAITING_PER_SENDER = 2  # per sender and round
KEEP_PROVIDER_ROUNDS = 1  # provider records kept for rounds before the current one (a slow aggregator's)


class Registry:
    """The participants registered and active in SwarmRounds, as of a recent head, cached.

    `knows(address)` answers at once from the cache (the gossip validator cannot wait) and asks for a
    refresh when the cache may be out of date: the round changed since it was read (someone may have
    left: every entry is read again), or an unknown address showed up at a newer head (it may have just
    registered: only the registry list is read, and the entries of new addresses). So a flood of
    strangers costs at most one contract call per block. `check(address)` waits for that refresh."""

    def __init__(self, service: ChainService, current_round: Callable[[], int | None]) -> None:
        self.service = service
        self._current_round = current_round
        self._views: Any = None  # consensus.rpc_swarm.SwarmViews, used on the chain executor only
        self._active: dict[bytes, bool] = {}  # every registered address -> active
        self._height = -1  # head height the cache was read at
        self._round: int | None = None  # round the entries were all read for
        self._full = True
        self._wanted = trio.Event()
        self._next_done = trio.Event()  # set when the next refresh to start has finished
        self.refreshes = 0
        self.calls = 0

    def cached_active(self, address: bytes) -> bool:
        """Whether `address` was active at the last refresh: a dict read that asks for no refresh, safe
        from the chain executor's thread (the proposer's ranking of round calls)."""
        return self._active.get(address, False)

    def knows(self, address: bytes) -> bool:
        self._want_if_stale(address)
        return self._active.get(address, False)

    async def check(self, address: bytes) -> bool:
        """`knows`, after the refresh it asked for (if any) is done."""
        done = self._want_if_stale(address)
        if done is not None:
            await done.wait()
        return self._active.get(address, False)

    def _want_if_stale(self, address: bytes) -> trio.Event | None:
        if self._round != self._current_round():
            self._full = True
        elif self._active.get(address, False) or self._height == self.service.chain.tip.height:
            return None
        self._wanted.set()
        return self._next_done

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reads the registry at once, then whenever `knows` asks for it (one refresh at a time)."""
        from consensus.rpc_swarm import SwarmViews

        self._views = SwarmViews(self.service.chain)
        self._wanted.set()
        task_status.started()
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            done, self._next_done = self._next_done, trio.Event()
            full, self._full = self._full, False
            try:
                await self._refresh(full)
            except Exception as exc:  # noqa: BLE001 - no contract yet, a call that failed: again at the next head
                log.debug("event=registry_unreadable error=%r", str(exc))
            finally:
                done.set()

    async def _refresh(self, full: bool) -> None:
        views = self._views
        # what the cache is for, recorded first: a refresh that fails is not retried before the next block
        self._height, round_ = self.service.chain.tip.height, self._current_round()
        if full:
            self._round = round_

        def call(fn: str, *args: Any) -> Any:
            return views.call_view("SwarmRounds", fn, *args)

        self.calls += 1
        listed = await self.service.run(call, "getParticipants", priority=Priority.NODE)
        known = dict(self._active)
        active: dict[bytes, bool] = {}
        for text in listed:
            address = bytes.fromhex(text[2:].lower())
            if full or address not in known:
                self.calls += 1  # one executor job per call: consensus work never queues behind all of them
                info = await self.service.run(call, "getParticipant", address, priority=Priority.NODE)
                active[address] = bool(info["active"])
            else:
                active[address] = known[address]
        self._active = active
        self.refreshes += 1

    def participants(self) -> list[bytes]:
        return sorted(a for a, on in self._active.items() if on)


class TxIngest:
    def __init__(self, gossip: Gossip, service: ChainService, fetcher: BlobFetcher, notify: Callable[[], None],
                 current_round: Callable[[], int | None]) -> None:
        """`current_round()`: the round the node last observed as open (None before the first block)."""
        self.gossip = gossip
        self._current_round = current_round
        self.service = service
        self.fetcher = fetcher
        self._notify = notify
        self.registry = Registry(service, current_round)
        self._waiting = 0
        self._waiting_by_sender: Counter[tuple[bytes, int]] = Counter()
        self._pruned_round: int | None = None
        self.counters = {"admitted": 0, "rejected": 0, "undecodable": 0, "unavailable": 0, "overflow": 0,
                         "stale": 0, "future": 0, "no_round": 0, "not_participant": 0, "sender_limit": 0,
                         "queue_full": 0}

    def round_window(self) -> tuple[int, int]:
        """Rounds whose commits and announcements are taken: the current one and the next ((0, -1), none,
        before the first block has been observed). Provider records of older rounds are pruned here."""
        current = self._current_round()
        if current is None:
            return 0, -1
        if current != self._pruned_round:
            self._pruned_round = current
            blobs = getattr(self.fetcher.p2p, "blobs", None)
            if blobs is not None:
                blobs.prune_providers(current - KEEP_PROVIDER_ROUNDS)
        return current, current + 1

    def updates_policy(self) -> TopicPolicy:
        """Update announcements: from registered participants, for the current or next round."""
        return TopicPolicy(MAX_ANNOUNCE_BYTES, known_sender=self.registry.knows, window=self.round_window)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        decode = self.service.chain.decode_transaction  # touches no chain state: fine on the event loop
        async with trio.open_nursery() as nursery:
            await nursery.start(self.registry.run)
            self.gossip.set_policy(UPDATES, self.updates_policy())
            task_status.started()
            async for msg in self.gossip.channel(TX):
                try:
                    tx = decode(msg.body)
                except Exception as exc:  # py-evm/rlp raise many types for malformed bytes: drop the message
                    self.counters["undecodable"] += 1
                    log.debug("event=tx_undecodable from=%s error=%r", msg.sender, str(exc))
                    continue
                commits = txs.commits_in([tx])
                missing = [c.update_hash for c in commits if not self.fetcher.holds_all([c.update_hash])]
                if not missing:
                    await self._admit(msg.body)
                elif self._in_window(commits) and self._waiting < MAX_WAITING:
                    key = await self._worth_fetching(tx)
                    if key is None:
                        continue
                    if not self.fetcher.prefetch(missing):
                        self.counters["queue_full"] += 1
                        continue
                    self._waiting += 1  # counted before the task starts: the next message sees it
                    self._waiting_by_sender[key] += 1
                    nursery.start_soon(self._admit_when_held, msg.body, missing, key)
                elif self._waiting >= MAX_WAITING:
                    self.counters["overflow"] += 1

    def _in_window(self, commits: list[txs.CommitCall]) -> bool:
        """Commits to the current or the next round only: a late or replayed one (gossip delivers those
        to a node that just joined) is dropped without asking peers for data they may have pruned, and
        one for a round far ahead cannot be valid."""
        low, high = self.round_window()
        if high < low:
            self.counters["no_round"] += 1
            return False
        if any(c.round < low for c in commits):
            self.counters["stale"] += 1
            return False
        if any(c.round > high for c in commits):
            self.counters["future"] += 1
            return False
        return True

    async def _worth_fetching(self, tx: Any) -> tuple[bytes, int] | None:
        """The (sender, round) a commit would wait under, if the pool would take it, its sender is an
        active participant and has room; None (counted) otherwise."""
        service = self.service

        def check() -> bytes:
            service.pool.check(tx, service.chain.state_view(), service.chain.next_base_fee())  # ecrecover first
            return bytes(tx.sender)

        try:
            sender = await service.run(check, priority=Priority.NODE)
        except TxRejected as exc:
            self.counters["rejected"] += 1
            log.debug("event=tx_rejected reason=%s", exc)
            return None
        if not await self.registry.check(sender):
            self.counters["not_participant"] += 1
            log.debug("event=commit_ignored reason=not_a_participant sender=0x%s", sender.hex())
            return None
        key = (sender, txs.commits_in([tx])[0].round)
        if self._waiting_by_sender[key] >= MAX_WAITING_PER_SENDER:
            self.counters["sender_limit"] += 1
            return None
        return key

    async def _admit(self, raw: bytes) -> None:
        try:
            await self.service.run(submit_raw, self.service.chain, self.service.pool, raw, priority=Priority.NODE)
        except TxRejected as exc:
            self.counters["rejected"] += 1
            log.debug("event=tx_rejected reason=%s", exc)
            return
        self.counters["admitted"] += 1
        self._notify()

    async def _admit_when_held(self, raw: bytes, cids: list[bytes], key: tuple[bytes, int]) -> None:
        try:
            with trio.move_on_after(FETCH_TIMEOUT + 1):
                if await self.fetcher.wait_prefetched(cids):
                    await self._admit(raw)
                    return
            self.counters["unavailable"] += 1
            log.warning("event=commit_dropped reason=update_unavailable update=0x%s", cids[0].hex())
        finally:
            self._waiting -= 1
            self._waiting_by_sender[key] -= 1
            if self._waiting_by_sender[key] <= 0:
                del self._waiting_by_sender[key]

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "waiting": self._waiting, "participants": len(self.registry.participants()),
                "registry_refreshes": self.registry.refreshes}
