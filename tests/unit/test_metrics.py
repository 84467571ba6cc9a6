"""swarmnode/node/metrics.py: the metrics address, the exposition of a reading, the HTTP server."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from swarmnode.node.config import NodeConfigError, config_from_dict
from swarmnode.node.metrics import MetricsError, NodeMetrics, parse_metrics_addr, start_server
from tests.unit.test_dashboard import reading


def test_parse_metrics_addr() -> None:
    assert parse_metrics_addr("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_metrics_addr(" [::1]:0 ") == ("::1", 0)
    assert parse_metrics_addr("localhost:1") == ("localhost", 1)
    assert parse_metrics_addr("OFF") is None
    for bad, says in (("9464", "expected HOST:PORT"), (":9464", "expected HOST:PORT"), ("h:x", "not a number"),
                      ("h:65536", "not a number"), ("::1:80", "in brackets"), ("[nope]:80", "not an IPv6")):
        with pytest.raises(MetricsError, match=says):
            parse_metrics_addr(bad)


def test_config_metrics_table() -> None:
    base = {"node": {"data_dir": "/d", "genesis": "/g", "key_file": "/k"}}
    assert config_from_dict(base, base=Path("/")).metrics_addr == "127.0.0.1:0"
    cfg = config_from_dict({**base, "metrics": {"addr": "off"}}, base=Path("/"))
    assert cfg.metrics_addr == "off" and cfg.with_metrics("127.0.0.1:9").metrics_addr == "127.0.0.1:9"
    with pytest.raises(NodeConfigError, match="metrics.addr.*expected HOST:PORT"):
        config_from_dict({**base, "metrics": {"addr": "bad"}}, base=Path("/"))
    with pytest.raises(NodeConfigError, match="--metrics-addr"):
        cfg.with_metrics("1.2.3.4")


def test_served_on_loopback_with_the_reading() -> None:
    metrics = NodeMetrics()
    metrics.watch(reading)
    metrics.observe_work("train", 1.5)
    metrics.observe_work("aggregate", 0.25)
    metrics.observe_fetch(0.02)
    server = start_server(metrics.registry, "127.0.0.1:0")
    assert server is not None and server.url.startswith("http://127.0.0.1:")
    try:
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.stop()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("swarmnode_chain_height", ())] == 12
    assert samples[("swarmnode_sync_lag_blocks", ())] == 2
    assert samples[("swarmnode_p2p_bytes_total", (("direction", "out"), ("protocol", "/swarmnode/blob/1")))] == 100
    assert samples[("swarmnode_p2p_wire_bytes_total", (("direction", "in"),))] == 200
    assert samples[("swarmnode_consensus_missed_votes_total", (("local", "false"), ("validator", "0x" + "22" * 20)))] == 4
    assert samples[("swarmnode_consensus_missed_votes_total", (("local", "true"), ("validator", "0x" + "11" * 20)))] == 0
    assert samples[("swarmnode_training_seconds_sum", ())] == 1.5
    assert samples[("swarmnode_aggregation_seconds_count", ())] == 1
    assert samples[("swarmnode_blob_fetch_seconds_count", ())] == 1
    assert samples[("swarmnode_gossip_mesh_peers", (("topic", "/swarmnode/7/tx"),))] == 2


def test_off_serves_nothing_and_a_taken_port_is_a_clear_error() -> None:
    metrics = NodeMetrics()
    assert start_server(metrics.registry, "off") is None
    first = start_server(metrics.registry, "127.0.0.1:0")
    assert first is not None
    try:
        with pytest.raises(MetricsError, match=r"metrics address 127\.0\.0\.1:\d+: cannot listen there: .*in use"):
            start_server(metrics.registry, f"127.0.0.1:{first.port}")
    finally:
        first.stop()
