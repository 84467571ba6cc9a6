"""The BFT driver over real libp2p: 4 validators commit blocks; a 5th node syncs from scratch over
/swarmnode/sync/1, verifying every certificate, then follows the chain as an observer. Run over both
consensus transports: the direct streams the daemon uses and the gossip topic."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from consensus.cluster import Cluster
from consensus.driver import ConsensusDriver, DriverConfig
from consensus.interfaces import Network
from consensus.memapp import InMemoryApplication
from consensus.signing_record import SigningRecord
from consensus.votes import address_of
from swarmnode.p2p.consensus_net import ConsensusNetwork
from swarmnode.p2p.node import P2PNode
from swarmnode.p2p.testing import TEST_CHAIN_ID, LibP2PNet, make_config, node_secret

VALIDATORS = 4
TARGET = 6


@pytest.mark.parametrize("transport", ["direct", "gossip"])
async def test_four_validators_commit_over_libp2p_and_a_fifth_syncs_from_scratch(transport: str) -> None:
    # Prepare
    keys = [node_secret(i) for i in range(VALIDATORS)]
    net = LibP2PNet(VALIDATORS, validators={address_of(k) for k in keys}, transport=transport)
    config = DriverConfig(chain_id=TEST_CHAIN_ID, block_interval=0.05)
    cluster = Cluster(VALIDATORS, config, net=net, keys=keys)  # type: ignore[arg-type]
    net.attach_apps(cluster.apps)
    async with cluster.run():
        # Execute: consensus over libp2p
        with trio.fail_after(60):
            await cluster.wait_height(TARGET)
        for i in range(1, VALIDATORS):
            assert cluster.committed(i)[:TARGET] == cluster.committed(0)[:TARGET], f"validator {i} diverged"
        assert sum(n.counters["sent"] for n in net.networks) > 0  # type: ignore[attr-defined]

        # Execute: a fresh node syncs the chain, then follows it
        app = InMemoryApplication(cluster.validators)
        late = P2PNode(make_config(VALIDATORS, bootstrap=tuple(net.nodes[0].listen_addrs())),
                       app=app, head_height=app.latest_height)
        async with late.run(), trio.open_nursery() as nursery:
            with trio.fail_after(20):
                await late.host.wait_peers(1)
                height = await late.catch_up()
            assert height >= TARGET, f"synced only to {height}"
            assert late.sync is not None and late.sync.statistics()["verified_certificates"] == height
            assert app.blocks == cluster.committed(0)[:height]

            if transport == "direct":
                network: Network = late.consensus
            else:
                network = ConsensusNetwork(late.gossip)
                await nursery.start(network.run)
            observer = ConsensusDriver(config, app, network, None, SigningRecord.open(None))
            await nursery.start(observer.run)
            with trio.fail_after(30):
                await observer.wait_height(height + 2)
            assert app.blocks[: height + 2] == cluster.committed(0)[: height + 2]
            nursery.cancel_scope.cancel()


async def test_a_node_far_behind_the_window_catches_up_through_the_driver() -> None:
    """A node whose chain is more heights behind than its consensus window takes (a partition healed
    after minutes, a long pause) must not treat the validators' current votes as invalid and cut them off:
    its driver asks for the missing blocks and catches up without a restart."""
    from consensus.messages import MAX_MESSAGE_BYTES
    from swarmnode.p2p.consensus_net import height_window
    from swarmnode.p2p.topics import CONSENSUS, TopicPolicy

    keys = [node_secret(i) for i in range(VALIDATORS)]
    net = LibP2PNet(VALIDATORS, validators={address_of(k) for k in keys})
    config = DriverConfig(chain_id=TEST_CHAIN_ID, block_interval=0.02)
    cluster = Cluster(VALIDATORS, config, net=net, keys=keys)  # type: ignore[arg-type]
    net.attach_apps(cluster.apps)
    behind, ahead = 4, 8  # a small window, so the test need not wait for hundreds of heights
    async with cluster.run():
        with trio.fail_after(120):
            await cluster.wait_height(3 * (behind + ahead))
        app = InMemoryApplication(cluster.validators)
        policy = TopicPolicy(MAX_MESSAGE_BYTES, window=height_window(app.latest_height, behind=behind, ahead=ahead))
        late = P2PNode(make_config(VALIDATORS, bootstrap=tuple(net.nodes[0].listen_addrs())),
                       policies={CONSENSUS: policy}, head_height=app.latest_height)
        async with late.run(), trio.open_nursery() as nursery:
            # and more heights behind than the driver's own look-ahead (max_heights_ahead): "far ahead" too
            observer = ConsensusDriver(replace(config, max_heights_ahead=ahead), app, late.consensus, None,
                                       SigningRecord.open(None))
            await nursery.start(observer.run)
            target = cluster.driver(0).committed_height + 5
            with trio.fail_after(60):
                await observer.wait_height(target)
            assert app.blocks[:target] == cluster.committed(0)[:target]
            stats = late.consensus.statistics()
            assert stats.get("outside_window", 0) > 0, "the window was never exceeded: the test proves nothing"
            assert stats.get("streams_reset", 0) == 0, f"honest validators were cut off: {stats}"
            nursery.cancel_scope.cancel()
