"""The libp2p host: TCP + Noise only + yamux, secp256k1 identity, handshake, bootstrap with backoff,
and the limits every peer is held to (PeerGuard).

`async with P2PHost(config).run() as host:` starts pubsub before the host listens (py-libp2p 0.8.1
crashes on the first inbound pubsub stream otherwise) and stops everything on exit.

Limits (config.Limits), enforced here and by each protocol through `host.guard`:
- inbound TCP connections, per IP, before the Noise handshake: a rate, a cap on handshakes in progress
  and on peers already connected in from that IP. py-libp2p's own inbound handler is replaced: it held
  its inbound slot for the life of the swarm, not of the connection (measured: 5 connect/disconnect
  cycles left 5 of its 250 slots taken; after 250 any node refused every inbound connection for good);
- connected peers (`max_peers`: an inbound connection from one more peer is closed) and py-libp2p's
  ConnectionConfig (total and per-peer connections) as a backstop;
- inbound streams per peer per protocol (`guard.wrap`), token buckets per peer per protocol;
- penalty points for floods and malformed input; at `ban_points` the peer is disconnected and refused
  (connections, dials, streams, its gossip, gossip it published) for a back-off that doubles per ban;
- gossipsub: py-libp2p 0.8.1 implements the score thresholds (publish, gossip, graylist) but every
  default is -inf, and it never disconnects anyone. They are set here, and a peer whose gossipsub score
  falls below `gossip_disconnect_threshold` is banned like any other offender. GuardedPubsub checks the
  forwarding peer's rate before py-libp2p spends a signature check on its messages.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IMuxedConn, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import PeerScorer, ScoreParams, TopicScoreParams
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from consensus.votes import Address
from swarmnode.p2p import pubsub_records, wire, yamux_credit
from swarmnode.p2p.capture import TrafficCapture
from swarmnode.p2p.config import Limits, P2PConfig, Rate
from swarmnode.p2p.errors import ConfigError, HandshakeError, IdentityError, P2PError
from swarmnode.p2p.handshake import HANDSHAKE_PROTOCOL, Hello, exchange
from swarmnode.p2p.identity import address_of_peer, key_pair_of
from swarmnode.p2p.meter import TrafficMeter

log = logging.getLogger(__name__)

# py-libp2p's yamux returns flow-control credit after (nearly) every read, which for small consensus
# frames doubles the frames on the wire. yamux_credit returns it in batches instead, once a quarter of
# the window is consumed (go-yamux waits for half; an eighth cost a 0.83 MB update ~10% more CPU, and a
# half made 8 MB blob fetches slower). py-libp2p reads the divisor at call time.
os.environ.setdefault("PY_YAMUX_BATCH_THRESHOLD_DIV", "4")
yamux_credit.install()
# pubsub checks each peer's signed record once per record, not on every RPC (pubsub_records.py)
pubsub_records.install()

# meshsub 1.1: 1.2+ adds an IDONTWANT control message per received message, pure overhead here
GOSSIPSUB_PROTOCOLS = [TProtocol("/meshsub/1.1.0"), TProtocol("/meshsub/1.0.0")]
MAX_GOSSIP_RPC = 1024 * 1024 + 64 * 1024  # one inbound pubsub RPC: a full message plus its envelope
MAX_TRACKED = 8192  # token buckets, penalty records, bans: least recently used forgotten first

StreamHandler = Callable[[INetStream], Awaitable[None]]


class TokenBucket:
    __slots__ = ("burst", "per_second", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.per_second, self.burst = rate.per_second, rate.burst
        self.tokens, self.stamp = rate.burst, now

    def take(self, now: float, cost: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_second)
        self.stamp = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


class PeerGuard:
    """What each peer (and each IP address) may cost this node; pure bookkeeping, no I/O.

    `allow(peer, kind, rate)` takes a token from the peer's bucket for `kind`; without one the caller
    drops (or refuses) what the peer sent, and the peer collects `over_rate_points`. `penalize` adds
    points (they halve every `points_half_life` seconds); at `ban_points` the peer is banned for
    `ban_initial` seconds, doubled for each further ban, and `on_ban(peer, reason)` is called (the host
    disconnects it). Every table is bounded (MAX_TRACKED entries, least recently used forgotten)."""

    def __init__(self, limits: Limits, *, clock: Callable[[], float] = trio.current_time) -> None:
        self.limits = limits
        self._clock = clock
        self._buckets: OrderedDict[tuple[Any, ...], TokenBucket] = OrderedDict()
        self._points: OrderedDict[ID, tuple[float, float]] = OrderedDict()  # peer -> (points, as of)
        self._bans: dict[ID, float] = {}  # peer -> banned until
        self._offences: OrderedDict[ID, int] = OrderedDict()  # peer -> bans so far
        self._streams: Counter[tuple[ID, str]] = Counter()
        self._upgrading: Counter[str] = Counter()  # ip -> inbound connections in their handshake
        self._inbound: dict[str, Counter[ID]] = {}  # ip -> peer -> inbound connections
        self.on_ban: Callable[[ID, str], None] | None = None
        self.counters: Counter[str] = Counter()

    # ---- rates and penalties ----

    def allow(self, key: Any, kind: str, rate: Rate, cost: float = 1.0, *, blame: ID | None = None) -> bool:
        """Take `cost` tokens from the bucket of (`key`, `kind`); False when it runs dry. The peer `key`
        (or `blame`, when the key is not a peer) then collects over_rate_points."""
        bucket_key = (key, kind)
        bucket = self._buckets.get(bucket_key)
        now = self._clock()
        if bucket is None:
            bucket = self._buckets[bucket_key] = TokenBucket(rate, now)
            if len(self._buckets) > MAX_TRACKED:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(bucket_key)
        if bucket.take(now, min(cost, rate.burst)):
            return True
        self.counters[f"over_rate.{kind}"] += 1
        offender = blame if blame is not None else key
        if isinstance(offender, ID):
            self.penalize(offender, self.limits.over_rate_points, f"over its {kind} rate")
        return False

    def points(self, peer: ID) -> float:
        """The peer's penalty points now (decayed)."""
        held = self._points.get(peer)
        if held is None:
            return 0.0
        value, at = held
        return value * 0.5 ** ((self._clock() - at) / self.limits.points_half_life)

    def penalize(self, peer: ID, points: float, reason: str) -> bool:
        """Add penalty points; True if the peer is (now) banned."""
        if self.banned(peer):
            return True
        total = self.points(peer) + points
        self._points[peer] = (total, self._clock())
        self._points.move_to_end(peer)
        if len(self._points) > MAX_TRACKED:
            self._points.popitem(last=False)
        if total >= self.limits.ban_points:
            self.ban(peer, f"{total:.0f} penalty points, last: {reason}")
            return True
        return False

    def ban(self, peer: ID, reason: str) -> None:
        offences = self._offences.pop(peer, 0) + 1
        self._offences[peer] = offences
        if len(self._offences) > MAX_TRACKED:
            self._offences.popitem(last=False)
        duration = min(self.limits.ban_max, self.limits.ban_initial * 2 ** min(offences - 1, 32))
        self._bans[peer] = self._clock() + duration
        if len(self._bans) > MAX_TRACKED:  # the ban that ends first goes
            del self._bans[min(self._bans, key=self._bans.__getitem__)]
        self._points.pop(peer, None)
        self.counters["bans"] += 1
        log.warning("banning %s for %.0f s (ban %d): %s", peer, duration, offences, reason)
        if self.on_ban is not None:
            self.on_ban(peer, reason)

    def banned(self, peer: ID) -> bool:
        return self.ban_remaining(peer) > 0

    def ban_remaining(self, peer: ID) -> float:
        until = self._bans.get(peer)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._bans[peer]
            return 0.0
        return left

    def banned_peers(self) -> list[ID]:
        return [p for p in list(self._bans) if self.banned(p)]

    # ---- streams ----

    def wrap(self, protocol: str, handler: StreamHandler, *, rate: Rate | None = None,
             max_streams: int | None = None) -> StreamHandler:
        """`handler` behind this guard: a stream from a banned peer, one past `rate` (streams opened per
        second) or past `max_streams` open at once from the same peer on `protocol` is reset unread."""
        limit = max_streams if max_streams is not None else self.limits.max_streams_per_protocol

        async def guarded(stream: INetStream) -> None:
            peer = stream.muxed_conn.peer_id
            key = (peer, protocol)
            refusal = ""
            if self.banned(peer):
                refusal = "banned"
            elif self._streams[key] >= limit:
                refusal = "streams"
                self.penalize(peer, self.limits.over_rate_points, f"more than {limit} {protocol} streams")
            elif rate is not None and not self.allow(peer, protocol, rate):
                refusal = "rate"
            if refusal:
                self.counters[f"stream_refused.{refusal}"] += 1
                await wire.reset_quietly(stream, protocol)
                return
            self._streams[key] += 1
            try:
                await handler(stream)
            finally:
                self._streams[key] -= 1
                if not self._streams[key]:
                    del self._streams[key]

        return guarded

    def open_streams(self, peer: ID, protocol: str) -> int:
        return self._streams.get((peer, protocol), 0)

    # ---- inbound connections per IP ----

    def admit_inbound(self, ip: str) -> str:
        """Before the Noise handshake of an inbound connection from `ip`: "" to go ahead (then call
        `upgrade_done(ip)` once the handshake ends either way), or why it is refused."""
        limits = self.limits
        if not self.allow(ip, "inbound", limits.inbound_per_ip):
            return "rate"
        if self._upgrading[ip] >= limits.max_upgrading_per_ip:
            return "handshakes in progress"
        if len(self._inbound.get(ip, ())) >= limits.max_inbound_per_ip:
            return "peers from this address"
        self._upgrading[ip] += 1
        return ""

    def upgrade_done(self, ip: str) -> None:
        self._upgrading[ip] -= 1
        if self._upgrading[ip] <= 0:
            del self._upgrading[ip]

    def inbound_opened(self, ip: str, peer: ID) -> bool:
        """An inbound connection from `peer` at `ip` is up; False if that makes more distinct peers from
        `ip` than allowed (the caller closes it, then calls `inbound_closed`)."""
        peers = self._inbound.setdefault(ip, Counter())
        peers[peer] += 1
        return len(peers) <= self.limits.max_inbound_per_ip

    def inbound_closed(self, ip: str, peer: ID) -> None:
        peers = self._inbound.get(ip)
        if peers is None:
            return
        peers[peer] -= 1
        if peers[peer] <= 0:
            del peers[peer]
        if not peers:
            del self._inbound[ip]

    def inbound_peers(self, ip: str) -> int:
        return len(self._inbound.get(ip, ()))

    def upgrading(self, ip: str) -> int:
        return self._upgrading.get(ip, 0)

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "banned": len(self.banned_peers())}


