"""Chain sync over /swarmnode/sync/1: real execution chains (py-evm) under BFT over libp2p, a late node
that verifies every certificate, and a lying peer whose blocks are never committed."""

from __future__ import annotations

import trio

from consensus.certificate import CommitCertificate
from consensus.chain import ExecutionChain
from consensus.chain_app import ChainApplication
from consensus.cluster import Cluster
from consensus.devtools import address_of, dev_genesis, dev_key, sign_tx
from consensus.driver import DriverConfig
from consensus.memapp import InMemoryApplication
from consensus.txpool import TxPool
from swarmnode.p2p.appguard import SerializedApplication
from swarmnode.p2p.node import P2PNode
from swarmnode.p2p.testing import LibP2PNet, make_config, node_secret, star

N = 4
TARGET = 3


async def test_real_chains_over_libp2p_and_late_node_syncs_verified(tmp_path) -> None:
    # Prepare: 4 validators with py-evm chains; dev key i is both chain account and libp2p identity.
    genesis = dev_genesis(N, N + 1, chain_id=4343)
    keys = [dev_key(i) for i in range(N)]
    chains = [ExecutionChain.open(tmp_path / f"node{i}", genesis, sync_writes=False) for i in range(N + 1)]
    pools = [TxPool(genesis.chain_id, chains[i].decode_transaction) for i in range(N)]
    apps = [SerializedApplication(ChainApplication(chains[i], address_of(keys[i]), pool=pools[i]))
            for i in range(N)]
    net = LibP2PNet(N, validators={address_of(k) for k in keys}, secrets=keys, chain_id=genesis.chain_id,
                    genesis_hash=chains[0].genesis_hash)
    config = DriverConfig(chain_id=genesis.chain_id, block_interval=0.2)
    cluster = Cluster(N, config, net=net, keys=keys, app_factory=lambda i, vset: apps[i])  # type: ignore[arg-type]
    net.attach_apps(apps)
    raw = sign_tx(dev_key(N), genesis.chain_id, 0, to=address_of(dev_key(0)), value=10**18)
    for i in range(N):
        pools[i].add_raw(raw, chains[i].state_view(), chains[i].next_base_fee())
    try:
        async with cluster.run():
            with trio.fail_after(60):
                await cluster.wait_height(TARGET)
            # Execute: a fresh node syncs from the validators
            late_app = ChainApplication(chains[N], address_of(dev_key(N)))
            cfg = make_config(N, secret=dev_key(N), chain_id=genesis.chain_id, genesis_hash=chains[N].genesis_hash,
                              bootstrap=tuple(net.nodes[0].listen_addrs()))
            late = P2PNode(cfg, app=late_app, head_height=lambda: chains[N].height)
            async with late.run():
                with trio.fail_after(30):
                    await late.host.wait_peers(1)
                    height = await late.catch_up()
        # Assert
        assert height >= TARGET
        assert late.sync is not None and late.sync.statistics()["verified_certificates"] == height
        for h in range(1, height + 1):
            assert chains[N].reader.block_by_number(h).hash == chains[0].reader.block_by_number(h).hash
        txs = sum(len(chains[N].reader.block_by_number(h).transactions) for h in range(1, height + 1))
        assert txs == 1, f"the transfer should be in the synced chain once, found {txs}"
    finally:
        for chain in chains:
            chain.close()


class LyingApplication(InMemoryApplication):
    """Serves its committed blocks with certificates whose signatures are garbled."""

    def committed_block(self, height: int) -> tuple[bytes, CommitCertificate] | None:
        found = super().committed_block(height)
        if found is None:
            return None
        block, cert = found
        bad = tuple(sig[:10] + bytes([sig[10] ^ 1]) + sig[11:] for sig in cert.signatures)
        return block, CommitCertificate(cert.chain_id, cert.height, cert.round, cert.block_hash, bad)


async def test_liar_is_skipped_and_nothing_unverified_is_committed() -> None:
    # Prepare: build a 5-block chain on the in-memory network, copy it to a liar and an honest server.
    keys = [node_secret(i) for i in range(N)]
    config = DriverConfig(chain_id=31337, block_interval=0.0)
    cluster = Cluster(N, config, keys=keys)
    async with cluster.run():
        with trio.fail_after(30):
            await cluster.wait_height(5)
    source = cluster.apps[0]
    liar, honest = LyingApplication(cluster.validators), InMemoryApplication(cluster.validators)
    for app in (liar, honest):
        app.blocks, app.certificates = list(source.blocks), list(source.certificates)

    async with star(1) as (hub,):
        addrs = tuple(hub.listen_addrs())
        servers = [P2PNode(make_config(10 + k, bootstrap=addrs), app=a, head_height=a.latest_height)
                   for k, a in enumerate((liar, honest))]
        fresh = InMemoryApplication(cluster.validators)
        client = P2PNode(make_config(20, bootstrap=addrs), app=fresh)
        async with servers[0].run(), servers[1].run(), client.run():
            for server in servers:
                await client.host.connect(server.listen_addrs()[0])
            with trio.fail_after(20):
                await client.host.wait_peers(3)
            assert client.sync is not None
            # Execute: only the liar
            height = await client.sync.catch_up([servers[0].peer_id])
            assert height == 0 and fresh.blocks == [], "a block with a bad certificate was committed"
            # Execute: liar first, then the honest server
            height = await client.sync.catch_up([servers[0].peer_id, servers[1].peer_id])
        assert height == len(source.blocks)
        assert fresh.blocks == source.blocks
        stats = client.sync.statistics()
        assert stats["peer_failed"] == 2 and stats["verified_certificates"] == height, stats
