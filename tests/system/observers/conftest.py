"""One running swarm (3 daemons, tiny task) for every test in this package: the tests here watch it through
/metrics, `swarmnode status` and `swarmnode report` and leave its chain alone, so they share its start-up
(about 20 s) and its first rounds. It is stopped when the package's last test is done."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from swarmnode.node.localnet import LocalSwarm, running_swarm


@pytest.fixture(scope="package")
def observed_swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    with running_swarm(tmp_path_factory.mktemp("observed"), 3, "tiny") as s:
        yield s
