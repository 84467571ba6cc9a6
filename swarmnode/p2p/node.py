"""P2PNode: the daemon's one handle on the network: host, gossip topics, blob exchange, chain sync."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from libp2p.peer.id import ID

from consensus.interfaces import Application
from swarmnode.p2p.blobs import BlobExchange
from swarmnode.p2p.blobstore import BlobStore, MemoryBlobStore
from swarmnode.p2p.config import P2PConfig
from swarmnode.p2p.direct import DirectConsensusNetwork
from swarmnode.p2p.errors import P2PError
from swarmnode.p2p.gossip import Gossip
from swarmnode.p2p.host import P2PHost, PeerStatus
from swarmnode.p2p.peers import PeerExchange
from swarmnode.p2p.sync import ChainSync
from swarmnode.p2p.topics import (
    CONSENSUS,
    UPDATES,
    Announcement,
    GossipMessage,
    TopicPolicy,
    default_policies,
)


class P2PNode:
    """`async with P2PNode(config).run() as node:` — everything started, listening, bootstrapping,
    exchanging peer listings. `node.consensus` is the BFT driver's Network (direct streams).

    `policies` override the per-topic acceptance rules (known senders, windows); `head_height` is what
    the handshake states. With `app`, the node serves and syncs the chain (`app_runner(fn, *args)` runs
    each call into `app`, serialised with every other chain call: the node's chain executor)."""

    def __init__(self, config: P2PConfig, *, store: BlobStore | None = None,
                 policies: dict[str, TopicPolicy] | None = None,
                 head_height: Callable[[], int] = lambda: 0,
                 app: Application | None = None,
                 app_runner: Callable[..., Awaitable[Any]] | None = None) -> None:
        self.config = config
        self.host = P2PHost(config, head_height=head_height)
        all_policies = {**default_policies(), **(policies or {})}
        guard = self.host.guard
        self.gossip = Gossip(self.host.pubsub, config.chain_id, all_policies,
                             capacity=config.gossip_capacity, observer=self._observe, guard=guard)
        self.peer_exchange = PeerExchange(self.host, max_peers=config.max_peers, interval=config.peer_exchange_interval)
        # a proposal is relayed only once its block hashes to what its proposer signed (Application.block_hash
        # is pure: it hashes bytes)
        self.consensus = DirectConsensusNetwork(self.host, all_policies[CONSENSUS],
                                                knows_connected=self.peer_exchange.knows_connected,
                                                block_hash=app.block_hash if app is not None else None)
        self.blobs = BlobExchange(self.host.libp2p, store or MemoryBlobStore(), config, guard)
        self.sync = ChainSync(self.host.libp2p, app, config, app_runner, guard) if app is not None else None

    @classmethod
    def from_config(cls, config: P2PConfig) -> P2PNode:
        return cls(config)

    @property
    def peer_id(self) -> ID:
        return self.host.peer_id

    def listen_addrs(self) -> list[str]:
        return self.host.listen_addrs()

    def peers(self) -> list[PeerStatus]:
        return self.host.peers()

    def status(self) -> dict[str, object]:
        return {
            "peer_id": str(self.peer_id),
            "address": "0x" + self.host.address.hex(),
            "listen_addrs": self.listen_addrs(),
            "peers": [{"peer_id": str(p.peer_id), "address": "0x" + p.address.hex(), "head": p.head_height}
                      for p in self.peers()],
            "gossip": self.gossip.statistics(),
            "blobs": self.blobs.statistics(),
            "sync": self.sync.statistics() if self.sync is not None else {},
            "consensus": self.consensus.statistics(),
            "peer_exchange": self.peer_exchange.statistics(),
            "host": self.host.statistics(),
        }

    async def announce_blob(self, round_: int, blob: bytes, cid: bytes | None = None) -> bytes:
        """Store `blob`, serve it, and announce it on the updates topic; returns its content id (pass
        `cid` when it is already computed: it must be content_id(blob))."""
        if cid is None:
            cid = await trio.to_thread.run_sync(self.blobs.store.put, blob)
        else:
            await trio.to_thread.run_sync(self.blobs.store.put_verified, cid, blob)
        await self.gossip.publish(UPDATES, Announcement(round_, cid, len(blob)))
        return cid

    async def catch_up(self) -> int:
        """Sync the chain from connected peers, most advanced first; returns the height reached."""
        if self.sync is None:
            raise P2PError("this node was built without an application to sync")
        peers = sorted(self.peers(), key=lambda p: -p.head_height)
        return await self.sync.catch_up([p.peer_id for p in peers])

    def _observe(self, msg: GossipMessage) -> None:
        """A validated announcement (the updates policy decides whose, and for which rounds) records its
        publisher as a provider of the blob, for that round."""
        if isinstance(msg.body, Announcement):
            self.blobs.add_provider(msg.body.content_id, msg.sender, msg.body.round)

    @asynccontextmanager
    async def run(self) -> AsyncIterator[P2PNode]:
        self.blobs.attach()
        self.peer_exchange.attach()
        self.consensus.attach()
        if self.sync is not None:
            self.sync.attach()
        async with self.host.run(), trio.open_nursery() as nursery:
            await nursery.start(self.gossip.run)
            await nursery.start(self.consensus.run)
            if self.config.peer_exchange:
                await nursery.start(self.peer_exchange.run)
            yield self
            nursery.cancel_scope.cancel()
