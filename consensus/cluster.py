"""N consensus drivers in one trio process over the in-memory network: for tests and benchmarks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from eth_utils import keccak

from consensus.driver import ConsensusDriver, DriverConfig
from consensus.engine.validators import ValidatorSet
from consensus.interfaces import Application
from consensus.memapp import InMemoryApplication
from consensus.memnet import MemNetwork
from consensus.signing_record import SigningRecord
from consensus.votes import address_of


def validator_key(i: int) -> bytes:
    """Deterministic test key of validator i."""
    return keccak(f"swarmnode-test-validator-{i}".encode())


@dataclass
class _Node:
    driver: ConsensusDriver
    scope: trio.CancelScope
    stopped: trio.Event


class Cluster:
    """Validators 0..n-1 with `powers` (default 1 each); node i's signing record is in `record_dir`."""

    def __init__(self, n: int, config: DriverConfig, *, powers: list[int] | None = None,
                 record_dir: Path | None = None, net: MemNetwork | None = None,
                 keys: list[bytes] | None = None,
                 app_factory: Callable[[int, ValidatorSet], Application] | None = None) -> None:
        self.n = n
        self.config = config
        self.keys = keys or [validator_key(i) for i in range(n)]
        self.addresses = [address_of(k) for k in self.keys]
        powers = powers or [1] * n
        self.validators = ValidatorSet.from_powers(dict(zip(self.addresses, powers, strict=True)))
        make_app = app_factory or (lambda i, vset: InMemoryApplication(vset))
        self.apps: list[Any] = [make_app(i, self.validators) for i in range(n)]
        self.net = net or MemNetwork(n)
        self.record_dir = record_dir
        self.nodes: dict[int, _Node] = {}
        self._nursery: trio.Nursery | None = None

    def record_path(self, i: int) -> Path | None:
        return self.record_dir / f"signing-{i}.rec" if self.record_dir else None

    def driver(self, i: int) -> ConsensusDriver:
        return self.nodes[i].driver

    @asynccontextmanager
    async def run(self, nodes: list[int] | None = None) -> AsyncIterator[Cluster]:
        async with self.net.run(), trio.open_nursery() as nursery:
            self._nursery = nursery
            starting = list(nodes if nodes is not None else range(self.n))
            for i in starting:  # all endpoints first: nobody misses the first proposal
                self.net.endpoint(i)
            for i in starting:
                await self.start(i)
            yield self
            nursery.cancel_scope.cancel()

    async def start(self, i: int) -> ConsensusDriver:
        """(Re)start node i with its app state and signing record as they are on 'disk'."""
        if self._nursery is None:
            raise RuntimeError("Cluster.start() needs a running Cluster.run()")
        record = SigningRecord.open(self.record_path(i))
        endpoint = self.net.connected_endpoint(i) or self.net.endpoint(i)
        driver = ConsensusDriver(self.config, self.apps[i], endpoint, self.keys[i], record,
                                 wall_clock=trio.current_time)
        node = _Node(driver, trio.CancelScope(), trio.Event())
        self.nodes[i] = node
        await self._nursery.start(self._run_node, node)
        return driver

    async def _run_node(self, node: _Node, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with node.scope:
                await node.driver.run(task_status=task_status)
        finally:
            node.stopped.set()

    async def crash(self, i: int) -> None:
        """Stop node i abruptly: its network endpoint vanishes and its tasks are cancelled."""
        self.net.disconnect(i)
        node = self.nodes[i]
        node.scope.cancel()
        await node.stopped.wait()

    async def wait_height(self, height: int, nodes: list[int] | None = None) -> None:
        for i in nodes if nodes is not None else sorted(self.nodes):
            await self.nodes[i].driver.wait_height(height)

    def committed(self, i: int) -> list[bytes]:
        """Committed blocks of node i (InMemoryApplication only)."""
        return list(self.apps[i].blocks)
