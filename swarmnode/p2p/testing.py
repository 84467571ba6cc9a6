"""Helpers for tests and benchmarks: deterministic keys and N nodes on 127.0.0.1 with port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from typing import Any

import trio
from eth_utils import keccak

from consensus.interfaces import Application, Network
from consensus.votes import Address
from swarmnode.p2p.config import P2PConfig
from swarmnode.p2p.consensus_net import ConsensusNetwork
from swarmnode.p2p.node import P2PNode
from swarmnode.p2p.topics import CONSENSUS, TopicPolicy
from swarmnode.p2p.wire import MAX_GOSSIP_BYTES

TEST_CHAIN_ID = 31337
TEST_GENESIS = keccak(b"swarmnode-test-genesis")


def node_secret(i: int) -> bytes:
    return keccak(f"swarmnode-p2p-test-node-{i}".encode())


def make_config(i: int, *, bootstrap: tuple[str, ...] = (), chain_id: int = TEST_CHAIN_ID,
                genesis_hash: bytes = TEST_GENESIS, secret: bytes | None = None, **overrides: Any) -> P2PConfig:
    cfg = P2PConfig(secret=secret or node_secret(i), chain_id=chain_id, genesis_hash=genesis_hash,
                    bootstrap=bootstrap)
    return replace(cfg, **overrides) if overrides else cfg


@asynccontextmanager
async def star(n: int, *, policies: dict[str, TopicPolicy] | None = None,
               **overrides: Any) -> AsyncIterator[list[P2PNode]]:
    """n nodes: node 0 is the bootstrap peer of all the others. Peer exchange is off unless overridden
    (it would turn the star into a full mesh)."""
    overrides.setdefault("peer_exchange", False)
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(P2PNode(make_config(0, **overrides), policies=policies).run())
        nodes = [first]
        for i in range(1, n):
            cfg = make_config(i, bootstrap=tuple(first.listen_addrs()), **overrides)
            nodes.append(await stack.enter_async_context(P2PNode(cfg, policies=policies).run()))
        yield nodes


@asynccontextmanager
async def full_mesh(n: int, *, policies: dict[str, TopicPolicy] | None = None,
                    apps: list[Application] | None = None, secrets: list[bytes] | None = None,
                    chain_id: int = TEST_CHAIN_ID, genesis_hash: bytes = TEST_GENESIS) -> AsyncIterator[list[P2PNode]]:
    """n nodes, each bootstrapping to every node started before it; node i serves apps[i] for sync."""
    async with AsyncExitStack() as stack:
        nodes: list[P2PNode] = []
        for i in range(n):
            boot = tuple(a for node in nodes for a in node.listen_addrs())
            app = apps[i] if apps is not None else None
            head = (lambda a=app: a.latest_height()) if app is not None else (lambda: 0)
            cfg = make_config(i, bootstrap=boot, secret=secrets[i] if secrets else None, chain_id=chain_id,
                              genesis_hash=genesis_hash)
            node = P2PNode(cfg, policies=policies, app=app, head_height=head)
            nodes.append(await stack.enter_async_context(node.run()))
        yield nodes


async def wait_full_mesh(nodes: list[P2PNode], name: str) -> None:
    """Every node has handshaken with all others and meshes topic `name` with min(n - 1, 4) of them."""
    for node in nodes:
        await node.host.wait_peers(len(nodes) - 1)
    for node in nodes:
        while node.gossip.mesh_size(name) < min(len(nodes) - 1, 4):
            # GossipSub only has per-peer mesh events; the members are up to its heartbeat
            others = [n.peer_id for n in nodes if n is not node and n.peer_id not in node.gossip.mesh_peers(name)]
            with trio.move_on_after(1.0):
                await node.gossip.wait_mesh(name, others[:1])


class LibP2PNet:
    """Stands in for consensus.memnet.MemNetwork in consensus.cluster.Cluster: node i's endpoint is the
    consensus transport of a real libp2p host (full mesh on 127.0.0.1): the direct streams the daemon
    uses (`transport="direct"`) or the gossip topic (`"gossip"`). Call `attach_apps` before `run` for
    the hosts to serve chain sync."""

    def __init__(self, n: int, *, validators: set[Address] | None = None, secrets: list[bytes] | None = None,
                 chain_id: int = TEST_CHAIN_ID, genesis_hash: bytes = TEST_GENESIS,
                 transport: str = "direct") -> None:
        if transport not in ("direct", "gossip"):
            raise ValueError(f"transport must be 'direct' or 'gossip', got {transport!r}")
        self.n = n
        self.transport = transport
        self._secrets, self._chain_id, self._genesis_hash = secrets, chain_id, genesis_hash
        known = validators.__contains__ if validators is not None else None
        self._policies = {CONSENSUS: TopicPolicy(MAX_GOSSIP_BYTES, known_sender=known)}
        self._apps: list[Application] | None = None
        self.nodes: list[P2PNode] = []
        self.networks: list[Network] = []

    def attach_apps(self, apps: list[Application]) -> None:
        self._apps = apps

    @asynccontextmanager
    async def run(self) -> AsyncIterator[LibP2PNet]:
        async with full_mesh(self.n, policies=self._policies, apps=self._apps, secrets=self._secrets,
                             chain_id=self._chain_id, genesis_hash=self._genesis_hash) as nodes, \
                trio.open_nursery() as nursery:
            self.nodes = nodes
            await wait_full_mesh(nodes, CONSENSUS)
            for node in nodes:
                if self.transport == "direct":
                    self.networks.append(node.consensus)
                else:
                    net = ConsensusNetwork(node.gossip)
                    await nursery.start(net.run)
                    self.networks.append(net)
            yield self
            nursery.cancel_scope.cancel()

    def endpoint(self, node: int) -> Network:
        return self.networks[node]

    def connected_endpoint(self, node: int) -> Network | None:
        return self.networks[node] if node < len(self.networks) else None

    def disconnect(self, node: int) -> None:
        raise NotImplementedError("crash tests run on consensus.memnet")