class GuardedScorer(PeerScorer):
    """py-libp2p's scorer, except that a rejection the topic validator `excuse`d is not counted against
    the forwarding peer: a well-formed, correctly signed message outside our window, from a signer we do
    not know yet, or past its publisher's rate may reach us through an honest relay that judged it
    differently. (py-libp2p's validators return a bool: there is no "ignore" result.)"""

    def __init__(self, params: ScoreParams) -> None:
        super().__init__(params)
        self._excused: set[tuple[ID, str]] = set()

    def excuse(self, peer: ID, topic: str) -> None:
        """Called by a topic validator just before it returns False (py-libp2p then calls
        on_invalid_message with no checkpoint in between)."""
        if len(self._excused) > 1024:
            self._excused.clear()
        self._excused.add((peer, topic))

    def on_invalid_message(self, peer: ID, topic: str) -> None:
        if (peer, topic) in self._excused:
            self._excused.discard((peer, topic))
            return
        super().on_invalid_message(peer, topic)


class GuardedPubsub(Pubsub):
    """Pubsub that drops a message before py-libp2p checks its signature when the forwarding peer or the
    publisher is banned, the forwarding peer is past its gossip rate on the topic (then it is penalized,
    here and in gossipsub), or the message is on other than exactly one topic (ours never are).
    (py-libp2p's own blacklist is not used: a peer taken off it only after it reconnected would get no
    pubsub stream on that connection.)"""

    def __init__(self, host: Any, router: Any, *, guard: PeerGuard, **kwargs: Any) -> None:
        self.guard = guard
        self.dropped: Counter[str] = Counter()
        super().__init__(host, router, **kwargs)
        # py-libp2p starts the seqno at the time in *seconds* and adds one per message: a node publishing
        # more than one message a second runs ahead of that clock, and after a restart it would reuse
        # seqnos its peers saw minutes ago, still in their seen cache -- every message of the restarted
        # node silently dropped as a duplicate. Nanoseconds (as go-libp2p) stay ahead of any rate.
        self.counter = time.time_ns()

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        if msg_forwarder != self.my_id and not self._admit(msg_forwarder, msg):
            return
        await super().push_msg(msg_forwarder, msg)

    def _admit(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        guard = self.guard
        if guard.banned(forwarder) or guard.banned(ID(msg.from_id)):
            self.dropped["banned"] += 1
            return False
        if len(msg.topicIDs) != 1:
            self.dropped["topics"] += 1
            guard.penalize(forwarder, guard.limits.invalid_points, f"a message on {len(msg.topicIDs)} topics")
            return False
        if not guard.allow(forwarder, f"gossip {msg.topicIDs[0]}", guard.limits.gossip_forwarded):
            self.dropped["rate"] += 1
            scorer = getattr(self.router, "scorer", None)
            if scorer is not None:
                scorer.penalize_behavior(forwarder, 1.0)
            return False
        return True


def score_params(limits: Limits) -> ScoreParams:
    """py-libp2p's default weights are all 0 and its thresholds -inf: nothing would lower a score, and
    no score would change anything. An invalid message (a topic validator's rejection) costs its
    forwarder 10 points on the topic, a message past the forwarding rate 1 point (both decay by 10% a
    heartbeat); the thresholds then act: see config.Limits."""
    return ScoreParams(
        p4_invalid_messages=TopicScoreParams(weight=10.0, cap=100.0, decay=0.9),
        p5_behavior_penalty_weight=1.0, p5_behavior_penalty_decay=0.9, p5_behavior_penalty_threshold=0.0,
        publish_threshold=limits.gossip_publish_threshold, gossip_threshold=limits.gossip_gossip_threshold,
        graylist_threshold=limits.gossip_graylist_threshold, accept_px_threshold=0.0,
    )


def connection_config(config: P2PConfig) -> ConnectionConfig:
    """py-libp2p's connection manager: total and per-peer caps (its defaults: 300 and 3). Its auto-dialer
    and pruner keep their defaults, clipped to the cap."""
    cap = config.limits.max_connections
    low = min(100, cap)
    return ConnectionConfig(max_connections=cap, high_watermark=cap, low_watermark=low,
                            min_connections=min(50, low), max_connections_per_peer=config.limits.max_connections_per_peer,
                            inbound_stream_protocol_negotiation_timeout=5.0)


def remote_ip(conn: Any) -> str:
    """The IP address at the other end of a raw or muxed connection ("" when unknown)."""
    try:
        address = conn.get_remote_address()
    except Exception:  # a connection closed meanwhile
        return ""
    return str(address[0]) if address else ""


@dataclass(frozen=True)
class PeerStatus:
    peer_id: ID
    address: Address  # chain address of the peer's key
    head_height: int  # as stated in its handshake
    addrs: tuple[str, ...]
    listen: tuple[str, ...] = ()  # dialable addresses it stated in its handshake


class _Notifee(INotifee):
    """Forwards connection events into the host's bounded queue (never blocks the swarm)."""

    def __init__(self, host: P2PHost) -> None:
        self._host = host

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._host._on_connection_event(conn.muxed_conn.peer_id, conn, True)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._host._on_connection_event(conn.muxed_conn.peer_id, conn, False)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, maddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, maddr: multiaddr.Multiaddr) -> None:
        return None


