"""The shipped Grafana dashboard queries only metrics the daemon's registry exports (so the two cannot
drift), with a Prometheus datasource variable. The registry is the daemon's own (NodeMetrics and its
NodeCollector), fed one reading of plain data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from swarmnode.node.metrics import NodeMetrics, NodeReading

DASHBOARD = Path(__file__).resolve().parents[2] / "scripts" / "grafana" / "swarmnode-dashboard.json"
METRIC = re.compile(r"\b((?:swarmnode|process)_[a-z0-9_]+)\b")


def queried_metrics(dashboard: dict[str, Any]) -> set[str]:
    """Every metric name in the dashboard's panel queries and template variables."""
    texts: list[str] = []
    for panel in dashboard["panels"]:
        texts += [t["expr"] for t in panel.get("targets", [])]
        for inner in panel.get("panels", []):  # a collapsed row holds its panels
            texts += [t["expr"] for t in inner.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        texts.append(query["query"] if isinstance(query, dict) else str(query or ""))
    return {name for text in texts for name in METRIC.findall(text)}


def reading() -> NodeReading:
    return NodeReading(address="0x" + "11" * 20, chain_id=7, height=12, best_known_height=14, peers=3,
                       mesh={"/swarmnode/7/tx": 2}, pool=1, consensus_height=13, consensus_round=0, round=2,
                       window_open=True, round_commits=1, round_expected=3, validator=True,
                       missed_votes={"0x" + "11" * 20: 0, "0x" + "22" * 20: 4}, heights_tallied=11,
                       traffic={"sent": {"/swarmnode/blob/1": 100}, "received": {"/swarmnode/blob/1": 50},
                                "wire": {"out": 300, "in": 200}, "streams": 4})


def test_every_queried_metric_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    metrics = NodeMetrics()
    metrics.watch(reading)
    queried = queried_metrics(dashboard)
    assert len(queried) >= 15, queried  # the extraction finds the dashboard's queries
    missing = queried - metrics.names()
    assert not missing, f"the dashboard queries metrics the daemon does not export: {sorted(missing)}"


def test_datasource_variable_and_panels_use_it() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert all('instance=~"$instance"' in t["expr"] for t in panel["targets"]), panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
