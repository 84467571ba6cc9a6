"""Missed votes and the highest height seen (metrics): a validator whose precommit for a decided block never reaches a node by the
next height's start has missed that height there. On the in-memory network with a MockClock."""

from __future__ import annotations

import trio

from consensus.cluster import Cluster
from consensus.driver import DriverConfig
from consensus.memnet import MemNetwork

CONFIG = DriverConfig(chain_id=7, block_interval=1.0, offload_blocking=False)


async def test_n4f0_no_validator_misses_a_height(autojump_clock):
    # delays make the fourth precommit arrive after the decision: a late vote still counts as voted
    cluster = Cluster(4, CONFIG, net=MemNetwork(4, min_delay=0.05, max_delay=0.3, seed=3))
    async with cluster.run():
        with trio.fail_after(120):
            await cluster.wait_height(8)
    for i in range(4):
        driver = cluster.driver(i)
        assert driver.counters["heights_tallied"] >= 6, driver.counters
        assert sum(driver.missed_votes.values()) == 0, (i, dict(driver.missed_votes))
        # the validators' signed messages show how far they are: at least the height this node committed
        assert driver.committed_height <= driver.highest_seen <= driver.committed_height + 1, driver.highest_seen
    assert sum(cluster.driver(i).counters["late_for_decided_height"] for i in range(4)) > 0


async def test_n4f1_the_silent_validator_misses_every_height(autojump_clock):
    net = MemNetwork(4, min_delay=0.005, max_delay=0.05, seed=4)
    cluster = Cluster(4, CONFIG, net=net)
    net.set_silent(3)  # its votes never leave it
    honest = [0, 1, 2]
    async with cluster.run():
        with trio.fail_after(120):
            await cluster.wait_height(8, honest)
    silent = cluster.addresses[3]
    for i in honest:
        driver = cluster.driver(i)
        tallied = driver.counters["heights_tallied"]
        assert tallied >= 6, driver.counters
        assert dict(driver.missed_votes) == {silent: tallied}, (i, dict(driver.missed_votes), tallied)
