"""TxSender on a real chain (py-evm on LevelDB, the node's chain executor): a call is followed until it is
included, or reported lost when a wallet using the same account replaces it in the pool or takes its
nonce on chain; a lost call sent again gets a fresh nonce; stale calls are gossiped again."""

from __future__ import annotations

from pathlib import Path

import trio

from consensus.chain import ExecutionChain
from consensus.chain_app import ChainApplication
from consensus.devtools import address_of, dev_genesis, dev_key, sign_tx
from consensus.executor import ChainExecutor
from consensus.service import ChainService, make_pool
from swarmnode.node import txs
from swarmnode.node import txsender as ts
from swarmnode.node.txsender import Included, Lost, TxSender

ME = 1


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.genesis = dev_genesis(1, 3, chain_id=4549)
        self.chain = ExecutionChain.open(tmp / "c", self.genesis, sync_writes=False)
        self.pool = make_pool(self.chain)
        self.executor = ChainExecutor()
        self.service = ChainService(self.chain, self.pool, executor=self.executor)
        self.published: list[bytes] = []
        self.sender = TxSender(dev_key(ME), address_of(dev_key(ME)), self.genesis.chain_id, self.service,
                               publish=self._publish, notify=lambda: None)

    async def _publish(self, raw: bytes) -> None:
        self.published.append(raw)

    async def block(self) -> None:
        """The next block, built from the pool (every pending transaction that fits)."""
        app = ChainApplication(self.chain, address_of(dev_key(0)), pool=self.pool)

        def build_and_commit() -> None:
            built = app.propose_block(self.chain.height + 1, 0, self.chain.head.timestamp + 1)
            self.chain.commit(self.chain.block_hash(built))
            self.pool.prune(self.chain.state_view())

        await self.executor.run(build_and_commit)

    async def wallet(self, nonce: int, fee: int) -> None:
        """A transfer from the node's own account, as a wallet would send it, into the same pool."""
        raw = sign_tx(dev_key(ME), self.genesis.chain_id, nonce, to=b"\x22" * 20, value=1, max_fee=fee, tip=fee)
        await self.service.run(lambda: self.pool.add_raw(raw, self.chain.state_view(), self.chain.next_base_fee()))


def attest(r: int) -> bytes:
    return txs.attest_data(r, bytes([r + 1]) * 32)


async def test_included_calls_are_reported_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    async with h.executor.running(final=h.chain.close):
        tx_hash = await h.sender.send(("attest", 0), attest(0))
        assert await h.sender.check() == [], "pending: no outcome yet"
        await h.block()
        outcomes = await h.sender.check()
        assert len(outcomes) == 1 and isinstance(outcomes[0], Included) and outcomes[0].tx_hash == tx_hash
        assert not outcomes[0].success, "attesting a round whose window is open reverts"
        assert await h.sender.check() == [] and h.sender.statistics()["followed"] == 0


async def test_a_wallet_replacing_the_call_in_the_pool_makes_it_lost_and_the_resend_gets_a_fresh_nonce(
        tmp_path: Path) -> None:
    h = Harness(tmp_path)
    async with h.executor.running(final=h.chain.close):
        await h.sender.send(("commit", 0), attest(0))
        await h.wallet(nonce=0, fee=50 * 10**9)  # same nonce, higher fee: replaces ours in the pool
        (lost,) = await h.sender.check()
        assert isinstance(lost, Lost) and "no longer in the pool" in lost.reason
        await h.sender.send(("commit", 0), attest(0))  # the round machine still wants it
        assert h.sender.followed()[0].nonce == 1, "the wallet's transaction holds nonce 0"
        await h.block()
        (included,) = await h.sender.check()
        assert isinstance(included, Included)
        assert h.chain.state_view().get_nonce(address_of(dev_key(ME))) == 2


async def test_a_wallet_taking_the_nonce_on_chain_makes_the_call_lost(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    async with h.executor.running(final=h.chain.close):
        await h.sender.send(("commit", 0), attest(0))
        # the wallet's transaction with the same nonce reached a proposer elsewhere and was included: here it
        # is imported as part of a block, and our copy leaves the pool with the commit's pruning
        raw = sign_tx(dev_key(ME), h.genesis.chain_id, 0, to=b"\x22" * 20, value=1, max_fee=50 * 10**9, tip=10**9)

        def other_block() -> None:
            tx = h.chain.decode_transaction(raw)
            built = h.chain.build_block([tx], coinbase=address_of(dev_key(0)), now=h.chain.head.timestamp + 1)
            h.chain.commit(built.hash)

        await h.executor.run(other_block)
        (lost,) = await h.sender.check()
        assert isinstance(lost, Lost) and "nonce 0 was used by another transaction" in lost.reason


async def test_calls_not_yet_included_are_gossiped_again(tmp_path: Path, autojump_clock: object) -> None:
    h = Harness(tmp_path)
    async with h.executor.running(final=h.chain.close):
        await h.sender.send(("commit", 0), attest(0))
        assert len(h.published) == 1
        await trio.sleep(ts.REGOSSIP_SECONDS - 0.1)
        assert await h.sender.regossip() == 0, "too soon"
        await trio.sleep(0.1)
        assert await h.sender.regossip() == 1 and h.published[1] == h.published[0]
        await h.block()
        await h.sender.check()
        await trio.sleep(ts.REGOSSIP_SECONDS)
        assert await h.sender.regossip() == 0, "an included call is not gossiped again"


async def test_a_pending_call_of_a_past_round_is_cancelled_so_later_ones_are_not_stuck_behind_it(
        tmp_path: Path) -> None:
    """A call sent while the node was cut off is still pending when its round is long past: peers refuse
    commits for past rounds, so it would hold its nonce for ever and every later transaction of ours would
    wait behind the gap. Forgetting it replaces it with a 0-value transfer to ourselves at that nonce."""
    h = Harness(tmp_path)
    me = address_of(dev_key(ME))
    async with h.executor.running(final=h.chain.close):
        old = await h.sender.send(("commit", 3), attest(3))
        done = await h.sender.send(("attest", 3), attest(3))
        assert await h.sender.forget_before(3) == 0, "nothing of an earlier round"
        assert await h.sender.forget_before(4) == 2 and h.sender.statistics()["followed"] == 0
        assert old not in h.pool and done not in h.pool, "both replaced in the pool"
        cancels = [h.chain.decode_transaction(raw) for raw in h.published[-2:]]
        assert [(int(t.nonce), bytes(t.to), int(t.value)) for t in cancels] == [(0, me, 0), (1, me, 0)]
        new = await h.sender.send(("commit", 5), attest(5))
        assert h.sender.followed()[0].nonce == 2, "the next call goes after the cancelled nonces"
        await h.block()
        assert h.chain.state_view().get_nonce(me) == 3
        (included,) = await h.sender.check()
        assert isinstance(included, Included) and included.tx_hash == new
        assert await h.sender.forget_before(10) == 0, "an included call needs no cancelling"
