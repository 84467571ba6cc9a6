"""The libp2p host: TCP + Noise only + yamux, secp256k1 identity, handshake, bootstrap with backoff.

`async with P2PHost(config).run() as host:` starts pubsub before the host listens (py-libp2p 0.8.1
crashes on the first inbound pubsub stream otherwise) and stops everything on exit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import ScoreParams, TopicScoreParams
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from consensus.votes import Address
from swarmnode.p2p import pubsub_records, yamux_credit
from swarmnode.p2p.config import P2PConfig
from swarmnode.p2p.errors import ConfigError, HandshakeError, IdentityError, P2PError
from swarmnode.p2p.handshake import HANDSHAKE_PROTOCOL, Hello, exchange
from swarmnode.p2p.identity import address_of_peer, key_pair_of

log = logging.getLogger(__name__)

# py-libp2p's yamux returns flow-control credit after (nearly) every read, which for small consensus
# frames doubles the frames on the wire. yamux_credit returns it in batches instead, once an eighth of
# the window is consumed (go-yamux waits for half; an eighth keeps 8 MB blob fetches as fast).
# py-libp2p reads the divisor at call time.
os.environ.setdefault("PY_YAMUX_BATCH_THRESHOLD_DIV", "8")
yamux_credit.install()
# pubsub checks each peer's signed record once per record, not on every RPC (pubsub_records.py)
pubsub_records.install()

# meshsub 1.1: 1.2+ adds an IDONTWANT control message per received message, pure overhead here
GOSSIPSUB_PROTOCOLS = [TProtocol("/meshsub/1.1.0"), TProtocol("/meshsub/1.0.0")]


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
        self._host._on_connection_event(conn.muxed_conn.peer_id, True)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._host._on_connection_event(conn.muxed_conn.peer_id, False)

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
        noise = NoiseTransport(self.key_pair, noise_privkey=create_x25519_key_pair().private_key)
        self.libp2p = new_host(
            key_pair=self.key_pair, sec_opt={NOISE_PROTOCOL_ID: noise}, muxer_preference="YAMUX",
            listen_addrs=self._listen, enable_mDNS=config.enable_mdns,
        )
        self.router = GossipSub(
            protocols=GOSSIPSUB_PROTOCOLS, degree=6, degree_low=4, degree_high=12,
            heartbeat_interval=config.gossip_heartbeat, heartbeat_initial_delay=0.1,
            spam_protection_enabled=config.gossip_rate_limit is not None,
            max_messages_per_topic_per_second=config.gossip_rate_limit or 10.0,
            eclipse_protection_enabled=False,  # counts IPs: every loopback peer looks like one
            # py-libp2p's default weights are all 0: nothing would lower a peer's score. Count invalid
            # messages (topic validator rejections) against the forwarding peer.
            score_params=ScoreParams(p4_invalid_messages=TopicScoreParams(weight=10.0, cap=100.0, decay=0.9)),
        )
        self.pubsub = Pubsub(self.libp2p, self.router)
        self._events_send, self._events_recv = trio.open_memory_channel[tuple[ID, bool]](1024)
        self._verified: dict[ID, PeerStatus] = {}
        self._in_progress: set[ID] = set()
        self._changed = trio.Event()
        self.counters: dict[str, int] = {"handshake_failed": 0, "rejected": 0, "event_overflow": 0}

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
        """Return at the next peer change (connection, disconnection, handshake)."""
        await self._changed.wait()

    async def wait_peer(self, peer_id: ID) -> PeerStatus:
        """Return once `peer_id` has passed the handshake."""
        while peer_id not in self._verified:
            await self._changed.wait()
        return self._verified[peer_id]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds; it is re-checked after every peer change (connection,
        disconnection, handshake)."""
        while not predicate():
            await self._changed.wait()

    async def connect(self, maddr: str) -> ID:
        """Dial `maddr` (with /p2p/<id>); raises P2PError if it cannot be reached."""
        info = info_from_p2p_addr(parse_multiaddrs((maddr,), "peer")[0])
        try:
            await self.libp2p.connect(info)
        except Exception as exc:  # swarm errors come in many types
            raise P2PError(f"cannot connect to {maddr}: {exc}") from exc
        return info.peer_id

    @asynccontextmanager
    async def run(self) -> AsyncIterator[P2PHost]:
        async with background_trio_service(self.pubsub), background_trio_service(self.router):
            self.libp2p.set_stream_handler(HANDSHAKE_PROTOCOL, self._on_handshake_stream)
            self.libp2p.get_network().register_notifee(_Notifee(self))
            async with self.libp2p.run(listen_addrs=self._listen), trio.open_nursery() as nursery:
                nursery.start_soon(self._event_loop, nursery)
                for maddr in self.config.bootstrap:
                    nursery.start_soon(self._keep_connected, maddr)
                if self.config.enable_mdns:
                    nursery.start_soon(self._dial_discovered)
                yield self
                nursery.cancel_scope.cancel()

    # ---- connection events and handshakes ----

    def _on_connection_event(self, peer_id: ID, connected: bool) -> None:
        try:
            self._events_send.send_nowait((peer_id, connected))
        except trio.WouldBlock:
            self.counters["event_overflow"] += 1

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _event_loop(self, nursery: trio.Nursery) -> None:
        async for peer_id, connected in self._events_recv:
            if connected:  # every new connection is handshaken, even to a known peer (it may have restarted)
                if peer_id not in self._in_progress:
                    self._in_progress.add(peer_id)
                    nursery.start_soon(self._handshake_outbound, peer_id)
            elif not self.libp2p.get_network().get_connections(peer_id):
                self._verified.pop(peer_id, None)
                self._notify()

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
        if not self.libp2p.get_network().get_connections(peer_id):
            return  # disconnected meanwhile
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
        scorer = self.router.scorer
        return scorer.score(peer_id, [topic]) if scorer is not None else 0.0

    async def _reject(self, peer_id: ID, reason: str) -> None:
        self.counters["rejected"] += 1
        log.warning("disconnecting %s: %s", peer_id, reason)
        self._verified.pop(peer_id, None)
        try:
            await self.libp2p.disconnect(peer_id)
        except Exception as exc:  # already gone
            log.debug("disconnect %s: %s", peer_id, exc)
        self._notify()

    # ---- bootstrap ----

    async def _keep_connected(self, maddr: str) -> None:
        """Stay connected to one bootstrap peer, redialing with exponential backoff."""
        delay = self.config.reconnect_initial
        peer_id = info_from_p2p_addr(multiaddr.Multiaddr(maddr)).peer_id
        while True:
            if self.libp2p.get_network().get_connections(peer_id):
                if peer_id in self._verified:
                    delay = self.config.reconnect_initial
                await self._changed.wait()  # re-check on every peer change
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
                if now - failures.get(peer_id, -1e9) < self.config.reconnect_max:
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
