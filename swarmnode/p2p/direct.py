"""The consensus transport: /swarmnode/consensus/1, one long-lived stream to each verified peer.

GossipSub in py-libp2p 0.8.1 costs 2.5-4 ms of CPU per message per hop (pubsub signatures, protobuf,
control traffic, a yamux window update per read), which made consensus over libp2p 5-7x slower than
over the in-memory network. Consensus messages are small, frequent and go to every validator, so they
take a direct path instead:

- `broadcast` queues the message on every verified peer's stream. A writer task per peer sends what is
  queued as one batch of length-prefixed frames, so a burst of votes costs one Noise/yamux frame.
- A received frame first costs the peer a token of its frame and byte rates (config.Limits): past them
  it is dropped unread and the peer is penalized (PeerGuard; a persistent flooder is disconnected and
  banned). Then it is checked exactly as the gossip topic validator checks it (strict decoding, chain
  id, vote signature, known signer, height window), and a proposal's block must hash to what its
  proposer signed (`block_hash`, when given): nothing unchecked reaches the driver or another peer.
  Invalid frames cost the sender penalty points; past `max_invalid` on one stream, that stream is reset
  (a persistent offender is banned by its points).
- At most `max_streams_per_protocol` streams per peer (one is used; a reconnect may briefly add one).
- A new valid proposal or vote is relayed to the other peers, except its sender, its signer, and peers
  whose latest peer listing (swarmnode.p2p.peers) says they are connected to the signer, who heard it
  first-hand. With validators fully connected there is no relaying at all; in a partial mesh (a
  follower behind one validator, a star around the bootstrap node) messages still reach everyone.
- Queues are bounded and never block the driver: a full queue drops (counted); the driver re-broadcasts
  while a height is stuck and catches up by sync.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable

import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from consensus.interfaces import Network
from consensus.messages import ProposalMessage
from consensus.votes import Address
from swarmnode.p2p import wire
from swarmnode.p2p.errors import FrameError, OutsideWindow, UnknownSigner, WireError
from swarmnode.p2p.host import P2PHost
from swarmnode.p2p.topics import TopicPolicy, check_consensus_message

CONSENSUS_PROTOCOL = TProtocol("/swarmnode/consensus/1")

log = logging.getLogger(__name__)

KnowsConnected = Callable[[ID, Address], bool]
BlockHash = Callable[[bytes], bytes]  # Application.block_hash: pure, raises on bytes that are not a block


class DirectConsensusNetwork(Network):
    """consensus.interfaces.Network over direct streams. Start `run` in a nursery (after `attach`)."""

    def __init__(self, host: P2PHost, policy: TopicPolicy, *, knows_connected: KnowsConnected | None = None,
                 block_hash: BlockHash | None = None,
                 capacity: int = 4096, peer_queue: int = 1024, batch_bytes: int = 256 * 1024,
                 max_invalid: int = 32, seen_window: int = 16384, write_timeout: float = 10.0,
                 verify_wait: float = 5.0) -> None:
        self.host = host
        self.chain_id = host.config.chain_id
        self.policy = policy
        self._knows_connected = knows_connected
        self._block_hash = block_hash
        self._guard = host.guard
        self._send, self._recv = trio.open_memory_channel[bytes](capacity)
        self._peer_queue = peer_queue
        self._batch_bytes = batch_bytes
        self._max_invalid = max_invalid
        self._seen_window = seen_window
        self._write_timeout = write_timeout
        self._verify_wait = verify_wait
        self._nursery: trio.Nursery | None = None
        self._queues: dict[ID, trio.MemorySendChannel[bytes]] = {}
        self._scopes: dict[ID, trio.CancelScope] = {}
        self._seen: dict[bytes, None] = {}
        self._invalid: Counter[ID] = Counter()
        self.counters: Counter[str] = Counter()

    def attach(self) -> None:
        self.host.libp2p.set_stream_handler(CONSENSUS_PROTOCOL, self._guard.wrap(CONSENSUS_PROTOCOL, self._on_stream))

    # ---- consensus.interfaces.Network ----

    async def broadcast(self, data: bytes) -> None:
        if len(data) > self.policy.max_bytes:
            self.counters["unsendable"] += 1
            log.error("consensus message of %d bytes not sent: limit %d", len(data), self.policy.max_bytes)
            return
        self._remember(data)
        self.counters["sent"] += 1
        self._sync_peers()  # a peer verified a moment ago gets this message too
        for peer_id in list(self._queues):
            self._enqueue(peer_id, data)
        await trio.lowlevel.checkpoint()

    @property
    def inbound(self) -> trio.MemoryReceiveChannel[bytes]:
        return self._recv

    # ---- peers and writers ----

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                while True:
                    self._sync_peers()
                    await self.host.wait_change()
            finally:
                self._nursery = None

    def _sync_peers(self) -> None:
        """One queue and writer per verified peer: start the new ones, stop the ones that left."""
        if self._nursery is None:
            return
        current = {p.peer_id for p in self.host.peers()}
        for peer_id in current - self._queues.keys():
            send, recv = trio.open_memory_channel[bytes](self._peer_queue)
            self._queues[peer_id] = send
            self._scopes[peer_id] = trio.CancelScope()
            self._nursery.start_soon(self._writer, peer_id, recv, self._scopes[peer_id])
        for peer_id in self._queues.keys() - current:
            del self._queues[peer_id]
            self._scopes.pop(peer_id).cancel()
            self._invalid.pop(peer_id, None)

    def _enqueue(self, peer_id: ID, data: bytes) -> None:
        queue = self._queues.get(peer_id)
        if queue is None:
            return
        try:
            queue.send_nowait(data)
        except trio.WouldBlock:
            self.counters["peer_queue_full"] += 1

    async def _writer(self, peer_id: ID, queue: trio.MemoryReceiveChannel[bytes], scope: trio.CancelScope) -> None:
        stream: INetStream | None = None
        with scope:
            try:
                async for first in queue:
                    frames = [first]
                    size = len(first)
                    while size < self._batch_bytes:
                        try:
                            more = queue.receive_nowait()
                        except trio.WouldBlock:
                            break
                        frames.append(more)
                        size += len(more)
                    payload = b"".join(len(f).to_bytes(wire.LENGTH_BYTES, "big") + f for f in frames)
                    for attempt in (1, 2):  # a stream on a connection that died is replaced once
                        try:
                            with trio.fail_after(self._write_timeout):
                                if stream is None:
                                    stream = await self.host.libp2p.new_stream(peer_id, [CONSENSUS_PROTOCOL])
                                await stream.write(payload)
                            self.counters["frames_out"] += len(frames)
                            self.counters["writes"] += 1
                            break
                        except (trio.TooSlowError, Exception) as exc:  # reset, vanished or stalled peer
                            self.counters["write_failed"] += 1
                            log.debug("consensus stream to %s failed (attempt %d): %s", peer_id, attempt, exc)
                            if stream is not None:
                                await wire.reset_quietly(stream, "consensus")
                                stream = None
                    else:
                        self.counters["dropped_out"] += len(frames)
            finally:
                if stream is not None:
                    with trio.CancelScope(shield=True):
                        await wire.close_quietly(stream, "consensus")

    # ---- inbound ----

    async def _on_stream(self, stream: INetStream) -> None:
        peer_id = stream.muxed_conn.peer_id
        # The handshake finishes on the two ends at slightly different times: a peer that has verified us
        # may open its stream before we have verified it. Its frames wait for our side of the handshake
        # (they used to be reset, and the first votes after a connection were lost).
        with trio.move_on_after(self._verify_wait):
            await self.host.wait_peer(peer_id)
        if self.host.peer(peer_id) is None:
            self.counters["unverified_stream"] += 1
            await wire.reset_quietly(stream, "consensus")
            return
        buf = bytearray()
        invalid_before = self._invalid[peer_id]  # counted per stream; the guard's points span streams
        try:
            while True:
                chunk = await stream.read(65536)
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= wire.LENGTH_BYTES:
                    length = int.from_bytes(buf[:wire.LENGTH_BYTES], "big")
                    if length > self.policy.max_bytes:
                        raise FrameError(f"consensus frame of {length} bytes exceeds {self.policy.max_bytes}")
                    end = wire.LENGTH_BYTES + length
                    if len(buf) < end:
                        break
                    data = bytes(buf[wire.LENGTH_BYTES:end])
                    del buf[:end]
                    if self._guard.banned(peer_id):
                        raise WireError("the peer is banned")
                    limits = self._guard.limits
                    if not (self._guard.allow(peer_id, "consensus frames", limits.consensus_frames)
                            and self._guard.allow(peer_id, "consensus bytes", limits.consensus_bytes, len(data))):
                        self.counters["over_rate"] += 1  # dropped unread; the guard counted it against the peer
                        continue
                    self._on_frame(peer_id, data)
                    if self._invalid[peer_id] - invalid_before > self._max_invalid:
                        raise WireError(f"{self._invalid[peer_id] - invalid_before} invalid consensus messages")
        except WireError as exc:
            self.counters["streams_reset"] += 1
            log.warning("resetting consensus stream from %s: %s", peer_id, exc)
            self._guard.penalize(peer_id, self._guard.limits.invalid_points, f"consensus stream reset: {exc}")
            await wire.reset_quietly(stream, "consensus")
        except Exception as exc:  # the peer reset or vanished
            log.debug("consensus stream from %s ended: %s", peer_id, exc)
        finally:
            await wire.close_quietly(stream, "consensus")

    def _remember(self, data: bytes) -> bool:
        """Record `data` as seen; False if it already was."""
        key = hashlib.blake2b(data, digest_size=16).digest()
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self._seen_window:
            del self._seen[next(iter(self._seen))]
        return True

    def _on_frame(self, source: ID, data: bytes) -> None:
        self.counters["frames_in"] += 1
        if not self._remember(data):
            self.counters["duplicates"] += 1
            return
        try:
            msg, signer = check_consensus_message(data, self.chain_id, self.policy)
        except OutsideWindow as exc:
            # a validator's signed message for a height we are not at: not misbehaviour. One far ahead
            # goes to the driver, not relayed (it means we fell behind: the driver syncs); an old one from
            # a peer that is behind is dropped
            self.counters["outside_window"] += 1
            if exc.ahead:
                # forgotten again: once we catch up to its height, a re-send of it must count
                self._seen.pop(hashlib.blake2b(data, digest_size=16).digest(), None)
                self._deliver(data)
            return
        except UnknownSigner:
            # signed by a key that holds no stake at our height: nothing to deliver or relay. Not blamed on
            # the peer: after a validator-set change a relay may know validators we do not yet, and a
            # re-send once we know them too must count (forgotten, as a rejected frame is)
            self._seen.pop(hashlib.blake2b(data, digest_size=16).digest(), None)
            self.counters["unknown_signer"] += 1
            return
        except WireError as exc:
            self._seen.pop(hashlib.blake2b(data, digest_size=16).digest(), None)  # a valid copy may follow
            self._blame(source, str(exc))
            return
        if isinstance(msg, ProposalMessage) and not self._block_matches(msg):
            # a validator's signature over another block: a relay swapped the bytes (or the proposer
            # signed garbage). Neither delivered nor relayed; a correct copy may still come
            self._seen.pop(hashlib.blake2b(data, digest_size=16).digest(), None)
            self.counters["block_mismatch"] += 1
            self._blame(source, "proposal block does not hash to the signed block hash")
            return
        self._deliver(data)
        if signer is not None:
            self._relay(source, signer, data)
        else:
            # a sync request or response: the same bytes are sent again on purpose when the first copy
            # was lost or came too early (a node catching up asks for the same height every second), so
            # they are never remembered as seen; the driver rate-limits what they cost
            self._seen.pop(hashlib.blake2b(data, digest_size=16).digest(), None)

    def _blame(self, source: ID, reason: str) -> None:
        self._invalid[source] += 1
        self.counters["rejected"] += 1
        log.debug("rejected consensus message from %s: %s", source, reason)
        self._guard.penalize(source, self._guard.limits.invalid_points, f"invalid consensus message: {reason}")

    def _block_matches(self, proposal: ProposalMessage) -> bool:
        """The proposal's block bytes hash to the block hash its proposer signed (True when no block_hash
        function was given)."""
        if self._block_hash is None:
            return True
        try:
            return self._block_hash(proposal.block) == proposal.vote.block_hash
        except Exception:  # noqa: BLE001 - an Application raises its own types for bytes that are not a block
            return False

    def _deliver(self, data: bytes) -> None:
        try:
            self._send.send_nowait(data)
            self.counters["received"] += 1
        except trio.WouldBlock:
            self.counters["overflow"] += 1

    def _relay(self, source: ID, signer: Address, data: bytes) -> None:
        for peer_id in list(self._queues):
            status = self.host.peer(peer_id)
            if peer_id == source or status is None or status.address == signer:
                continue
            if self._knows_connected is not None and self._knows_connected(peer_id, signer):
                continue
            self.counters["relayed"] += 1
            self._enqueue(peer_id, data)

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)
