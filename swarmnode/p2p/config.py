"""The p2p configuration: built once (CLI / TOML), frozen, passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass

from swarmnode.p2p.errors import ConfigError

MiB = 1024 * 1024


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
    max_peers: int = 32

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise ConfigError(f"secret must be 32 bytes, got {len(self.secret)}")
        if len(self.genesis_hash) != 32:
            raise ConfigError(f"genesis hash must be 32 bytes, got {len(self.genesis_hash)}")
        if not self.listen_addrs:
            raise ConfigError("at least one listen address is needed")
        if self.blob_chunk_bytes > self.max_blob_bytes or self.blob_chunk_bytes < 1024:
            raise ConfigError(f"blob chunk of {self.blob_chunk_bytes} bytes is out of range")
