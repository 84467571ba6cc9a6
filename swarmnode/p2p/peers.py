"""The /swarmnode/peers/1 protocol: peer exchange, so nodes that know one bootstrap address meet the rest.

Every node asks each verified peer (on connect, then every `interval` seconds) for the peers *it* has
verified and the addresses they stated in their handshakes, and dials the ones it lacks, up to
`max_peers`. While nothing changes (the same peers here, the same listings from each of them, nobody to
dial) the refresh interval doubles, up to `max_interval`; any change brings it back to `interval`. In a
settled swarm the exchange was nearly all of an idle node's network CPU: ten nodes opened 18 streams a
second between them (117 ms of CPU per second in one process, 12 without it). The answers also tell us who is connected to whom; the direct consensus transport uses
that to skip relaying a vote to a peer that already heard it from its signer.

To avoid both ends dialing each other at once, the node with the smaller peer id dials first; the
other one dials only if the listed peer is still unconnected `interval` seconds later. A banned peer is
never dialed; listing requests are held to Limits.control_streams per peer.
"""

from __future__ import annotations

import logging
from collections import Counter

import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from consensus.votes import Address
from swarmnode.p2p import wire
from swarmnode.p2p.errors import IdentityError, P2PError, WireError
from swarmnode.p2p.host import P2PHost
from swarmnode.p2p.identity import address_of_peer

PEERS_PROTOCOL = TProtocol("/swarmnode/peers/1")
MAX_LISTED = 64
MAX_ADDRS = 8
MAX_REMEMBERED = 4096  # listed peers we have not connected to, remembered for the dial-order rule

log = logging.getLogger(__name__)


def encode_listing(chain_id: int, listing: list[tuple[ID, tuple[str, ...]]]) -> wire.Envelope:
    return wire.Envelope(chain_id, wire.PEERS, [[p.to_bytes(), list(a[:MAX_ADDRS])] for p, a in listing[:MAX_LISTED]])


def decode_listing(env: wire.Envelope) -> list[tuple[ID, tuple[str, ...]]]:
    """Strict decoding of a peer listing; raises WireError."""
    entries = wire.as_list(env.body, None, "peer listing")
    if len(entries) > MAX_LISTED:
        raise WireError(f"peer listing has {len(entries)} entries, limit {MAX_LISTED}")
    out = []
    for entry in entries:
        raw_id, addrs = wire.as_list(entry, 2, "peer entry")
        peer_id = ID(wire.as_bytes(raw_id, "peer id", max_len=64))
        try:
            address_of_peer(peer_id)
        except IdentityError as exc:
            raise WireError(f"listed peer: {exc}") from exc
        addr_list = wire.as_list(addrs, None, "peer addresses")
        if len(addr_list) > MAX_ADDRS:
            raise WireError(f"peer entry has {len(addr_list)} addresses, limit {MAX_ADDRS}")
        out.append((peer_id, tuple(wire.as_str(a, "peer address") for a in addr_list)))
    return out


