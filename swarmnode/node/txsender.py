"""TxSender: signs the node's own SwarmRounds calls and follows each one until it is included or lost.

A call is signed at the account's next free nonce (the committed nonce plus whatever of this account
is pending in the pool: ours, or a wallet's that reached us), admitted to the node's pool and gossiped.
After every committed block `check()` looks at each call still followed:
- its receipt exists: included (successful or reverted);
- the account's committed nonce went past it: another transaction from the same account (a wallet) took
  the nonce, so this one can never be included: lost;
- it is no longer in the pool (evicted, or replaced there by a wallet's transaction with a higher fee):
  lost;
- otherwise it waits. `regossip()` (called often) gossips again every call not included REGOSSIP_SECONDS
  after it was last gossiped: gossip is lossy, and peers that connected after it went out (a swarm
  starting up, a node back from a partition) never saw it.
The round machine decides whether a lost call is still worth sending (then with a fresh nonce). After a
restart nothing is followed: the round machine works out from the chain alone what is still to send.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import trio

from consensus.chain import ExecutionChain
from consensus.chain_reads import ReadError
from consensus.executor import Priority
from consensus.service import ChainService
from consensus.txpool import REPLACEMENT_BUMP_PERCENT, TxPool, TxRejected, fee_cap
from swarmnode.node import txs
from swarmnode.node.machine import Key

log = logging.getLogger("swarmnode.node.tx")

REGOSSIP_SECONDS = 3.0


@dataclass(frozen=True)
class Followed:
    key: Key
    tx_hash: bytes
    nonce: int
    raw: bytes
    sent_height: int
    gossiped_at: float  # trio.current_time() of its last gossip


@dataclass(frozen=True)
class Included:
    key: Key
    tx_hash: bytes
    success: bool
    detail: str
    out_of_gas: bool = False  # reverted having spent all the gas it declared


@dataclass(frozen=True)
class Lost:
    key: Key
    tx_hash: bytes
    reason: str


Outcome = Included | Lost


def _status(chain: ExecutionChain, pool: TxPool, address: bytes,
            followed: list[Followed]) -> tuple[int, list[tuple[Followed, Outcome | None]]]:
    """Executor thread: what became of each followed transaction, as of the committed head."""
    height = chain.height
    committed_nonce = chain.state_view().get_nonce(address)
    out: list[tuple[Followed, Outcome | None]] = []
    for f in followed:
        try:
            receipt = chain.reader.receipt(f.tx_hash)
        except ReadError:
            receipt = None
        if receipt is not None:
            block = int(receipt.location.block.number)
            out_of_gas = not receipt.success and receipt.gas_used >= int(receipt.location.tx.gas)
            detail = (f"block {block}" if receipt.success else
                      f"ran out of gas in block {block}" if out_of_gas else f"reverted in block {block}")
            out.append((f, Included(f.key, f.tx_hash, receipt.success, detail, out_of_gas)))
        elif committed_nonce > f.nonce:
            out.append((f, Lost(f.key, f.tx_hash, f"nonce {f.nonce} was used by another transaction")))
        elif f.tx_hash not in pool:
            out.append((f, Lost(f.key, f.tx_hash, "no longer in the pool (evicted or replaced)")))
        else:
            out.append((f, None))
    return height, out


class TxSender:
    """`await sender.send(key, data)` submits; `await sender.check()` after each block reports outcomes."""

    def __init__(self, secret: bytes, address: bytes, chain_id: int, service: ChainService,
                 publish: Callable[[bytes], Awaitable[None]], notify: Callable[[], None]) -> None:
        """`publish(raw)` gossips a transaction; `notify()` tells the driver a transaction is pending."""
        self._secret = secret
        self.address = address
        self.chain_id = chain_id
        self.service = service
        self._publish = publish
        self._notify = notify
        self._followed: dict[Key, Followed] = {}
        self.counters = {"sent": 0, "included": 0, "reverted": 0, "lost": 0, "regossiped": 0,
                         "cancelled": 0}

    def followed(self) -> list[Followed]:
        return list(self._followed.values())

    async def send(self, key: Key, data: bytes, gas: int | None = None) -> bytes:
        """Sign `data` (a call to SwarmRounds, with `gas`; default txs.gas_for) at the next free nonce and
        submit it; returns its hash. TxRejected (the pool's reason) propagates."""
        chain, pool = self.service.chain, self.service.pool
        secret, chain_id, me = self._secret, self.chain_id, self.address

        def sign_and_admit() -> tuple[int, int, bytes, bytes]:
            nonce = pool.next_nonce(me, chain.state_view())
            raw = txs.sign_call(secret, chain_id, nonce, data, chain.next_base_fee(), gas=gas)
            tx = pool.add_raw(raw, chain.state_view(), chain.next_base_fee())
            return chain.height, nonce, raw, bytes(tx.hash)

        height, nonce, raw, tx_hash = await self.service.run(sign_and_admit, priority=Priority.NODE)
        self._followed[key] = Followed(key, tx_hash, nonce, raw, height, trio.current_time())
        self.counters["sent"] += 1
        self._notify()
        log.info("event=tx_sent what=%s:%d nonce=%d hash=0x%s", key[0], key[1], nonce, tx_hash.hex())
        await self._publish(raw)
        return tx_hash

    async def check(self) -> list[Outcome]:
        """Outcomes since the last check (call after each new committed head)."""
        if not self._followed:
            return []
        snapshot = list(self._followed.values())
        _height, statuses = await self.service.run(_status, self.service.chain, self.service.pool, self.address,
                                                   snapshot, priority=Priority.NODE)
        outcomes: list[Outcome] = []
        for f, outcome in statuses:
            current = self._followed.get(f.key)
            if outcome is None or current is None or current.tx_hash != f.tx_hash:
                continue  # still pending, forgotten, or sent again meanwhile (the newer copy is followed)
            del self._followed[f.key]
            outcomes.append(outcome)
            if isinstance(outcome, Included):
                self.counters["included" if outcome.success else "reverted"] += 1
                log.info("event=tx_included what=%s:%d hash=0x%s %s", f.key[0], f.key[1], f.tx_hash.hex(),
                         outcome.detail)
            else:
                self.counters["lost"] += 1
                log.warning("event=tx_lost what=%s:%d nonce=%d hash=0x%s reason=%r", f.key[0], f.key[1], f.nonce,
                            f.tx_hash.hex(), outcome.reason)
        return outcomes

    async def regossip(self) -> int:
        """Gossip again every followed call last gossiped REGOSSIP_SECONDS ago or more; returns how many."""
        now = trio.current_time()
        stale = [f for f in self._followed.values() if now - f.gossiped_at >= REGOSSIP_SECONDS]
        for f in stale:
            self._followed[f.key] = replace(f, gossiped_at=now)
            self.counters["regossiped"] += 1
            await self._publish(f.raw)
        return len(stale)

    async def forget_before(self, round_: int) -> int:
        """Stop following calls of rounds before `round_`, and cancel those still pending: each is replaced
        at its nonce (fee bumped) by a 0-value transfer to ourselves. Otherwise a call that no longer makes
        sense (a commit for a round long closed, sent while this node was cut off) would hold its nonce:
        peers refuse commits for past rounds, so every later transaction of ours would wait behind that
        gap at every other node. Returns how many were cancelled."""
        stale = [f for k, f in self._followed.items() if k[1] < round_]
        for f in stale:
            del self._followed[f.key]
        if not stale:
            return 0
        chain, pool = self.service.chain, self.service.pool
        secret, chain_id, me = self._secret, self.chain_id, self.address

        def cancel() -> list[tuple[Followed, bytes]]:
            state, base_fee = chain.state_view(), chain.next_base_fee()
            committed = state.get_nonce(me)
            out = []
            for f in sorted(stale, key=lambda f: f.nonce):
                held = pool.get(f.tx_hash)
                if f.nonce < committed or held is None:
                    continue  # included, taken by another transaction, or gone from the pool
                needed = fee_cap(held) * (100 + REPLACEMENT_BUMP_PERCENT) // 100 + 1
                raw = txs.sign_cancel(secret, chain_id, f.nonce, me, needed, base_fee)
                try:
                    pool.add_raw(raw, state, base_fee)
                except TxRejected:
                    continue
                out.append((f, raw))
            return out

        cancelled = await self.service.run(cancel, priority=Priority.NODE)
        for f, raw in cancelled:
            self.counters["cancelled"] += 1
            log.info("event=tx_cancelled what=%s:%d nonce=%d (no longer wanted; a 0-value transfer to ourselves "
                     "takes its nonce)", f.key[0], f.key[1], f.nonce)
            await self._publish(raw)
        if cancelled:
            self._notify()
        return len(cancelled)

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "followed": len(self._followed)}
