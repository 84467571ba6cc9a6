"""Consensus scenarios on the in-memory network: nN = validators, fF = faulty. Time is a MockClock.

Every scenario checks safety (no two different blocks at one height on any two nodes) and the
liveness or halting it is about.
"""

from __future__ import annotations

import msgpack
import trio

from consensus.cluster import Cluster, validator_key
from consensus.driver import DriverConfig
from consensus.evidence import verify_evidence
from consensus.memnet import MemNetwork, make_equivocator
from consensus.messages import MAX_MESSAGE_BYTES, ProposalMessage, SyncResponse, VoteMessage, decode, encode
from consensus.signing_record import SigningRecord
from consensus.votes import address_of, sign_vote

CHAIN = 7
CONFIG = DriverConfig(chain_id=CHAIN, block_interval=1.0, offload_blocking=False)


def assert_safe(cluster: Cluster) -> None:
    """No two nodes ever committed different blocks at the same height."""
    chains = [cluster.committed(i) for i in range(cluster.n)]
    for height in range(max(len(c) for c in chains)):
        blocks = {c[height] for c in chains if len(c) > height}
        assert len(blocks) == 1, f"height {height + 1}: {len(blocks)} different blocks committed"


def heights(cluster: Cluster, nodes) -> list[int]:
    return [len(cluster.apps[i].blocks) for i in nodes]


async def test_n4f0_liveness_same_blocks_everywhere(autojump_clock):
    cluster = Cluster(4, CONFIG)
    async with cluster.run():
        with trio.fail_after(120):
            await cluster.wait_height(10)
    assert_safe(cluster)
    assert min(heights(cluster, range(4))) >= 10
    assert all(cluster.driver(i).statistics().evidence == 0 for i in range(4))
    # empty blocks keep coming at the configured interval (a node that synced nothing paces by it)
    node = next(i for i in range(4) if cluster.driver(i).counters["synced_blocks"] == 0)
    commits = [cluster.driver(node).timeline[h]["commit"] for h in range(2, 11)]
    gaps = [b - a for a, b in zip(commits, commits[1:], strict=False)]
    assert all(CONFIG.block_interval <= g < CONFIG.block_interval + 1.0 for g in gaps), gaps



async def test_block_interval_is_the_block_time_whatever_consensus_takes(autojump_clock):
    """With 0.1-0.2 s per message a height takes ~0.5 s from start to commit; the next one still starts
    block_interval after this one started, so blocks come block_interval apart, not interval + latency."""
    net = MemNetwork(4, min_delay=0.1, max_delay=0.2, seed=5)
    cluster = Cluster(4, CONFIG, net=net)
    async with cluster.run():
        with trio.fail_after(120):
            await cluster.wait_height(12)
    assert_safe(cluster)
    node = next(i for i in range(4) if cluster.driver(i).counters["synced_blocks"] == 0)
    timeline = cluster.driver(node).timeline
    took = [timeline[h]["commit"] - timeline[h]["start"] for h in range(3, 12)]
    assert min(took) > 0.2, took  # consensus really took a while
    starts = [timeline[h]["start"] for h in range(3, 12)]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(CONFIG.block_interval <= g < CONFIG.block_interval + 0.1 for g in gaps), gaps

async def test_n7f2_silent_with_delay_and_loss(autojump_clock):
    net = MemNetwork(7, min_delay=0.005, max_delay=0.05, loss=0.05, seed=2)
    cluster = Cluster(7, CONFIG, net=net)
    net.set_silent(5)
    net.set_silent(6)
    honest = list(range(5))
    async with cluster.run():
        with trio.fail_after(300):
            await cluster.wait_height(8, honest)
    assert_safe(cluster)
    assert min(heights(cluster, honest)) >= 8
    assert net.counters["lost"] > 0 and net.counters["silenced"] > 0


async def test_n4f1_silent(autojump_clock):
    net = MemNetwork(4)
    cluster = Cluster(4, CONFIG, net=net)
    net.set_silent(3)
    async with cluster.run():
        with trio.fail_after(200):
            await cluster.wait_height(8, [0, 1, 2])
    assert_safe(cluster)
    rounds = [t["round"] for h, t in cluster.driver(0).timeline.items() if "round" in t]
    assert max(rounds) >= 1, "the silent proposer's heights should need a second round"


