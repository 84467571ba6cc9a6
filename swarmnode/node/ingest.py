"""TxIngest: gossiped transactions into the node's pool. A commitUpdate is admitted only once its update is
held (prefetched as soon as the commit arrives, verified), so this node never proposes a block that
fails the data-availability check; a commit whose update cannot be fetched is dropped with a warning."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from consensus.executor import Priority
from consensus.service import ChainService, submit_raw
from consensus.txpool import TxRejected
from swarmnode.node import txs
from swarmnode.node.blobfetch import FETCH_TIMEOUT, BlobFetcher
from swarmnode.p2p import TX
from swarmnode.p2p.gossip import Gossip

log = logging.getLogger("swarmnode.node.ingest")

MAX_WAITING = 256  # commits waiting for their update at once; more are dropped (a flood is not our work)


class TxIngest:
    def __init__(self, gossip: Gossip, service: ChainService, fetcher: BlobFetcher, notify: Callable[[], None],
                 current_round: Callable[[], int | None]) -> None:
        """`current_round()`: the round the node last observed as open (None before the first block)."""
        self.gossip = gossip
        self._current_round = current_round
        self.service = service
        self.fetcher = fetcher
        self._notify = notify
        self._waiting = 0
        self.counters = {"admitted": 0, "rejected": 0, "undecodable": 0, "unavailable": 0, "overflow": 0,
                         "stale": 0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        decode = self.service.chain.decode_transaction  # touches no chain state: fine on the event loop
        async with trio.open_nursery() as nursery:
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
                elif self._waiting >= MAX_WAITING:
                    self.counters["overflow"] += 1
                elif await self._worth_fetching(tx, commits):
                    self.fetcher.prefetch(missing)
                    nursery.start_soon(self._admit_when_held, msg.body, missing)

    async def _worth_fetching(self, tx: Any, commits: list[txs.CommitCall]) -> bool:
        """Only a commit to the current round that the pool would take is worth fetching an update for: a
        late or replayed one (old round, used nonce: gossip delivers those to a node that just joined) is
        dropped without asking peers for data they may have pruned."""
        current = self._current_round()
        if current is not None and any(c.round < current for c in commits):
            self.counters["stale"] += 1
            return False
        service = self.service
        try:
            await service.run(lambda: service.pool.check(tx, service.chain.state_view(), service.chain.next_base_fee()),
                              priority=Priority.NODE)
        except TxRejected as exc:
            self.counters["rejected"] += 1
            log.debug("event=tx_rejected reason=%s", exc)
            return False
        return True

    async def _admit(self, raw: bytes) -> None:
        try:
            await self.service.run(submit_raw, self.service.chain, self.service.pool, raw, priority=Priority.NODE)
        except TxRejected as exc:
            self.counters["rejected"] += 1
            log.debug("event=tx_rejected reason=%s", exc)
            return
        self.counters["admitted"] += 1
        self._notify()

    async def _admit_when_held(self, raw: bytes, cids: list[bytes]) -> None:
        self._waiting += 1
        try:
            with trio.move_on_after(FETCH_TIMEOUT + 1):
                if await self.fetcher.wait_held(cids):
                    await self._admit(raw)
                    return
            self.counters["unavailable"] += 1
            log.warning("event=commit_dropped reason=update_unavailable update=0x%s", cids[0].hex())
        finally:
            self._waiting -= 1

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "waiting": self._waiting}