def parse_multiaddrs(addrs: tuple[str, ...], what: str) -> list[multiaddr.Multiaddr]:
    try:
        return [multiaddr.Multiaddr(a) for a in addrs]
    except Exception as exc:  # multiaddr raises its own assorted errors
        raise ConfigError(f"bad {what} multiaddr in {addrs!r}: {exc}") from exc


class P2PHost:
    """A swarmnode libp2p host; `head_height` is read for every handshake."""

    def __init__(self, config: P2PConfig, *, head_height: Callable[[], int] = lambda: 0) -> None:
        self.config = config
        self._head_height = head_height
        self.key_pair = key_pair_of(config.secret)
        self._listen = parse_multiaddrs(config.listen_addrs, "listen")
        self._bootstrap = parse_multiaddrs(config.bootstrap, "bootstrap")
        self.guard = PeerGuard(config.limits)
        self.guard.on_ban = self._on_ban
        noise = NoiseTransport(self.key_pair, noise_privkey=create_x25519_key_pair().private_key)
        self.libp2p = new_host(
            key_pair=self.key_pair, sec_opt={NOISE_PROTOCOL_ID: noise}, muxer_preference="YAMUX",
            listen_addrs=self._listen, enable_mDNS=config.enable_mdns, connection_config=connection_config(config),
        )
        self.router = GossipSub(
            protocols=GOSSIPSUB_PROTOCOLS, degree=6, degree_low=4, degree_high=12,
            heartbeat_interval=config.gossip_heartbeat, heartbeat_initial_delay=0.1,
            spam_protection_enabled=config.gossip_rate_limit is not None,
            max_messages_per_topic_per_second=config.gossip_rate_limit or 10.0,
            eclipse_protection_enabled=False,  # counts IPs: every loopback peer looks like one
        )
        # weights and thresholds that act (py-libp2p's are 0 and -inf), and validator excuses
        self.scorer = GuardedScorer(score_params(config.limits))
        self.router.scorer = self.scorer
        self.pubsub = GuardedPubsub(self.libp2p, self.router, guard=self.guard, max_inbound_rpc_size=MAX_GOSSIP_RPC)
        for protocol in self.router.get_protocols():  # one pubsub stream per connection is all a peer needs
            self.libp2p.set_stream_handler(protocol, self.guard.wrap(protocol, self.pubsub.stream_handler))
        self._install_inbound_guard()
        self.capture: TrafficCapture | None = None
        if config.capture_dir is not None:  # off: nothing is installed, nothing runs
            self.capture = TrafficCapture(config.capture_dir, str(self.peer_id))
            self.capture.install(self.libp2p.get_network())
        self.meter = TrafficMeter()  # bytes per protocol and on the wire, always on (the node's metrics)
        self.meter.install(self.libp2p.get_network())
        self._events_send, self._events_recv = trio.open_memory_channel[tuple[ID, INetConn, bool]](1024)
        self._bans_send, self._bans_recv = trio.open_memory_channel[ID](256)
        self._verified: dict[ID, PeerStatus] = {}
        self._in_progress: set[ID] = set()
        self._inbound_conns: dict[INetConn, tuple[str, ID]] = {}
        self.inbound_handlers = 0  # inbound connections being served (each ends with its connection)
        self._changed = trio.Event()
        self.counters: Counter[str] = Counter({"handshake_failed": 0, "rejected": 0, "event_overflow": 0})

    # ---- public API ----

    @property
    def peer_id(self) -> ID:
        return self.libp2p.get_id()

    @property
    def address(self) -> Address:
        return address_of_peer(self.peer_id)

    def hello(self) -> Hello:
        return Hello(self.config.chain_id, self.config.genesis_hash, self._head_height(), tuple(self.listen_addrs()))

    def listen_addrs(self) -> list[str]:
        """Full dialable multiaddrs of this host (with /p2p/<id>)."""
        return [f"{a}/p2p/{self.peer_id}" for a in self.libp2p.get_transport_addrs()]

    def peers(self) -> list[PeerStatus]:
        """Connected peers that passed the handshake."""
        return sorted(self._verified.values(), key=lambda p: str(p.peer_id))

    def peer(self, peer_id: ID) -> PeerStatus | None:
        return self._verified.get(peer_id)

    async def wait_peers(self, count: int) -> None:
        """Return once at least `count` peers have passed the handshake."""
        while len(self._verified) < count:
            await self._changed.wait()

    async def wait_change(self) -> None:
        """Return at the next peer change (connection, disconnection, handshake, ban)."""
        await self._changed.wait()

    async def wait_peer(self, peer_id: ID) -> PeerStatus:
        """Return once `peer_id` has passed the handshake."""
        while peer_id not in self._verified:
            await self._changed.wait()
        return self._verified[peer_id]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds; it is re-checked after every peer change (connection,
        disconnection, handshake, ban)."""
        while not predicate():
            await self._changed.wait()

    async def connect(self, maddr: str) -> ID:
        """Dial `maddr` (with /p2p/<id>); raises P2PError if it cannot be reached or is banned."""
        info = info_from_p2p_addr(parse_multiaddrs((maddr,), "peer")[0])
        if self.guard.banned(info.peer_id):
            raise P2PError(f"{info.peer_id} is banned for another {self.guard.ban_remaining(info.peer_id):.0f} s")
        try:
            await self.libp2p.connect(info)
        except Exception as exc:  # swarm errors come in many types
            raise P2PError(f"cannot connect to {maddr}: {exc}") from exc
        return info.peer_id

    def statistics(self) -> dict[str, int]:
        capture = self.capture.statistics() if self.capture is not None else {}
        return {**self.counters, **{f"guard.{k}": v for k, v in self.guard.statistics().items()},
                **{f"gossip_dropped.{k}": v for k, v in self.pubsub.dropped.items()},
                **{f"capture.{k}": v for k, v in capture.items()}}

    def pubsub_view(self) -> dict[str, Any]:
        """Who pubsub talks to: its peers, each topic's mesh and subscribers, and each peer's gossipsub
        score (peers below the gossip threshold get none of our messages)."""
        short = lambda p: str(p)[-8:]  # noqa: E731
        topics = sorted(self.pubsub.peer_topics)
        scorer = self.scorer
        return {
            "peers": sorted(short(p) for p in self.pubsub.peers),
            "mesh": {t: sorted(short(p) for p in self.router.mesh.get(t, ())) for t in topics},
            "subscribers": {t: sorted(short(p) for p in self.pubsub.peer_topics[t]) for t in topics},
            "scores": {short(p): round(scorer.score(p, topics), 2) for p in self.pubsub.peers},
            "backoff": {t: sorted(short(p) for p in peers) for t, peers in self.router.back_off.items()},
        }

    @asynccontextmanager
    async def run(self) -> AsyncIterator[P2PHost]:
        try:
            async with self._running():
                yield self
        finally:
            if self.capture is not None:
                self.capture.close()

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        async with background_trio_service(self.pubsub), background_trio_service(self.router):
            self.libp2p.set_stream_handler(HANDSHAKE_PROTOCOL, self.guard.wrap(
                HANDSHAKE_PROTOCOL, self._on_handshake_stream, rate=self.config.limits.control_streams))
            self.libp2p.get_network().register_notifee(_Notifee(self))
            async with self.libp2p.run(listen_addrs=self._listen), trio.open_nursery() as nursery:
                nursery.start_soon(self._event_loop, nursery)
                nursery.start_soon(self._enforce_bans)
                nursery.start_soon(self._police_scores)
                for maddr in self.config.bootstrap:
                    nursery.start_soon(self._keep_connected, maddr)
                if self.config.enable_mdns:
                    nursery.start_soon(self._dial_discovered)
                yield
                nursery.cancel_scope.cancel()

    # ---- inbound connections ----

    def _install_inbound_guard(self) -> None:
        """Route inbound TCP connections through `_on_inbound` (checks per IP before the Noise handshake,
        and the handler ends with its connection: py-libp2p's held a slot of its inbound limiter until
        the swarm stopped)."""
        swarm: Any = self.libp2p.get_network()  # py-libp2p's Swarm: its private parts are not in INetworkService
        for name in ("_handle_inbound_connection", "upgrade_inbound_raw_conn", "_inbound_limiter"):
            if not hasattr(swarm, name):
                raise ConfigError(f"py-libp2p's Swarm has no {name}: swarmnode.p2p.host guards inbound "
                                  f"connections through it (written for py-libp2p 0.8.1)")
        self._py_libp2p_inbound = swarm._handle_inbound_connection
        swarm._handle_inbound_connection = self._on_inbound

    async def _on_inbound(self, read_write_closer: Any, maddr: multiaddr.Multiaddr) -> None:
        if isinstance(read_write_closer, IMuxedConn):  # QUIC and the like (not used): py-libp2p's path
            await self._py_libp2p_inbound(read_write_closer, maddr)
            return
        ip = remote_ip(read_write_closer)
        refusal = self.guard.admit_inbound(ip)
        if refusal:
            self.counters[f"inbound_refused.{refusal}"] += 1
            log.debug("inbound connection from %s refused: %s", ip, refusal)
            await wire.close_quietly(read_write_closer, "inbound connection")
            return
        raw = RawConnection(read_write_closer, False)
        try:
            swarm: Any = self.libp2p.get_network()
            muxed = await swarm.upgrade_inbound_raw_conn(raw, maddr)
        except Exception as exc:  # a failed Noise/yamux handshake, py-libp2p's own connection caps
            self.counters["inbound_failed"] += 1
            log.debug("inbound connection from %s failed: %s", ip, exc)
            await wire.close_quietly(raw, "inbound connection")
            return
        finally:
            self.guard.upgrade_done(ip)
        closed = getattr(muxed, "event_closed", None)
        if closed is not None:  # the TCP listener does not close a socket when its handler returns
            self.inbound_handlers += 1
            try:
                await closed.wait()
            finally:
                self.inbound_handlers -= 1

    # ---- connection events and handshakes ----

    def _on_connection_event(self, peer_id: ID, conn: INetConn, connected: bool) -> None:
        try:
            self._events_send.send_nowait((peer_id, conn, connected))
        except trio.WouldBlock:
            self.counters["event_overflow"] += 1

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _event_loop(self, nursery: trio.Nursery) -> None:
        async for peer_id, conn, connected in self._events_recv:
            if connected:
                refusal = self._admit_connection(peer_id, conn)
                if refusal:
                    self.counters[f"connection_refused.{refusal}"] += 1
                    log.info("closing a connection from %s: %s", peer_id, refusal)
                    nursery.start_soon(self._close_connection, conn)
                # every new connection is handshaken, even to a known peer (it may have restarted)
                elif peer_id not in self._in_progress:
                    self._in_progress.add(peer_id)
                    nursery.start_soon(self._handshake_outbound, peer_id)
            else:
                inbound = self._inbound_conns.pop(conn, None)
                if inbound is not None:
                    self.guard.inbound_closed(*inbound)
                if not self.libp2p.get_network().get_connections(peer_id):
                    self._verified.pop(peer_id, None)
                    self._notify()

    def _admit_connection(self, peer_id: ID, conn: INetConn) -> str:
        """Whether a new connection may stay: "" or why not (banned peer; for an inbound one: too many
        peers from its IP address, or too many peers in all)."""
        if self.guard.banned(peer_id):
            return "banned"
        if getattr(conn.muxed_conn, "is_initiator", True):
            return ""  # we dialed it: our dialers keep to max_peers themselves
        ip = remote_ip(conn.muxed_conn)
        self._inbound_conns[conn] = (ip, peer_id)
        if not self.guard.inbound_opened(ip, peer_id):
            return "peers from this address"
        network = self.libp2p.get_network()
        if len(network.get_connections_map()) > self.config.max_peers and len(network.get_connections(peer_id)) <= 1:
            return "max peers"
        return ""

    async def _close_connection(self, conn: INetConn) -> None:
        try:
            await conn.close()
        except Exception as exc:  # already closing
            log.debug("closing a connection: %s", exc)

    async def _handshake_outbound(self, peer_id: ID) -> None:
        try:
            with trio.fail_after(self.config.handshake_timeout):
                stream = await self.libp2p.new_stream(peer_id, [HANDSHAKE_PROTOCOL])
                try:
                    theirs = await exchange(stream, self.hello(), initiator=True)
                finally:
                    await _close(stream)
            self._accept(peer_id, theirs)
        except (HandshakeError, IdentityError) as exc:
            await self._reject(peer_id, str(exc))
        except (trio.TooSlowError, Exception) as exc:  # the peer vanished or stalled mid-handshake
            self.counters["handshake_failed"] += 1
            log.info("handshake with %s failed: %s", peer_id, exc)
        finally:
            self._in_progress.discard(peer_id)

    async def _on_handshake_stream(self, stream: INetStream) -> None:
        peer_id = stream.muxed_conn.peer_id
        try:
            with trio.fail_after(self.config.handshake_timeout):
                theirs = await exchange(stream, self.hello(), initiator=False)
            self._accept(peer_id, theirs)
        except (HandshakeError, IdentityError) as exc:
            await self._reject(peer_id, str(exc))
        except (trio.TooSlowError, Exception) as exc:
            self.counters["handshake_failed"] += 1
            log.info("inbound handshake from %s failed: %s", peer_id, exc)
        finally:
            await _close(stream)

    def _accept(self, peer_id: ID, theirs: Hello) -> None:
        if not self.libp2p.get_network().get_connections(peer_id) or self.guard.banned(peer_id):
            return  # disconnected (or banned) meanwhile
        addrs = tuple(str(a) for a in self.libp2p.get_peerstore().addrs(peer_id))
        listen = tuple(a for a in theirs.listen_addrs if a.endswith(f"/p2p/{peer_id}"))
        self._verified[peer_id] = PeerStatus(peer_id, address_of_peer(peer_id), theirs.head_height, addrs, listen)
        self._notify()

    async def wait_rejections(self, count: int) -> None:
        """Return once `count` peers have been disconnected for failing the handshake."""
        while self.counters["rejected"] < count:
            await self._changed.wait()

    def score(self, peer_id: ID, topic: str) -> float:
        """The gossipsub score of a peer on a topic (drops with each invalid message it forwarded)."""
        return self.scorer.score(peer_id, [topic])

    async def _reject(self, peer_id: ID, reason: str) -> None:
        self.counters["rejected"] += 1
        log.warning("disconnecting %s: %s", peer_id, reason)
        self._verified.pop(peer_id, None)
        try:
            await self.libp2p.disconnect(peer_id)
        except Exception as exc:  # already gone
            log.debug("disconnect %s: %s", peer_id, exc)
        self._notify()

    # ---- offenders ----

    def _on_ban(self, peer_id: ID, reason: str) -> None:
        """PeerGuard banned `peer_id` (called from sync code on the event loop): forget it now, disconnect
        it soon (everything else consults the guard)."""
        self._verified.pop(peer_id, None)
        try:
            self._bans_send.send_nowait(peer_id)
        except trio.WouldBlock:  # still refused everywhere; a new connection of it is closed on sight
            self.counters["ban_overflow"] += 1
        self._notify()

    async def _enforce_bans(self) -> None:
        async for peer_id in self._bans_recv:
            self.counters["disconnected_offenders"] += 1
            try:
                await self.libp2p.disconnect(peer_id)
            except Exception as exc:  # already gone
                log.debug("disconnect %s: %s", peer_id, exc)

    async def _police_scores(self) -> None:
        """Every heartbeat (gossipsub scores decay once a heartbeat): ban peers whose gossipsub score is
        below gossip_disconnect_threshold."""
        threshold = self.config.limits.gossip_disconnect_threshold
        while True:
            await trio.sleep(max(1, self.config.gossip_heartbeat))  # scores change with time, not events
            topics = list(self.pubsub.topic_ids)
            for peer_id in list(self._verified):
                score = self.scorer.score(peer_id, topics)
                if score < threshold and not self.guard.banned(peer_id):
                    self.counters["gossip_score_bans"] += 1
                    self.guard.ban(peer_id, f"gossipsub score {score:.0f} below {threshold:.0f}")

    # ---- bootstrap ----

    async def _keep_connected(self, maddr: str) -> None:
        """Stay connected to one bootstrap peer, redialing with exponential backoff (and not at all
        while it is banned)."""
        delay = self.config.reconnect_initial
        peer_id = info_from_p2p_addr(multiaddr.Multiaddr(maddr)).peer_id
        while True:
            if self.libp2p.get_network().get_connections(peer_id):
                if peer_id in self._verified:
                    delay = self.config.reconnect_initial
                await self._changed.wait()  # re-check on every peer change
                continue
            banned_for = self.guard.ban_remaining(peer_id)
            if banned_for > 0:
                await trio.sleep(banned_for)  # the ban's end is a time, not an event
                continue
            try:
                await self.connect(maddr)
                continue
            except P2PError as exc:
                log.info("bootstrap %s unreachable (retry in %.1fs): %s", maddr, delay, exc)
            await trio.sleep(delay)  # backoff, not synchronization
            delay = min(delay * 2, self.config.reconnect_max)

    async def _dial_discovered(self) -> None:
        """mDNS only fills the peerstore (from a zeroconf thread): dial what it found, now and then."""
        failures: dict[ID, float] = {}
        while True:
            now = trio.current_time()
            for peer_id in self.libp2p.get_peerstore().peers_with_addrs():
                if peer_id == self.peer_id or self.libp2p.get_network().get_connections(peer_id):
                    continue
                if now - failures.get(peer_id, -1e9) < self.config.reconnect_max or self.guard.banned(peer_id):
                    continue
                try:
                    await self.libp2p.connect(PeerInfo(peer_id, self.libp2p.get_peerstore().addrs(peer_id)))
                except Exception as exc:  # unreachable or gone: try again after reconnect_max
                    failures[peer_id] = now
                    log.debug("mDNS peer %s unreachable: %s", peer_id, exc)
            await trio.sleep(self.config.reconnect_initial * 4)  # discovery has no event to wait on


async def _close(stream: INetStream) -> None:
    try:
        await stream.close()
    except Exception as exc:  # the stream may already be reset by the peer
        log.debug("closing stream: %s", exc)
