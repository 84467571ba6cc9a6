"""System test: `swarmnode report` against daemons started through the CLI (tiny task, real chain and libp2p).

Three daemons run a few rounds; the report is made through the CLI as PNG, HTML and JSON, and each part of
it is checked against the chain as other commands and methods read it: `chain rounds --json` (the same
values), swarm_getRound's commits (the held-out loss), block timestamps (round time), swarm_validators at
each round's final block (stake), and SwarmRounds' reward rule (rewards). The report read in pages of one
round gives the same rounds as the CLI's.
"""

from __future__ import annotations

import base64
import json
import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from swarmnode.cli.report_cmd import fetch_report
from swarmnode.cli.report_data import RoundRange
from swarmnode.cli.rpc_client import RpcClient
from swarmnode.node.localnet import LocalSwarm, free_port, run_cli, wait_for

pytestmark = pytest.mark.slow

ROUNDS = 3
ROUND_TIMEOUT = 90.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def swarm(observed_swarm: LocalSwarm) -> LocalSwarm:
    s = observed_swarm
    wait_for(lambda: len(s.final_hashes(0)) >= ROUNDS, ROUNDS * ROUND_TIMEOUT, f"{ROUNDS} final rounds\n{s.tail(0)}")
    return s


@pytest.fixture(scope="module")
def report(swarm: LocalSwarm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`report --json` and `--out report.json` in one run: the same report, on stdout and in the file."""
    out = tmp_path_factory.mktemp("out") / "report.json"
    proc = run_cli("report", "--json", "--out", str(out), "--rounds", f"0:{ROUNDS - 1}", "--rpc", url(swarm))
    printed = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == printed
    assert f"wrote {out}: rounds 0-{ROUNDS - 1}" in proc.stderr
    return printed  # type: ignore[no-any-return]


def url(swarm: LocalSwarm) -> str:
    return str(swarm.nodes[1].rpc_url)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, data[:16]
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_json_series_equal_chain_rounds_and_the_chain_itself(swarm: LocalSwarm, report: dict[str, Any]) -> None:
    chain_rounds = {r["round"]: r for r in json.loads(run_cli("chain", "rounds", "--json", "--rpc", url(swarm)).stdout)}
    records = report["rounds"]
    assert [r["round"] for r in records] == list(range(ROUNDS))
    assert (report["firstRound"], report["lastRound"]) == (0, ROUNDS - 1)
    config = swarm.rpc(1, "swarm_roundsConfig")
    reward, share = int(config["rewardPerRound"]), int(config["contributorShareBps"])
    assert reward > 0, "the test genesis pays rewards"
    for rec in records:
        r = rec["round"]
        assert {k: rec[k] for k in chain_rounds[r]} == chain_rounds[r], f"round {r} differs from chain rounds"
        info = swarm.rpc(1, "swarm_getRound", r)
        assert info["finalized"] and rec["participants"] == len(info["commits"]) > 0
        scored = [c for c in info["commits"] if int(c["heldOutCount"]) > 0]
        assert scored, f"round {r}: no held-out scores on chain"
        want_loss = sum(int(c["heldOutLoss"]) * int(c["heldOutCount"]) for c in scored) / sum(
            int(c["heldOutCount"]) for c in scored) / 1e6
        assert rec["heldOutLoss"] == pytest.approx(want_loss)
        # round time: block timestamps, from the opening (round 0: its commit clock; it opened at genesis)
        opened, close, final = (int(swarm.rpc(1, "eth_getBlockByNumber", hex(int(info[k])), False)["timestamp"], 16)
                                for k in ("openBlock", "closeBlock", "finalBlock"))
        assert (rec["openTimestamp"], rec["closeTimestamp"], rec["finalTimestamp"]) == (opened, close, final)
        assert rec["clockStart"] == int(info["openTime"])
        start = rec["clockStart"] if int(info["openBlock"]) == 0 else opened
        assert rec["roundSeconds"] == final - start > 0 and rec["finalizeSeconds"] == final - close >= 0
        assert rec["idleSeconds"] + rec["commitSeconds"] + rec["finalizeSeconds"] == rec["roundSeconds"]
        # stake: the set that finalized the round
        stake = {v["address"]: v["stake"] for v in swarm.rpc(1, "swarm_validators", hex(int(info["finalBlock"])))}
        assert rec["stake"] == stake and int(rec["totalStake"]) == sum(int(s) for s in stake.values()) > 0
        # rewards: contributors by sample count (exact), validators by stake (integer-division dust only)
        pool = reward * share // 10_000
        total = int(info["totalSamples"])
        paid = 0 if info["skipped"] else sum(pool * int(c["numSamples"]) // total for c in info["commits"])
        assert int(rec["contributorRewards"]) == paid
        assert 0 <= (reward - pool) - int(rec["validatorRewards"]) < int(info["attestationCount"])
        assert sum(int(w) for w in rec["rewardsByAccount"].values()) == int(rec["contributorRewards"]) + int(
            rec["validatorRewards"])
    assert report["summary"]["rounds"] == ROUNDS
    assert {a["address"] for a in report["accounts"]} >= {v["address"] for v in swarm.rpc(1, "swarm_validators")}


def test_paged_reads_give_the_same_rounds(swarm: LocalSwarm, report: dict[str, Any]) -> None:
    # one round per swarm_roundHistory call, and the default page: the rounds are the same
    paged = fetch_report(RpcClient(url(swarm), timeout=60), RoundRange(0, ROUNDS - 1), page=1)
    assert paged["rounds"] == report["rounds"]


def test_png(swarm: LocalSwarm, tmp_path: Path) -> None:
    out = tmp_path / "report.png"
    proc = run_cli("report", "--out", str(out), "--rounds", f":{ROUNDS - 1}", "--rpc", url(swarm))
    assert f"wrote {out}: rounds 0-{ROUNDS - 1}" in proc.stdout
    data = out.read_bytes()
    assert png_size(data) == (1200, 1500)
    assert len(data) > 40_000, f"{len(data)} bytes: six panels of data draw more than that"


class Tables(HTMLParser):
    """The rows of table#rounds (data-round attributes and cell texts), the images and any scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.table: str | None = None
        self.rows: list[tuple[str | None, list[str]]] = []
        self.images: list[str] = []
        self.scripts = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("id")
        elif tag == "tr" and self.table == "rounds" and "data-round" in a:
            self.rows.append((a["data-round"], []))
        elif tag == "td" and self.rows and self.table == "rounds":
            self._cell = []
        elif tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "script":
            self.scripts += 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1][1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self.table = None


def test_html_is_self_contained_with_a_row_per_round(swarm: LocalSwarm, report: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    run_cli("report", "--out", str(out), "--rounds", f"0:{ROUNDS - 1}", "--rpc", url(swarm))
    page = Tables()
    page.feed(out.read_text(encoding="utf-8"))
    assert [r for r, _ in page.rows] == [str(r) for r in range(ROUNDS)]
    for (_, cells), rec in zip(page.rows, report["rounds"], strict=True):
        assert cells[0] == str(rec["round"]) and cells[1] == f"{rec['participants']}/{rec['registered']}"
        assert cells[-1] == rec["modelHash"], "the global model hash of each round, as on chain"
    assert page.scripts == 0 and len(page.images) == 1
    prefix = "data:image/png;base64,"
    assert page.images[0].startswith(prefix), page.images[0][:60]
    assert png_size(base64.b64decode(page.images[0][len(prefix):])) == (1200, 1500)


def test_readable_errors(swarm: LocalSwarm, tmp_path: Path) -> None:
    proc = run_cli("report", "--json", "--rounds", "100000:", "--rpc", url(swarm), check=False)
    assert proc.returncode == 2 and "no finalized round in rounds 100000:" in proc.stderr, proc.stderr
    down = f"http://127.0.0.1:{free_port()}"
    proc = run_cli("report", "--out", str(tmp_path / "x.png"), "--rpc", down, check=False)
    assert proc.returncode == 2 and f"cannot reach the node at {down}" in proc.stderr, proc.stderr
    assert not (tmp_path / "x.png").exists()
    proc = run_cli("report", "--out", str(tmp_path / "x.svg"), "--rpc", url(swarm), check=False)
    assert proc.returncode == 2 and "unknown format .svg" in proc.stderr, proc.stderr
