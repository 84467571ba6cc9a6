"""The p2p configuration: built once (CLI / TOML), frozen, passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from swarmnode.p2p.errors import ConfigError

MiB = 1024 * 1024


@dataclass(frozen=True)
class Rate:
    """A token bucket: `per_second` tokens refill, up to `burst` held (a new peer starts full)."""

    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ConfigError(f"rate of {self.per_second}/s with a burst of {self.burst} is unusable")


@dataclass(frozen=True)
class Limits:
    """What one peer (or one IP address) may cost this node. Every limit is per peer unless it says
    otherwise; a peer past a rate has what it sent dropped (or refused, on request/response protocols)
    and collects penalty points; at `ban_points` it is disconnected and refused for a back-off period.

    The rates are set well above what an honest node sends (a validator in a 10-node swarm sends a few
    dozen consensus frames per second, a participant a handful of transactions per round), so that only
    a flood reaches them."""

    # ---- connections ----
    max_connections: int = 128  # py-libp2p's own cap, both directions (a backstop behind max_peers)
    max_connections_per_peer: int = 3
    max_inbound_per_ip: int = 16  # distinct peers connected in from one IP address
    max_upgrading_per_ip: int = 16  # inbound connections from one IP still in their Noise/yamux handshake
    inbound_per_ip: Rate = Rate(4.0, 32.0)  # new inbound TCP connections per IP address
    max_streams_per_protocol: int = 8  # concurrent inbound streams per peer on each protocol
    # ---- rates ----
    consensus_frames: Rate = Rate(500.0, 1000.0)  # /swarmnode/consensus/1 frames
    consensus_bytes: Rate = Rate(16.0 * MiB, 32.0 * MiB)
    gossip_forwarded: Rate = Rate(500.0, 2000.0)  # gossip messages per topic a peer forwards, before any check
    gossip_originated: Rate = Rate(200.0, 1000.0)  # per topic, per (forwarding peer, original publisher)
    blob_requests: Rate = Rate(20.0, 64.0)
    sync_requests: Rate = Rate(4.0, 16.0)
    control_streams: Rate = Rate(2.0, 16.0)  # handshake and peer-exchange streams
    max_blob_serves_per_peer: int = 2  # concurrent; more are answered "busy"
    max_sync_serves_per_peer: int = 2  # concurrent; more are refused "busy"
    max_sync_blocks: int = 64  # per sync request; a longer range is refused (our own requests ask sync_batch)
    # ---- penalties, bans ----
    over_rate_points: float = 1.0  # per message or stream past a rate
    invalid_points: float = 1.0  # per malformed / forged / oversize message (streams are also reset sooner)
    ban_points: float = 100.0  # decaying penalty points at which a peer is disconnected and banned
    points_half_life: float = 30.0  # seconds
    ban_initial: float = 60.0  # seconds; doubled for each further ban of the same peer, up to ban_max
    ban_max: float = 3600.0
    # ---- gossipsub score (py-libp2p's thresholds default to -inf: never act) ----
    # one invalid message forwarded costs 10 points on its topic, decaying by 10% a second
    gossip_gossip_threshold: float = -100.0  # below: nothing is forwarded to the peer (py-libp2p gates mesh
    #                                          forwarding with it, not only IHAVE gossip)
    gossip_publish_threshold: float = -150.0  # below: its messages are dropped before any check
    gossip_graylist_threshold: float = -300.0  # below: its GRAFTs are refused, it leaves our meshes
    gossip_disconnect_threshold: float = -500.0  # below: disconnected and banned (our rule, not py-libp2p's)

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_connections_per_peer, self.max_inbound_per_ip,
               self.max_upgrading_per_ip, self.max_streams_per_protocol, self.max_blob_serves_per_peer,
               self.max_sync_serves_per_peer, self.max_sync_blocks) < 1:
            raise ConfigError("connection, stream and serve limits must be at least 1")
        if not self.ban_points > 0 or not self.points_half_life > 0 or not 0 < self.ban_initial <= self.ban_max:
            raise ConfigError("ban_points, points_half_life and 0 < ban_initial <= ban_max are required")
        if not (self.gossip_disconnect_threshold <= self.gossip_graylist_threshold
                <= self.gossip_publish_threshold <= self.gossip_gossip_threshold <= 0):
            raise ConfigError("gossipsub thresholds must satisfy disconnect <= graylist <= publish <= gossip <= 0")


@dataclass(frozen=True)
class P2PConfig:
    secret: bytes  # 32-byte secp256k1 secret: libp2p identity and chain account
    chain_id: int
    genesis_hash: bytes  # 32 bytes
    listen_addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()  # /ip4/../tcp/../p2p/<peer id>
    enable_mdns: bool = False
    reconnect_initial: float = 0.5  # seconds; doubles up to reconnect_max
    reconnect_max: float = 30.0
    handshake_timeout: float = 10.0
    gossip_capacity: int = 256  # per-topic channel to the application
    gossip_heartbeat: int = 1  # seconds (py-libp2p types it int)
    gossip_rate_limit: float | None = 500.0  # msgs/s per peer per topic; None disables the spam guard
    max_blob_bytes: int = 64 * MiB
    blob_chunk_bytes: int = 1 * MiB
    blob_timeout: float = 60.0  # one transfer from one provider
    # a provider that has not answered a request's header after this long gets company: the next
    # provider is asked too, and the first intact copy wins (a cut-off or stalled peer costs this, not
    # the stream-open timeout of ~10-30 s)
    blob_stagger: float = 1.0
    max_concurrent_fetches: int = 4
    max_concurrent_serves: int = 8
    sync_batch: int = 32  # blocks per sync request
    sync_timeout: float = 30.0
    peer_exchange: bool = True  # ask peers for their peers and dial them (up to max_peers)
    peer_exchange_interval: float = 5.0
    max_peers: int = 32  # connected peers; an inbound connection from one more is closed
    limits: Limits = field(default_factory=Limits)
    # audit/debugging: every byte exchanged with peers, plaintext and raw, is written here (capture.py);
    # None (the default) installs nothing
    capture_dir: Path | None = None

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise ConfigError(f"secret must be 32 bytes, got {len(self.secret)}")
        if len(self.genesis_hash) != 32:
            raise ConfigError(f"genesis hash must be 32 bytes, got {len(self.genesis_hash)}")
        if not self.listen_addrs:
            raise ConfigError("at least one listen address is needed")
        if self.blob_chunk_bytes > self.max_blob_bytes or self.blob_chunk_bytes < 1024:
            raise ConfigError(f"blob chunk of {self.blob_chunk_bytes} bytes is out of range")
        if self.sync_batch > self.limits.max_sync_blocks:
            raise ConfigError(f"sync_batch {self.sync_batch} exceeds what peers serve ({self.limits.max_sync_blocks})")
        if self.max_peers < 1:
            raise ConfigError("max_peers must be at least 1")
