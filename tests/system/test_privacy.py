"""System test: differential privacy with real daemons started through the CLI, a real chain and libp2p.

Three daemons on the tiny task with participant-level DP (DP-FedAvg) and a budget calibrated for 3 rounds:
every node clips and noises its update with its own private randomness, every commit carries the epsilon
its participant has spent, the swarm still agrees on every aggregate, and once a fourth update would exceed
the budget the nodes stop contributing (the contract would refuse it: tests/unit/test_contracts_privacy.py).
`swarmnode chain privacy` shows the ledger.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from swarmnode.node.localnet import LocalSwarm, run_cli, running_swarm, wait_for
from swarmnode.privacy.config import PrivacyConfig, epsilon_to_micro
from swarmnode.privacy.dp import epsilon_after

pytestmark = pytest.mark.slow

EPSILON, ROUNDS = 2.0, 3
ROUND_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    with running_swarm(tmp_path_factory.mktemp("privacy"), 3, "tiny", genesis_args=("--dp", "participant", "--epsilon", str(EPSILON), "--dp-rounds", str(ROUNDS))) as s:
        yield s


def test_dp_swarm_agrees_spends_its_budget_and_stops_at_it(swarm: LocalSwarm) -> None:
    finals = wait_for(lambda: (h := swarm.final_hashes(0)) and len(h) >= ROUNDS and h, ROUNDS * ROUND_TIMEOUT,
                      f"{ROUNDS} final rounds\n{swarm.tail(0)}")
    for i in (1, 2):
        theirs = wait_for(lambda i=i: (h := swarm.final_hashes(i)) and len(h) >= ROUNDS and h, ROUND_TIMEOUT,
                          f"node{i} to see {ROUNDS} final rounds")
        assert all(theirs[r] == finals[r] for r in range(ROUNDS)), f"node{i} disagrees: {theirs} vs {finals}"
    # the ledger: every participant committed ROUNDS times, each claim the accountant's figure, the last
    # one within the budget (noise calibrated so that ROUNDS releases spend it)
    cfg = PrivacyConfig.from_dict({"dp": "participant", "epsilon": EPSILON, "rounds": ROUNDS})
    table = (swarm.base / "genesis.toml").read_text()
    z = float(table.split("noise_multiplier = ")[1].split()[0])
    ledger = json.loads(run_cli("chain", "privacy", "--json", "--rpc", swarm.nodes[1].rpc_url).stdout)
    assert ledger["epsilonBudget"] == EPSILON and ledger["delta"] == pytest.approx(1e-5)
    rows = ledger["participants"]
    assert len(rows) == 3 and all(r["releases"] == ROUNDS for r in rows), rows
    expected = epsilon_to_micro(epsilon_after(cfg, ROUNDS, z)) / 1e6
    assert all(r["epsilonSpent"] == pytest.approx(expected, abs=1e-6) for r in rows), (rows, expected)
    assert all(0 < r["epsilonSpent"] <= EPSILON for r in rows)
    per_commit = [[c["epsilonSpent"] for c in swarm.rpc(0, "swarm_getRound", r)["commits"]] for r in range(ROUNDS)]
    for r, claims in enumerate(per_commit):
        want = epsilon_to_micro(epsilon_after(cfg, r + 1, z))
        assert claims and all(int(c) == want for c in claims), (r, claims, want)
    # a fourth update would exceed the budget: each node says so and commits nothing more
    for i in range(3):
        wait_for(lambda i=i: "event=privacy_budget_exhausted" in swarm.nodes[i].log_path.read_text(), ROUND_TIMEOUT,
                 f"node{i} to stop at its budget\n{swarm.tail(i)}")
    assert swarm.rpc(0, "swarm_getRound", ROUNDS)["commits"] == []
    text = run_cli("chain", "privacy", "--rpc", swarm.nodes[0].rpc_url).stdout
    assert "budget per participant: epsilon 2" in text and "100.0%" not in text.splitlines()[0], text
    print("\n" + text)
