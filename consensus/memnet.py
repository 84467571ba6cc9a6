"""An in-memory network for N consensus nodes in one trio process: delay, loss, partitions, faults.

`MemNetwork.endpoint(i)` gives node i a `Network`. Delivery runs in the network's own task
(`async with net.run():`), ordered by a seeded RNG, so runs are reproducible under a MockClock.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import trio

from consensus.interfaces import Network
from consensus.messages import ProposalMessage, VoteMessage, decode, encode
from consensus.votes import NIL_HASH, sign_vote

# tamper(data, destination) -> the payloads to deliver instead (empty: drop)
Tamper = Callable[[bytes, int], list[bytes]]


class MemEndpoint(Network):
    def __init__(self, net: MemNetwork, node: int, capacity: int) -> None:
        self._net = net
        self.node = node
        self._send, self._recv = trio.open_memory_channel[bytes](capacity)

    async def broadcast(self, data: bytes) -> None:
        self._net.submit(self.node, data)

    @property
    def inbound(self) -> trio.MemoryReceiveChannel[bytes]:
        return self._recv

    def deliver(self, data: bytes) -> bool:
        try:
            self._send.send_nowait(data)
            return True
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False


class MemNetwork:
    """Broadcast medium with per-message delay in [min_delay, max_delay] and loss probability."""

    def __init__(self, n: int, *, min_delay: float = 0.0, max_delay: float = 0.0, loss: float = 0.0,
                 seed: int = 0, capacity: int = 4096) -> None:
        self.n = n
        self.min_delay, self.max_delay, self.loss = min_delay, max_delay, loss
        self._rng = random.Random(seed)
        self._capacity = capacity
        self._endpoints: dict[int, MemEndpoint] = {}
        self._groups: list[set[int]] | None = None
        self._silent: set[int] = set()
        self._tamper: dict[int, Tamper] = {}
        self._heap: list[tuple[float, int, int, bytes]] = []
        self._seq = itertools.count()
        self._wakeup = trio.Event()
        self.counters: Counter[str] = Counter()

    def endpoint(self, node: int) -> MemEndpoint:
        """A fresh endpoint for `node` (a restarted node gets a new inbound channel)."""
        ep = MemEndpoint(self, node, self._capacity)
        self._endpoints[node] = ep
        return ep

    def connected_endpoint(self, node: int) -> MemEndpoint | None:
        """The node's current endpoint, if it has one (none after `disconnect`)."""
        return self._endpoints.get(node)

    # ---- faults ----

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        self._groups = [set(g) for g in groups]

    def heal(self) -> None:
        self._groups = None

    def set_silent(self, node: int, silent: bool = True) -> None:
        """A silent node's broadcasts are all lost (it still receives)."""
        (self._silent.add if silent else self._silent.discard)(node)

    def set_tamper(self, node: int, tamper: Tamper | None) -> None:
        if tamper is None:
            self._tamper.pop(node, None)
        else:
            self._tamper[node] = tamper

    def disconnect(self, node: int) -> None:
        """Crash: the node's endpoint disappears until `endpoint(node)` is called again."""
        self._endpoints.pop(node, None)

    def _connected(self, a: int, b: int) -> bool:
        if self._groups is None:
            return True
        return any(a in g and b in g for g in self._groups)

    # ---- delivery ----

    def submit(self, src: int, data: bytes) -> None:
        self.counters["sent"] += 1
        if src in self._silent:
            self.counters["silenced"] += 1
            return
        now = trio.current_time()
        for dst in range(self.n):
            if dst == src:
                continue
            if not self._connected(src, dst) or (self.loss and self._rng.random() < self.loss):
                self.counters["lost"] += 1
                continue
            payloads = self._tamper[src](data, dst) if src in self._tamper else [data]
            for payload in payloads:
                at = now + self._rng.uniform(self.min_delay, self.max_delay)
                heapq.heappush(self._heap, (at, next(self._seq), dst, payload))
        self._wakeup.set()

    def _deliver_due(self) -> None:
        now = trio.current_time()
        while self._heap and self._heap[0][0] <= now:
            _, _, dst, payload = heapq.heappop(self._heap)
            ep = self._endpoints.get(dst)
            if ep is None:
                self.counters["lost"] += 1
            elif ep.deliver(payload):
                self.counters["delivered"] += 1
            else:
                self.counters["overflow"] += 1

    async def _pump(self) -> None:
        while True:
            self._deliver_due()
            self._wakeup = trio.Event()
            if self._heap:
                with trio.move_on_at(self._heap[0][0]):
                    await self._wakeup.wait()
            else:
                await self._wakeup.wait()

    @asynccontextmanager
    async def run(self) -> AsyncIterator[MemNetwork]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump)
            yield self
            nursery.cancel_scope.cancel()


def make_equivocator(
    private_key: bytes, chain_id: int, forge_block: Callable[[bytes], bytes], block_hash: Callable[[bytes], bytes],
) -> Tamper:
    """Tamper for a Byzantine node: with every proposal it also sends a conflicting one (a different
    block, `forge_block(original)`) and with every non-nil vote one for a different hash, all properly
    signed by `private_key`: double proposals and double votes. Odd-numbered peers get the forgery first."""

    def forge(data: bytes) -> bytes | None:
        msg = decode(data)
        if isinstance(msg, ProposalMessage):
            block = forge_block(msg.block)
            v = msg.vote
            vote = sign_vote(private_key, chain_id, v.height, v.round, 0, block_hash(block))
            return encode(ProposalMessage(vote, msg.valid_round, block))
        if isinstance(msg, VoteMessage) and msg.vote.block_hash != NIL_HASH:
            v = msg.vote
            other = bytes(b ^ 0xFF for b in v.block_hash)
            return encode(VoteMessage(sign_vote(private_key, chain_id, v.height, v.round, v.step, other)))
        return None

    def tamper(data: bytes, dst: int) -> list[bytes]:
        forged = forge(data)
        if forged is None:
            return [data]
        return [forged, data] if dst % 2 else [data, forged]

    return tamper
