"""The BFT driver's Network over libp2p: broadcasts go to the consensus gossip topic.

`ConsensusNetwork(gossip)` implements consensus.interfaces.Network, so `ConsensusDriver` runs over
libp2p exactly as over consensus.memnet. The topic validator has already checked decoding, chain id,
vote signature, known signer and height window before a message reaches `inbound`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import trio

from consensus.interfaces import Network
from swarmnode.p2p.errors import WireError
from swarmnode.p2p.gossip import Gossip
from swarmnode.p2p.topics import CONSENSUS, Window

log = logging.getLogger(__name__)


class ConsensusNetwork(Network):
    """Run `run()` in a nursery (`await nursery.start(net.run)`) before the driver starts."""

    def __init__(self, gossip: Gossip, capacity: int = 1024) -> None:
        self._gossip = gossip
        self._send, self._recv = trio.open_memory_channel[bytes](capacity)
        self.counters: Counter[str] = Counter()

    async def broadcast(self, data: bytes) -> None:
        try:
            await self._gossip.publish(CONSENSUS, data)
            self.counters["sent"] += 1
        except WireError as exc:  # too large for gossip: a bug upstream, but never block the driver
            self.counters["unsendable"] += 1
            log.error("consensus message not sent: %s", exc)

    @property
    def inbound(self) -> trio.MemoryReceiveChannel[bytes]:
        return self._recv

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Move validated consensus gossip into `inbound`; a full inbound drops (counted), never stalls."""
        task_status.started()
        async for msg in self._gossip.channel(CONSENSUS):
            try:
                self._send.send_nowait(msg.body)
                self.counters["received"] += 1
            except trio.WouldBlock:
                self.counters["overflow"] += 1


def height_window(committed_height: Callable[[], int], behind: int = 16, ahead: int = 64) -> Window:
    """A consensus-topic window around our committed height, for TopicPolicy(window=...).

    Generous on purpose: a rejection lowers the *forwarding* peer's score, and an honest peer may relay
    votes of heights we have not reached yet (we are behind) or just left (it is behind)."""

    def window() -> tuple[int, int]:
        h = committed_height()
        return max(1, h - behind), h + 1 + ahead

    return window