async def test_n4f1_silent_proposer_stops_costing_the_full_propose_timeout(autojump_clock):
    """After `silent_after` of its turns passed without a proposal, a dead validator's turn costs the short
    propose timeout instead of the full one; a proposal of its (it came back) restores the full one."""
    net = MemNetwork(4)
    config = DriverConfig(chain_id=CHAIN, block_interval=0.1, offload_blocking=False)
    cluster = Cluster(4, config, net=net)
    net.set_silent(3)
    async with cluster.run():
        with trio.fail_after(400):
            await cluster.wait_height(40, [0, 1, 2])
        driver = cluster.driver(0)
        dead_turns = [h for h, t in driver.timeline.items() if t.get("round", 0) >= 1]
        waited = [driver.timeline[h]["commit"] - driver.timeline[h]["start"] for h in dead_turns]
        assert len(waited) >= 6, f"expected several of the dead validator's turns, got heights {dead_turns}"
        first = waited[:config.silent_after]
        assert first and min(first) >= config.timeouts.propose, "its first turns wait the full propose timeout"
        assert max(waited[-3:]) < config.timeouts.propose, f"later turns must be short: {waited}"
        assert driver.counters["short_propose_timeouts"] >= 3
        # nor the precommit timeout: no proposal was seen in its round, there is no value to wait for
        assert driver.counters["short_precommit_timeouts"] >= 3
        short = config.silent_propose_timeout + config.silent_precommit_timeout
        assert max(waited[-3:]) < short + config.timeouts.precommit / 2, f"a dead turn costs ~{short} s: {waited}"
        net.set_silent(3, False)  # it comes back: a proposal of its resets the count
        with trio.fail_after(400):
            await cluster.wait_height(60)
        assert cluster.driver(0)._silent[address_of(cluster.keys[3])] == 0
    assert_safe(cluster)


async def test_n4f1_equivocating_safety_and_evidence(autojump_clock):
    net = MemNetwork(4)
    cluster = Cluster(4, CONFIG, net=net)
    byz = 3

    def forge(block: bytes) -> bytes:  # same height and parent, other timestamp: a valid, different block
        height, parent, ts, payloads = msgpack.unpackb(block)
        return msgpack.packb([height, parent, ts + 1, payloads], use_bin_type=True)

    net.set_tamper(byz, make_equivocator(cluster.keys[byz], CHAIN, forge, cluster.apps[0].block_hash))
    honest = [0, 1, 2]

    def steps_seen(i: int) -> set[int]:
        return {ev.first.step for ev in cluster.driver(i).evidence.pending()}

    async with cluster.run():
        with trio.fail_after(300):
            await cluster.wait_height(8, honest)
            for i in honest:  # double proposals (step 0), prevotes (1) and precommits (2)
                while steps_seen(i) != {0, 1, 2}:
                    await cluster.driver(i).wait_evidence(len(cluster.driver(i).evidence) + 1)
    assert_safe(cluster)
    for i in honest:
        for ev in cluster.driver(i).evidence.pending():
            assert verify_evidence(ev) == cluster.addresses[byz], f"node {i}: evidence against an honest node"


async def test_partition_2_2_then_heal(autojump_clock):
    net = MemNetwork(4)
    cluster = Cluster(4, CONFIG, net=net)
    async with cluster.run():
        with trio.fail_after(60):
            await cluster.wait_height(3)
        net.partition([{0, 1}, {2, 3}])
        before = heights(cluster, range(4))
        await trio.sleep(60)  # a window of partition time, not a synchronization
        during = heights(cluster, range(4))
        assert during == before, f"committed during the partition: {before} -> {during}"
        net.heal()
        with trio.fail_after(120):
            await cluster.wait_height(max(before) + 3)
    assert_safe(cluster)


async def test_crash_and_restart_catches_up_without_double_signing(autojump_clock, tmp_path):
    cluster = Cluster(4, CONFIG, record_dir=tmp_path)
    async with cluster.run():
        with trio.fail_after(60):
            await cluster.wait_height(3)
        await cluster.crash(2)
        slot_at_crash = SigningRecord.open(cluster.record_path(2)).last
        with trio.fail_after(120):
            await cluster.wait_height(len(cluster.apps[2].blocks) + 5, [0, 1, 3])
        behind = len(cluster.apps[2].blocks)
        await cluster.start(2)
        target = max(heights(cluster, [0, 1, 3])) + 2
        with trio.fail_after(120):
            await cluster.wait_height(target)
        assert cluster.driver(2).counters["synced_blocks"] > 0
    assert_safe(cluster)
    assert len(cluster.apps[2].blocks) > behind + 2
    slot_after = SigningRecord.open(cluster.record_path(2)).last
    assert slot_at_crash is not None and slot_after is not None
    assert slot_after.key > slot_at_crash.key, "the record must only move forward"
    for i in (0, 1, 3):
        assert not cluster.driver(i).evidence.pending(), f"node {i} has evidence against the restarted node"


