"""Prometheus metrics of one daemon: a registry of its own, served on 127.0.0.1 unless told otherwise.

Most values are read when Prometheus scrapes (`NodeReading`, taken by `read_node`): nothing is computed
for them between scrapes. The rest come from hooks that are cheap enough to be always on: the p2p traffic
meter (swarmnode/p2p/meter.py: a dict update per stream read or write), and one histogram observation per
blob fetched from peers, per local training and per aggregation.

The HTTP server is prometheus_client's (`start_http_server`: a WSGI server in daemon threads of its own),
so a scrape never runs on the trio event loop. The scrape thread only reads: immutable snapshots
(`chain.tip`, the round observation) and copies of counters taken in one C-level call each.

No label carries a secret: labels are protocol names, directions, topics, job names and validator
addresses (public, on chain).
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from swarmnode.node.node import Node

OFF = "off"
# seconds: a blob from a peer on loopback takes ~0.01-0.2 s, retries and a busy swarm take seconds
FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)
WORK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class MetricsError(ValueError):
    """The metrics address is not `HOST:PORT` (or `off`), or cannot be listened on; the message says why."""


def parse_metrics_addr(text: str) -> tuple[str, int] | None:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) -> (host, port); `off` -> None. Port 0 is any free port."""
    value = text.strip()
    if value.lower() == OFF:
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise MetricsError(f"metrics address {text!r}: expected HOST:PORT (e.g. 127.0.0.1:9464) or 'off'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise MetricsError(f"metrics address {text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise MetricsError(f"metrics address {text!r}: write an IPv6 host in brackets, e.g. [::1]:9464")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise MetricsError(f"metrics address {text!r}: port {port_text!r} is not a number in 0-65535")
    return host, int(port_text)


def format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class NodeReading:
    """What a scrape reports about the node's state, as plain data."""

    address: str
    chain_id: int
    height: int
    best_known_height: int
    peers: int
    mesh: dict[str, int]  # gossip topic -> peers in its mesh
    pool: int
    consensus_height: int
    consensus_round: int
    round: int | None = None
    window_open: bool | None = None
    round_commits: int | None = None
    round_expected: int | None = None
    validator: bool | None = None
    missed_votes: dict[str, int] = field(default_factory=dict)  # validator address -> heights missed
    heights_tallied: int = 0
    traffic: dict[str, Any] = field(default_factory=dict)  # TrafficMeter.snapshot()

    @property
    def sync_lag(self) -> int:
        return max(0, self.best_known_height - self.height)


def best_known_height(node: Node) -> int:
    """The highest chain height this node knows of: its own, or one its peers have reached (heights stated
    in handshakes and sync headers, which are claims, and the height below the one validators' signed
    consensus messages are for). The sync lag is this minus our height."""
    stated = [p.head_height for p in node.p2p.peers()]
    synced = node.p2p.sync.peer_head if node.p2p.sync is not None else 0
    return max([*stated, synced, node.driver.highest_seen - 1, node.chain.tip.height])


def missed_votes(driver: Any) -> dict[str, int]:
    """Per validator address: heights it missed here; every validator of the current set is listed (0 if
    none missed), so a dashboard sees the series before the first miss."""
    state = driver.state
    current = [v.address for v in state.validators.validators] if state.rotation is not None else []
    counts = {**dict.fromkeys(current, 0), **dict(driver.missed_votes)}
    return {"0x" + a.hex(): n for a, n in counts.items()}


def read_node(node: Node) -> NodeReading:
    """Take a reading (from any thread: each read is of an immutable snapshot or a one-call copy)."""
    obs = node.loop.observation
    driver = node.driver
    mesh = {topic: len(peers) for topic, peers in list(node.p2p.host.router.mesh.items())}
    return NodeReading(
        address="0x" + node.address.hex(), chain_id=node.genesis.chain_id, height=node.chain.tip.height,
        best_known_height=best_known_height(node), peers=len(node.p2p.peers()), mesh=mesh, pool=len(node.pool),
        consensus_height=driver.state.height, consensus_round=driver.state.round,
        round=obs.round if obs else None, window_open=obs.window_open if obs else None,
        round_commits=len(obs.commits) if obs else None, round_expected=obs.expected_count if obs else None,
        validator=obs.validator if obs else None,
        missed_votes=missed_votes(driver),
        heights_tallied=driver.counters["heights_tallied"], traffic=node.p2p.host.meter.snapshot(),
    )


class NodeCollector(Collector):
    """Turns a NodeReading into metric families at each scrape."""

    def __init__(self, read: Callable[[], NodeReading]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        r = self._read()
        yield from _state_metrics(r)
        yield from _consensus_metrics(r)
        yield from _traffic_metrics(r.traffic)


def _gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    if value is not None:
        family.add_metric(list((labels or {}).values()), value)
    return family


def _state_metrics(r: NodeReading) -> Iterator[Metric]:
    yield _gauge("swarmnode_info", "This node (value 1): its chain address and chain id", 1,
                 {"address": r.address, "chain_id": str(r.chain_id)})
    yield _gauge("swarmnode_chain_height", "Height of the newest committed block", r.height)
    yield _gauge("swarmnode_best_known_height", "Highest chain height known: this node's, or one peers have reached",
                 r.best_known_height)
    yield _gauge("swarmnode_sync_lag_blocks", "Blocks this node is behind the best known height (0: in step)",
                 r.sync_lag)
    yield _gauge("swarmnode_peers", "Connected peers that passed the handshake", r.peers)
    mesh = GaugeMetricFamily("swarmnode_gossip_mesh_peers", "Peers in this node's gossipsub mesh, per topic",
                             labels=["topic"])
    for topic, size in sorted(r.mesh.items()):
        mesh.add_metric([topic], size)
    yield mesh
    yield _gauge("swarmnode_txpool_transactions", "Transactions waiting in the pool", r.pool)
    yield _gauge("swarmnode_round", "The learning round the chain is in (open, or closed awaiting attestations)",
                 r.round)
    yield _gauge("swarmnode_round_window_open", "1 while the round's commit window is open",
                 None if r.window_open is None else int(r.window_open))
    yield _gauge("swarmnode_round_commits", "Commits included so far in the current round", r.round_commits)
    yield _gauge("swarmnode_round_expected_participants", "Participants expected to commit in the current round",
                 r.round_expected)
    yield _gauge("swarmnode_validator", "1 if this node holds stake (votes in consensus)",
                 None if r.validator is None else int(r.validator))


def _consensus_metrics(r: NodeReading) -> Iterator[Metric]:
    yield _gauge("swarmnode_consensus_height", "Height the consensus engine is deciding", r.consensus_height)
    yield _gauge("swarmnode_consensus_round", "Tendermint round at that height (above 0: a proposal or vote failed)",
                 r.consensus_round)
    tallied = CounterMetricFamily("swarmnode_consensus_heights_tallied",
                                  "Heights decided here whose votes were tallied for missed votes")
    tallied.add_metric([], r.heights_tallied)
    yield tallied
    missed = CounterMetricFamily(
        "swarmnode_consensus_missed_votes",
        "Heights at which a validator's precommit for the decided block never reached this node (by the next "
        "height's start); local=\"true\" is this node's own validator", labels=["validator", "local"])
    for address, count in sorted(r.missed_votes.items()):
        missed.add_metric([address, "true" if address == r.address else "false"], count)
    yield missed


def _traffic_metrics(t: dict[str, Any]) -> Iterator[Metric]:
    protocols = CounterMetricFamily(
        "swarmnode_p2p_bytes", "Application bytes on libp2p streams, per protocol and direction (in, out); "
        "'(negotiation)' is multistream-select before a protocol is agreed", labels=["protocol", "direction"])
    for direction, counts in (("out", t.get("sent", {})), ("in", t.get("received", {}))):
        for protocol, count in sorted(counts.items()):
            protocols.add_metric([protocol, direction], count)
    yield protocols
    wire = CounterMetricFamily("swarmnode_p2p_wire_bytes", "Bytes on peer TCP connections (Noise, yamux and all)",
                               labels=["direction"])
    for direction, count in sorted(t.get("wire", {}).items()):
        wire.add_metric([direction], count)
    yield wire
    streams = CounterMetricFamily("swarmnode_p2p_streams", "libp2p streams opened, both ways")
    streams.add_metric([], t.get("streams", 0))
    yield streams


class NodeMetrics:
    """The registry of one daemon: the histograms its hooks feed, the process collector, and (after
    `watch`) the node's state at each scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.blob_fetch = Histogram("swarmnode_blob_fetch_seconds", "Time to get one blob (update or model) from "
                                    "peers, retries included", buckets=FETCH_BUCKETS, registry=self.registry)
        self.training = Histogram("swarmnode_training_seconds", "Wall-clock seconds of one local training",
                                  buckets=WORK_BUCKETS, registry=self.registry)
        self.aggregation = Histogram("swarmnode_aggregation_seconds", "Wall-clock seconds of one aggregation "
                                     "(checking and combining the updates)", buckets=WORK_BUCKETS,
                                     registry=self.registry)

    def observe_fetch(self, seconds: float) -> None:
        self.blob_fetch.observe(seconds)

    def observe_work(self, job: str, seconds: float) -> None:
        """RoundWork's hook: job is "train" or "aggregate"."""
        (self.training if job == "train" else self.aggregation).observe(seconds)

    def watch(self, read: Callable[[], NodeReading]) -> None:
        self.registry.register(NodeCollector(read))

    def names(self) -> set[str]:
        """Every sample name this registry exposes (e.g. swarmnode_p2p_bytes_total, ..._bucket)."""
        return {s.name for metric in self.registry.collect() for s in metric.samples}


class MetricsServer:
    """prometheus_client's HTTP server for one registry, in daemon threads of its own."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry, self.host, self.port = registry, host, port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Listen and serve; returns the bound port. OSError when the address cannot be bound."""
        self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self.port = int(self._server.server_port)
        return self.port

    @property
    def url(self) -> str:
        return f"http://{format_addr(self.host, self.port)}/metrics"

    def stop(self) -> None:
        """Stop serving and close the socket (waits for the serving loop: at most ~0.5 s)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def start_server(registry: CollectorRegistry, addr: str) -> MetricsServer | None:
    """Serve `registry` at `addr` (`HOST:PORT` or `off`: None); MetricsError when it cannot."""
    parsed = parse_metrics_addr(addr)
    if parsed is None:
        return None
    server = MetricsServer(registry, *parsed)
    try:
        server.start()
    except OSError as exc:  # in use, not an address of this machine, an unknown host name
        raise MetricsError(f"metrics address {addr}: cannot listen there: {exc.strerror or exc} (choose another "
                           f"HOST:PORT with --metrics-addr or [metrics] addr, port 0 for any free one, or 'off')") from None
    return server
