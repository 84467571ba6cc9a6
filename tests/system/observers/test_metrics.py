"""System test: Prometheus /metrics of real daemons started through the CLI (3 validators, tiny task).

Once two rounds are final, node0's /metrics is scraped over HTTP and checked against what its JSON-RPC
says (height, round, peers) and against what must have happened (update blobs went both ways over the
blob protocol, training and aggregation took time, blobs were fetched, no validator missed every
height); the endpoint listens on 127.0.0.1 only; every metric the shipped Grafana dashboard queries is in
the scrape; `swarmnode status` shows peers, round and sync lag. A bad --metrics-addr, and one already in
use, stop `swarmnode run` with a one-line error.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from swarmnode.node.localnet import LocalSwarm, cli, run_cli, wait_for
from swarmnode.p2p.blobs import BLOB_PROTOCOL
from tests.unit.test_dashboard import DASHBOARD, queried_metrics

pytestmark = pytest.mark.slow

ROUNDS = 2
ROUND_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def swarm(observed_swarm: LocalSwarm) -> LocalSwarm:
    return observed_swarm


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """sample name -> [(labels, value)] of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples in {samples.get(name)}"
    return found[0]


def listening_addresses(port: int) -> set[str]:
    """The local IPv4 addresses a TCP socket listens on at `port` (from /proc/net/tcp; hex, e.g. 0100007F)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            out.add(address)
    return out


def test_metrics_are_real_and_agree_with_rpc(swarm: LocalSwarm) -> None:
    wait_for(lambda: len(swarm.final_hashes(0)) >= ROUNDS, ROUNDS * ROUND_TIMEOUT,
             f"{ROUNDS} final rounds\n{swarm.tail(0)}")
    info = json.loads((swarm.nodes[0].data_dir / "node.json").read_text())
    url = info["metrics"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics"), url
    port = int(url.split(":")[2].split("/")[0])
    assert listening_addresses(port) == {"0100007F"}, "the metrics endpoint must listen on 127.0.0.1 only"

    before = swarm.rpc(0, "swarm_node")
    samples = scrape(url)
    after = swarm.rpc(0, "swarm_node")

    height = value(samples, "swarmnode_chain_height")
    assert 0 < before["height"] <= height <= after["height"], (before["height"], height, after["height"])
    assert before["round"] <= value(samples, "swarmnode_round") <= after["round"]
    assert value(samples, "swarmnode_round") >= ROUNDS
    assert value(samples, "swarmnode_peers") == before["peers"] == after["peers"] == 2
    assert value(samples, "swarmnode_sync_lag_blocks") <= 2
    assert value(samples, "swarmnode_best_known_height") - value(samples, "swarmnode_sync_lag_blocks") == height
    assert value(samples, "swarmnode_txpool_transactions") >= 0
    assert value(samples, "swarmnode_validator") == 1
    for direction in ("in", "out"):  # every node fetched the others' updates and served its own
        assert value(samples, "swarmnode_p2p_bytes_total", protocol=BLOB_PROTOCOL, direction=direction) > 10_000
        assert value(samples, "swarmnode_p2p_wire_bytes_total", direction=direction) > value(
            samples, "swarmnode_p2p_bytes_total", protocol=BLOB_PROTOCOL, direction=direction)
    assert value(samples, "swarmnode_training_seconds_count") >= ROUNDS
    assert value(samples, "swarmnode_training_seconds_sum") > 0
    assert value(samples, "swarmnode_aggregation_seconds_count") >= ROUNDS - 1
    assert value(samples, "swarmnode_aggregation_seconds_sum") > 0
    assert value(samples, "swarmnode_blob_fetch_seconds_count") >= 2  # the two other nodes' updates, at least
    assert value(samples, "process_cpu_seconds_total") > 0
    tallied = value(samples, "swarmnode_consensus_heights_tallied_total")
    assert tallied > 0
    missed = samples["swarmnode_consensus_missed_votes_total"]
    assert len(missed) == 3 and sum(1 for lab, _ in missed if lab["local"] == "true") == 1, missed
    assert all(v < tallied for _, v in missed), f"a live validator missed every height: {missed} of {tallied}"
    own = [lab["validator"] for lab, _ in missed if lab["local"] == "true"]
    assert own == [value_label(samples, "swarmnode_info", "address")]

    dashboard = json.loads(DASHBOARD.read_text())
    absent = queried_metrics(dashboard) - set(samples)
    assert not absent, f"the dashboard queries metrics the daemon does not export: {sorted(absent)}"


def value_label(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, label: str) -> str:
    ((labels, _),) = samples[name]
    return labels[label]


def test_status_shows_peers_round_and_sync_lag(swarm: LocalSwarm) -> None:
    wait_for(lambda: len(swarm.final_hashes(0)) >= 1, ROUND_TIMEOUT, f"a final round\n{swarm.tail(0)}")
    config = str(swarm.nodes[1].config)
    text = run_cli("status", "--config", config).stdout
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert lines["peers"].split()[1] == "2", text
    assert lines["round"].split()[1].isdigit(), text
    assert "in step" in lines["sync"] or "behind" in lines["sync"], text
    assert lines["metrics"].split()[1].startswith("http://127.0.0.1:"), text
    doc = json.loads(run_cli("status", "--config", config, "--json").stdout)
    s = doc["summary"]
    assert s["peers"] == 2 and s["round"] >= 1 and 0 <= s["syncLag"] <= 2 and s["role"] == "validator", s
    assert s["bestKnownHeight"] - s["syncLag"] == s["height"] and s["metrics"].startswith("http://127.0.0.1:"), s


def test_bad_metrics_addresses_are_clear_errors(swarm: LocalSwarm) -> None:
    config = str(swarm.nodes[2].config)
    for bad, says in (("nonsense", "expected HOST:PORT"), ("127.0.0.1:99999", "not a number in 0-65535"),
                      ("::1:9000", "IPv6 host in brackets")):
        proc = subprocess.run([*cli(), "run", "--config", config, "--metrics-addr", bad], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2 and says in proc.stderr, (bad, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_metrics_address_in_use_is_a_clear_error(swarm: LocalSwarm, tmp_path: Path) -> None:
    # a fresh node (its own data dir) whose metrics port is taken: it stops before joining anything
    node = swarm.init_node(3, fresh_key=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([*cli(), "run", "--config", str(node.config), "--metrics-addr", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=120, env=swarm.env)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("swarmnode: error: metrics address 127.0.0.1:") and "in use" in last, last
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
