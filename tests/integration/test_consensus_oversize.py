"""A proposer whose block does not fit in one consensus message (found in review: 8 pool-admissible
transactions of 128 KB made a 1 MB block, and encoding the proposal raised out of the driver, taking the
node down). The driver now logs it and does not propose; the height moves on with the next proposer.
In-memory network and MockClock, as the other consensus scenarios."""

from __future__ import annotations

import trio

from consensus.cluster import Cluster
from consensus.driver import DriverConfig
from consensus.memapp import InMemoryApplication
from consensus.messages import MAX_MESSAGE_BYTES

CONFIG = DriverConfig(chain_id=7, block_interval=1.0, offload_blocking=False)


class Oversized(InMemoryApplication):
    """Proposes a block one byte over the message limit from height 2 on."""

    def propose_block(self, height: int, round_: int, timestamp: int) -> bytes:
        if height >= 2:
            return b"\x00" * (MAX_MESSAGE_BYTES + 1)
        return super().propose_block(height, round_, timestamp)


async def test_an_oversized_proposal_is_not_sent_and_the_chain_moves_on(autojump_clock) -> None:
    cluster = Cluster(4, CONFIG, app_factory=lambda i, v: Oversized(v) if i == 0 else InMemoryApplication(v))
    async with cluster.run():
        with trio.fail_after(300):
            await cluster.wait_height(8)
    assert cluster.driver(0).counters["dropped.proposal_not_sent"] >= 1
    chains = [cluster.committed(i) for i in range(4)]
    assert all(c[:8] == chains[1][:8] for c in chains)  # every node, node 0 included, has the same 8 blocks
