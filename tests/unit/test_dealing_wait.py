"""RoundWork's wait before dealing secure-aggregation keys, on a real py-evm chain (LevelDB): while an active
participant has no share key, key posting waits for it, polling the chain. Both sides of each way out:
the missing key lands in a block (dealing goes ahead with every participant), SHARE_KEY_WAIT_S of block
time pass without it (dealing goes ahead without it), and the chain makes no block for
DEALING_WAIT_LIMIT_S local seconds (the wait ends with a WorkError naming how many keys are missing)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trio

from consensus.chain import ExecutionChain
from consensus.chain_app import ChainApplication
from consensus.devtools import DEV_ROUNDS, address_of, dev_genesis, dev_key
from consensus.service import ChainService
from consensus.txpool import TxPool
from swarmnode.learning.tasks import Task
from swarmnode.node import txs
from swarmnode.node import work as work_mod
from swarmnode.node.secagg_node import SecAggNode
from swarmnode.node.store import ModelStore
from swarmnode.node.work import History, RoundWork, WorkError
from swarmnode.p2p.identity import peer_id_of
from swarmnode.privacy.config import PrivacyConfig

PARTICIPANTS = 3
LIMIT_S = 1.5  # DEALING_WAIT_LIMIT_S for these tests (30 s in the daemon): the mechanism, not the constant
POLL_S = 0.05


@dataclass
class Setup:
    chain: ExecutionChain
    service: ChainService
    work: RoundWork
    nodes: list[SecAggNode]
    nonces: list[int]

    def block(self, *calls: tuple[int, bytes], dt: int = 1) -> None:
        """Build and commit the next block holding `calls` (chain thread only: go through service.run)."""
        chain = self.chain
        pool = TxPool(chain.genesis.chain_id, chain.decode_transaction)
        for who, data in calls:
            raw = txs.sign_call(dev_key(who), chain.genesis.chain_id, self.nonces[who], data, chain.next_base_fee())
            pool.add_raw(raw, chain.state_view(), chain.next_base_fee())
            self.nonces[who] += 1
        me = address_of(dev_key(0))
        built = ChainApplication(chain, me, pool=pool).propose_block(chain.height + 1, 0, int(chain.head.timestamp) + dt)
        chain.commit(chain.block_hash(built))
        assert len(chain.reader.block_by_number(chain.height).transactions) == len(calls), "a transaction failed"

    def share_key(self, who: int) -> tuple[int, bytes]:
        return who, self.nodes[who].share_key_calldata()

    reads: int = 0  # times the work read the round's keys (once before the wait, then once per poll)
    _read: trio.Event | None = None

    async def polled(self, times: int) -> None:
        """Return once the wait in progress has read the chain `times` more times (it is waiting)."""
        target = self.reads + times
        while self.reads < target:
            self._read = trio.Event()
            await self._read.wait()


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    monkeypatch.setattr(work_mod, "DEALING_WAIT_LIMIT_S", LIMIT_S)
    monkeypatch.setattr(work_mod, "DEALING_POLL_S", POLL_S)
    genesis = replace(dev_genesis(1, PARTICIPANTS, chain_id=4548, genesis_model_hash=b"\x22" * 32,
                                  rounds=replace(DEV_ROUNDS, min_participants=2)),  # secagg needs 2 at least
                      privacy={"secure_aggregation": True})
    chain = ExecutionChain.open(tmp_path / "chain", genesis, sync_writes=False)
    privacy = PrivacyConfig.from_dict({"secure_aggregation": True})
    nodes = [SecAggNode(key=dev_key(i), chain_id=genesis.chain_id, privacy=privacy, data_dir=tmp_path / f"n{i}")
             for i in range(PARTICIPANTS)]
    service = ChainService(chain)
    work = RoundWork(task=Task(model="mlp", num_clients=1, local_steps=1), genesis_model_hash=b"\x22" * 32,
                     models=ModelStore(tmp_path / "store"), fetcher=None, p2p=None,  # type: ignore[arg-type]
                     service=service, clients=[], test_split=None, history=History(), data_dir=tmp_path / "n0",
                     niceness=0, secagg=nodes[0], me=address_of(dev_key(0)))
    s = Setup(chain, service, work, nodes, [0] * PARTICIPANTS)
    read_keys = work._round_keys

    async def counted(round_: int, *, scan_from: int) -> object:  # the real read, counted
        view = await read_keys(round_, scan_from=scan_from)
        s.reads += 1
        if s._read is not None:
            s._read.set()
        return view

    monkeypatch.setattr(work, "_round_keys", counted)
    s.block(*[(i, txs.register_data(peer_id_of(dev_key(i)).to_base58())) for i in range(PARTICIPANTS)])
    s.block(s.share_key(0))  # only we have a share key: the other two active participants have none
    try:
        yield s
    finally:
        work.stop()
        chain.close()


async def _wait(s: Setup) -> tuple[object, float]:
    """Run the wait as key posting does; (its view, or the WorkError it raised; local seconds it took)."""
    view = await s.work._round_keys(0, scan_from=0)
    assert (view.active, len(view.recipients)) == (PARTICIPANTS, 1)
    started = trio.current_time()
    try:
        result: object = await s.work._wait_for_share_keys(0, view)
    except WorkError as exc:
        result = exc
    return result, trio.current_time() - started


async def test_a_chain_that_makes_no_block_ends_the_wait_at_the_limit_with_a_work_error(setup: Setup) -> None:
    with trio.fail_after(LIMIT_S + 10):
        result, took = await _wait(setup)
    assert isinstance(result, WorkError), result
    assert str(result) == "2 participants have no share key yet"
    assert result.retryable  # the action is tried again: the chain may come back
    assert LIMIT_S <= took < LIMIT_S + 2, took  # not before the limit, and not long after it


async def test_a_share_key_that_lands_before_the_limit_ends_the_wait_with_every_participant(setup: Setup) -> None:
    async def keys_arrive() -> None:
        await setup.polled(2)  # the view before the wait, and one poll inside it
        await setup.service.run(setup.block, setup.share_key(1), setup.share_key(2))

    with trio.fail_after(LIMIT_S + 10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keys_arrive)
            result, took = await _wait(setup)
    assert not isinstance(result, WorkError), result
    assert len(result.recipients) == PARTICIPANTS  # type: ignore[attr-defined]
    assert took < LIMIT_S, took


async def test_share_key_wait_of_block_time_without_the_keys_lets_dealing_go_ahead(setup: Setup) -> None:
    async def blocks_pass(dt: int) -> None:
        await setup.polled(2)  # the view before the wait, and one poll inside it
        await setup.service.run(lambda: setup.block(dt=dt))

    # one second of block time short of SHARE_KEY_WAIT_S: still waiting, so the local limit ends it
    with trio.fail_after(LIMIT_S + 10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocks_pass, work_mod.SHARE_KEY_WAIT_S - 1)
            result, _ = await _wait(setup)
    assert isinstance(result, WorkError), result
    # the full SHARE_KEY_WAIT_S since dealing was first held up: it deals to the one holder, before the limit
    with trio.fail_after(LIMIT_S + 10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocks_pass, 1)
            result, took = await _wait(setup)
    assert not isinstance(result, WorkError), result
    assert len(result.recipients) == 1 and took < LIMIT_S, (result, took)  # type: ignore[attr-defined]