class PeerExchange:
    def __init__(self, host: P2PHost, *, max_peers: int = 32, interval: float = 5.0, timeout: float = 5.0,
                 max_interval: float | None = None) -> None:
        self.host = host
        self.max_peers = max_peers
        self.interval = interval
        self.max_interval = max_interval if max_interval is not None else 8 * interval
        self.timeout = timeout
        self.changes = 0  # our peer set changed, a listing changed, or a dial started: counted
        self.neighbours: dict[ID, frozenset[Address]] = {}  # peer -> chain addresses of its peers
        self._first_listed: dict[ID, float] = {}
        self._dialing: set[ID] = set()
        self._exchanged = trio.Event()
        self.counters: Counter[str] = Counter()

    def attach(self) -> None:
        guard = self.host.guard
        self.host.libp2p.set_stream_handler(PEERS_PROTOCOL, guard.wrap(PEERS_PROTOCOL, self._serve,
                                                                       rate=guard.limits.control_streams))

    def knows_connected(self, peer: ID, address: Address) -> bool:
        """True when `peer`'s latest listing says it is connected to the node with chain `address`."""
        return address in self.neighbours.get(peer, frozenset())

    async def wait_listings(self, peers: set[ID]) -> None:
        """Return once a listing has been received from every one of `peers` (since it connected)."""
        while not peers <= self.neighbours.keys():
            await self._exchanged.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._on_new_peers, nursery)
            task_status.started()
            wait = self.interval
            while True:
                await trio.sleep(wait)  # periodic refresh: listings change without any event here
                before = self.changes
                async with trio.open_nursery() as refresh:  # this refresh's exchanges, to judge it quiet
                    for peer in self.host.peers():
                        refresh.start_soon(self.exchange, peer.peer_id, nursery)
                wait = min(2 * wait, self.max_interval) if self.changes == before else self.interval

    async def _on_new_peers(self, nursery: trio.Nursery) -> None:
        known: set[ID] = set()
        while True:
            current = {p.peer_id for p in self.host.peers()}
            if current != known:
                self.changes += 1
            for peer_id in current - known:
                nursery.start_soon(self.exchange, peer_id, nursery)
            for peer_id in known - current:
                self.neighbours.pop(peer_id, None)
            known = current
            await self.host.wait_change()

    async def exchange(self, peer_id: ID, nursery: trio.Nursery | None = None) -> None:
        """Ask `peer_id` for its peers; remember them and dial the ones we lack (in `nursery`)."""
        try:
            with trio.fail_after(self.timeout):
                stream = await self.host.libp2p.new_stream(peer_id, [PEERS_PROTOCOL])
                try:
                    await wire.write_envelope(stream, wire.Envelope(self.host.config.chain_id, wire.PEERS_REQUEST, []))
                    env = await wire.read_envelope(stream, self.host.config.chain_id, frozenset({wire.PEERS}))
                    listing = decode_listing(env)
                finally:
                    await wire.close_quietly(stream, "peers")
        except WireError as exc:
            self.counters["bad_listing"] += 1
            log.info("peer %s sent a bad peer listing: %s", peer_id, exc)
            self.host.guard.penalize(peer_id, self.host.guard.limits.invalid_points, f"bad peer listing: {exc}")
            return
        except (trio.TooSlowError, Exception) as exc:  # the peer went away or does not speak the protocol
            self.counters["failed"] += 1
            log.debug("peer exchange with %s failed: %s", peer_id, exc)
            return
        self.counters["exchanges"] += 1
        neighbours = frozenset(address_of_peer(p) for p, _ in listing)
        if self.neighbours.get(peer_id) != neighbours:
            self.changes += 1
        self.neighbours[peer_id] = neighbours
        self._exchanged.set()
        self._exchanged = trio.Event()
        if nursery is not None:
            for listed, addrs in listing:
                if self._should_dial(listed, addrs):
                    self.changes += 1
                    self._dialing.add(listed)
                    nursery.start_soon(self._dial, listed, addrs)

    def _should_dial(self, peer_id: ID, addrs: tuple[str, ...]) -> bool:
        me = self.host.peer_id
        if peer_id == me or not addrs or peer_id in self._dialing or self.host.guard.banned(peer_id):
            return False
        if self.host.libp2p.get_network().get_connections(peer_id):
            self._first_listed.pop(peer_id, None)
            return False
        if len(self.host.peers()) >= self.max_peers:
            return False
        now = trio.current_time()
        if peer_id not in self._first_listed and len(self._first_listed) >= MAX_REMEMBERED:
            # listings are a peer's word: a hostile one can name any number of ids. Oldest forgotten first
            del self._first_listed[next(iter(self._first_listed))]
        first = self._first_listed.setdefault(peer_id, now)
        return me.to_bytes() < peer_id.to_bytes() or now - first >= self.interval

    async def _dial(self, peer_id: ID, addrs: tuple[str, ...]) -> None:
        try:
            for addr in addrs:
                if not addr.endswith(f"/p2p/{peer_id}"):
                    continue
                try:
                    with trio.fail_after(self.timeout):
                        await self.host.connect(addr)
                    self.counters["dialed"] += 1
                    return
                except (P2PError, trio.TooSlowError) as exc:
                    log.debug("dialing listed peer %s at %s failed: %s", peer_id, addr, exc)
            self.counters["dial_failed"] += 1
        finally:
            self._dialing.discard(peer_id)

    async def _serve(self, stream: INetStream) -> None:
        peer_id = stream.muxed_conn.peer_id
        try:
            if self.host.peer(peer_id) is None:
                raise P2PError("peer has not passed the handshake")
            with trio.fail_after(self.timeout):
                await wire.read_envelope(stream, self.host.config.chain_id, frozenset({wire.PEERS_REQUEST}))
                listing = [(p.peer_id, p.listen) for p in self.host.peers() if p.peer_id != peer_id]
                await wire.write_envelope(stream, encode_listing(self.host.config.chain_id, listing))
            self.counters["served"] += 1
        except (trio.TooSlowError, Exception) as exc:  # bad request or vanished peer: answer nothing
            self.counters["serve_failed"] += 1
            log.debug("peer listing for %s not served: %s", peer_id, exc)
        finally:
            await wire.close_quietly(stream, "peers")

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)
