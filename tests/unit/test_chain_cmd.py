"""`swarmnode chain rounds` / `chain round`: the held-out score of each round's base model next to the
committers' own training metrics, in the table and in --json."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from swarmnode.cli import chain_cmd


def commit(acc: int, held_acc: int = 0, held_n: int = 0) -> dict[str, Any]:
    return {"participant": "0xAb", "updateHash": "0x11", "numSamples": 100, "localLoss": 250_000,
            "localAccuracy": acc, "heldOutLoss": 500_000 if held_n else 0, "heldOutAccuracy": held_acc,
            "heldOutCount": held_n, "blockNumber": 3}


def round_(r: int, commits: list[dict[str, Any]]) -> dict[str, Any]:
    return {"round": r, "commitCount": len(commits), "participantCount": 3, "finalized": True,
            "finalHash": "0x" + "ab" * 32, "openBlock": 1, "closeBlock": 4, "finalBlock": 5,
            "attestationCount": 2, "commits": commits}


# two scorers (30 and 10 examples) and one node without a held-out split
SCORED = round_(1, [commit(900_000, 800_000, 30), commit(950_000, 600_000, 10), commit(910_000)])
UNSCORED = round_(0, [commit(900_000), commit(800_000)])


class FakeRpc:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def call(self, method: str, *params: Any) -> Any:
        return self.answers[method]


def run(monkeypatch: pytest.MonkeyPatch, fn: Any, answers: dict[str, Any], **args: Any) -> None:
    monkeypatch.setattr(chain_cmd, "client", lambda a: FakeRpc(answers))
    assert fn(argparse.Namespace(**args)) == 0


def test_summary_weights_the_held_out_accuracy_by_examples_scored() -> None:
    s = chain_cmd.round_summary(SCORED)
    assert s["baseHeldOutAccuracy"] == pytest.approx((0.8 * 30 + 0.6 * 10) / 40)
    assert (s["heldOutScorers"], s["heldOutExamples"]) == (2, 40)
    assert s["meanAccuracy"] == pytest.approx((0.9 + 0.95 + 0.91) / 3), "the local mean is unweighted, as before"
    none = chain_cmd.round_summary(UNSCORED)
    assert (none["baseHeldOutAccuracy"], none["heldOutScorers"], none["heldOutExamples"]) == (None, 0, 0)


def test_summary_of_commits_from_a_contract_without_held_out_scores() -> None:
    old = round_(0, [{k: v for k, v in commit(900_000).items() if not k.startswith("heldOut")}])
    assert chain_cmd.round_summary(old)["baseHeldOutAccuracy"] is None


def test_rounds_table_and_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run(monkeypatch, chain_cmd.cmd_rounds, {"swarm_roundHistory": [UNSCORED, SCORED]}, count=100, json=False)
    header, _, row0, row1 = capsys.readouterr().out.splitlines()
    assert "base held-out acc" in header
    assert " - " in row0 and "75.0% (2)" in row1, (row0, row1)

    run(monkeypatch, chain_cmd.cmd_rounds, {"swarm_roundHistory": [UNSCORED, SCORED]}, count=100, json=True)
    rows = json.loads(capsys.readouterr().out)
    assert [r["baseHeldOutAccuracy"] for r in rows] == [None, 0.75]
    assert [r["heldOutExamples"] for r in rows] == [0, 40]


def test_round_detail_shows_each_commits_held_out_score(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run(monkeypatch, chain_cmd.cmd_round, {"swarm_getRound": SCORED}, round=1, json=False)
    lines = capsys.readouterr().out.splitlines()
    assert "base model on held-out splits: 75.0% (2 committers, 40 examples)" in lines[1]
    assert "held-out acc" in lines[2] and "held-out n" in lines[2]
    cells = [line.split() for line in lines[4:]]
    assert [(c[5], c[6]) for c in cells] == [("80.0%", "30"), ("60.0%", "10"), ("-", "0")], cells


PARTICIPANTS = [
    {"index": 0, "address": "0xa0", "active": True, "epsilonSpent": 2_345_678, "dpReleases": 7,
     "shareKey": "0x" + "11" * 32},
    {"index": 1, "address": "0xa1", "active": False, "epsilonSpent": 3_000_000, "dpReleases": 9,
     "shareKey": "0x" + "00" * 32},
]


def test_privacy_ledger_table_and_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    config = {"epsilonBudget": 3_000_000, "secureAggregation": True}
    answers = {"swarm_roundsConfig": config, "swarm_participants": PARTICIPANTS,
               "swarm_node": {"privacy": {"dp": "participant", "epsilon": 3.0, "delta": 1e-5}}}
    run(monkeypatch, chain_cmd.cmd_privacy, answers, json=True)
    ledger = json.loads(capsys.readouterr().out)
    assert (ledger["epsilonBudget"], ledger["delta"], ledger["secureAggregation"]) == (3.0, 1e-5, True)
    a, b = ledger["participants"]
    assert (a["epsilonSpent"], a["releases"], a["shareKey"]) == (2.345678, 7, True)
    assert a["epsilonRemaining"] == pytest.approx(0.654322) and a["budgetUsedPct"] == pytest.approx(78.18926667)
    assert (b["epsilonRemaining"], b["budgetUsedPct"], b["active"], b["shareKey"]) == (0.0, 100.0, False, False)
    run(monkeypatch, chain_cmd.cmd_privacy, answers, json=False)
    out = capsys.readouterr().out
    assert "budget per participant: epsilon 3, delta 1e-05" in out and "secure aggregation: on" in out
    assert "2.345678" in out and "78.2%" in out and "0xa1 (left)" in out and "100.0%" in out


def test_privacy_ledger_without_a_budget(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    answers = {"swarm_roundsConfig": {"epsilonBudget": 0, "secureAggregation": False},
               "swarm_participants": [dict(PARTICIPANTS[0], epsilonSpent=0, dpReleases=0)], "swarm_node": {}}
    run(monkeypatch, chain_cmd.cmd_privacy, answers, json=False)
    out = capsys.readouterr().out
    assert "differential privacy: off" in out and "secure aggregation: off" in out
    run(monkeypatch, chain_cmd.cmd_privacy, answers, json=True)
    ledger = json.loads(capsys.readouterr().out)
    assert ledger["epsilonBudget"] is None and ledger["participants"][0]["epsilonRemaining"] is None