async def test_restarted_node_catches_up_when_its_first_sync_answers_are_lost(autojump_clock, tmp_path):
    """Node 2 restarts behind and another validator crashes at once: the three left need node 2, which must
    catch up first. The answers to its first sync requests are lost; after that the others, stuck
    without it, only re-send their own messages, exact copies node 2 drops as duplicates before decoding
    (a swarm stalled this way in the churn test). Its own stuck loop must ask for the next height again."""
    net = MemNetwork(4)
    cluster = Cluster(4, CONFIG, net=net, record_dir=tmp_path)
    lost_until = [0.0]

    def lose_sync_answers(data: bytes, dst: int) -> list[bytes]:
        if dst == 2 and trio.current_time() < lost_until[0] and isinstance(decode(data), SyncResponse):
            return []
        return [data]

    async with cluster.run():
        with trio.fail_after(60):
            await cluster.wait_height(3)
        await cluster.crash(2)
        with trio.fail_after(120):
            await cluster.wait_height(len(cluster.apps[2].blocks) + 20, [0, 1, 3])
        for src in (0, 1, 3):
            net.set_tamper(src, lose_sync_answers)
        lost_until[0] = trio.current_time() + 5.0
        await cluster.start(2)
        await cluster.crash(3)
        target = max(heights(cluster, [0, 1])) + 3
        with trio.fail_after(300):
            await cluster.wait_height(target, [0, 1, 2])
        assert cluster.driver(2).counters["synced_blocks"] > 0
    assert_safe(cluster)


async def test_restarted_node_uses_votes_it_received_before_reaching_their_height(autojump_clock, tmp_path):
    """The libp2p consensus transport delivers a vote once and drops exact re-sends of it (rebroadcasts
    included). Node 2 restarts far behind while another validator crashes: the two left are stuck at a
    height H waiting for node 2, and their votes for H reach node 2 while it is still catching up. It
    must keep them for when it gets to H: their re-sends will never reach it again (the churn test's
    swarm stalled for good this way)."""
    net = MemNetwork(4)
    cluster = Cluster(4, CONFIG, net=net, record_dir=tmp_path)
    delivered: dict[int, set[bytes]] = {i: set() for i in range(4)}

    def once_per_destination(data: bytes, dst: int) -> list[bytes]:
        if net.connected_endpoint(dst) is None or not isinstance(decode(data), ProposalMessage | VoteMessage):
            return [data]  # sync requests and answers are sent again on purpose, never remembered
        if data in delivered[dst]:
            return []
        delivered[dst].add(data)
        return [data]

    async with cluster.run():
        for src in range(4):
            net.set_tamper(src, once_per_destination)
        with trio.fail_after(60):
            await cluster.wait_height(3)
        await cluster.crash(2)
        with trio.fail_after(120):
            await cluster.wait_height(len(cluster.apps[2].blocks) + 20, [0, 1, 3])
        delivered[2].clear()  # a new process: nothing delivered to it yet
        await cluster.start(2)
        await cluster.crash(3)
        target = max(heights(cluster, [0, 1])) + 3
        with trio.fail_after(300):
            await cluster.wait_height(target, [0, 1, 2])
    assert_safe(cluster)


async def test_restart_refuses_to_sign_against_its_record(autojump_clock, tmp_path):
    """A node whose record says it already precommitted something else at (1, 0) stays silent there, and
    resumes height 1 locked on that value (which no one else has): the others still commit without it."""
    cluster = Cluster(4, CONFIG, record_dir=tmp_path)
    SigningRecord.open(cluster.record_path(1)).record(sign_vote(cluster.keys[1], CHAIN, 1, 0, 2, b"\x5a" * 32))
    async with cluster.run():
        with trio.fail_after(120):
            await cluster.wait_height(4)
    assert_safe(cluster)
    assert cluster.driver(1).counters["sign_refused"] >= 1
    assert cluster.driver(1).counters["resumed_locks"] == 1
    assert all(not cluster.driver(i).evidence.pending() for i in range(4))
    assert SigningRecord.open(cluster.record_path(1)).last.height >= 4


async def test_unequal_stake_over_one_third_offline_halts(autojump_clock):
    net = MemNetwork(4)
    cluster = Cluster(4, CONFIG, powers=[40, 20, 20, 20], net=net)
    net.set_silent(0)  # 40% of the stake
    async with cluster.run():
        await trio.sleep(120)  # a window in which nothing may commit
        assert heights(cluster, range(4)) == [0, 0, 0, 0]
        # 60% cannot form any 2f+1 of prevotes, so no prevote timeout exists: they wait, re-broadcasting
        assert cluster.driver(1).counters["rebroadcasts"] >= 5
        net.set_silent(0, False)  # the big validator comes back: progress resumes
        with trio.fail_after(120):
            await cluster.wait_height(3)
    assert_safe(cluster)


async def test_unequal_stake_under_one_third_offline_progresses(autojump_clock):
    net = MemNetwork(4)
    cluster = Cluster(4, CONFIG, powers=[10, 30, 30, 30], net=net)
    net.set_silent(0)  # 10% of the stake
    async with cluster.run():
        with trio.fail_after(120):
            await cluster.wait_height(5, [1, 2, 3])
    assert_safe(cluster)


async def test_bad_input_is_dropped_with_reasons(autojump_clock):
    net = MemNetwork(5)  # node 4 is an outsider on the network, not a validator
    cluster = Cluster(4, CONFIG, net=net)
    rogue = net.endpoint(4)
    outsider = validator_key(99)
    h = b"\x33" * 32
    good_sig = sign_vote(cluster.keys[0], CHAIN, 1, 0, 1, h)
    forged = type(good_sig)(CHAIN, 1, 0, 1, b"\x44" * 32, good_sig.signature)  # signature of another vote
    junk = [
        b"\xc1\xc1",
        msgpack.packb([1, 99, b"x"]),
        msgpack.packb([1, 2, [CHAIN, 1, 0, 1, h]]),
        b"\x00" * (MAX_MESSAGE_BYTES + 1),
        encode(VoteMessage(forged)),
        encode(VoteMessage(type(good_sig)(CHAIN, 1, 0, 1, h, b"\x00" * 64 + b"\x1b"))),  # unrecoverable
        encode(VoteMessage(sign_vote(outsider, CHAIN, 1, 0, 1, h))),
        encode(VoteMessage(sign_vote(cluster.keys[0], CHAIN, 10_000, 0, 1, h))),
        encode(ProposalMessage(sign_vote(outsider, CHAIN, 1, 0, 0, h), -1, b"block")),
        # a real proposer's signed proposal relayed with swapped block bytes
        encode(ProposalMessage(sign_vote(cluster.keys[0], CHAIN, 1, 0, 0, h), -1, b"not the signed block")),
    ]
    async with cluster.run():
        for data in junk:
            await rogue.broadcast(data)
        with trio.fail_after(120):
            await cluster.wait_height(5)
        for data in junk:  # again, mid-chain
            await rogue.broadcast(data)
        with trio.fail_after(120):
            await cluster.wait_height(7)
    assert_safe(cluster)
    for i in range(4):
        dropped = cluster.driver(i).statistics().dropped
        for reason in ("malformed", "bad_signature", "height_far_ahead"):
            assert dropped.get(reason, 0) >= 1, f"node {i}: no '{reason}' drop in {dropped}"
        assert dropped.get("non_validator", 0) + dropped.get("not_proposer", 0) + dropped.get("stale_height", 0) >= 2
        assert cluster.driver(i).statistics().evidence == 0
    assert address_of(outsider) not in cluster.validators.validators


async def test_idle_chain_slows_to_the_empty_block_interval_and_wakes_for_transactions(autojump_clock):
    from dataclasses import replace

    from consensus.memapp import InMemoryApplication

    class App(InMemoryApplication):
        pending = False

        def has_pending_transactions(self) -> bool:
            return self.pending

    config = replace(CONFIG, empty_block_interval=5.0)
    cluster = Cluster(4, config, app_factory=lambda i, vset: App(vset))
    async with cluster.run():
        with trio.fail_after(120):
            await cluster.wait_height(4)
        idle = [cluster.driver(0).timeline[h]["commit"] for h in range(2, 5)]
        # a transaction reaches one validator only: it starts the next height after block_interval and
        # its proposal (or, if it is not the proposer, its votes after the propose timeout) pulls the idle
        # ones along: slower than busy, faster than idle
        cluster.apps[1].pending = True
        cluster.driver(1).notify_pending()
        start = trio.current_time()
        with trio.fail_after(120):
            await cluster.wait_height(10)
        one_seconds = trio.current_time() - start
        # gossip normally brings it to every validator: blocks come every block_interval
        for i in range(4):
            cluster.apps[i].pending = True
            cluster.driver(i).notify_pending()
        start = trio.current_time()
        with trio.fail_after(120):
            await cluster.wait_height(16)
        all_seconds = trio.current_time() - start
    assert_safe(cluster)
    gaps = [b - a for a, b in zip(idle, idle[1:], strict=False)]
    assert all(5.0 <= g < 6.0 for g in gaps), f"idle blocks should come every ~5 s: {gaps}"
    assert one_seconds < 6 * 5.0, f"6 blocks with a transaction on one validator took {one_seconds:.1f} s"
    assert all_seconds < 6 * 1.5, f"6 blocks with transactions everywhere took {all_seconds:.1f} s"
