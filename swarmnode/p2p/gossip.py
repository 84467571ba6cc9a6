"""Gossip service: subscribes to the chain's topics, validates every message, drains into bounded channels.

The topic validator, for every message that passed py-libp2p's signature check (so its publisher is
authentic):
- a token bucket per (forwarding peer, publisher, topic): past it the message is dropped and not relayed.
  A peer flooding its own messages is penalized; a relay is not (keying on the relay too means that
  replaying an honest publisher's old messages drains only the replaying peer's bucket);
- the topic policy (topics.check_message): a malformed, oversize or forged message costs its forwarder
  invalid_points in the PeerGuard and 10 points of gossipsub score; a well-formed one that is merely
  outside our window or from a sender we do not know (not yet a validator or registered participant)
  is dropped without blame ("ignored": a relay whose chain view differs from ours may forward it).
Policies are looked up per message, so `set_policy` takes effect at once (the node installs the updates
policy once it knows the participant registry).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub

from swarmnode.p2p import wire
from swarmnode.p2p.errors import IdentityError, OutsideWindow, P2PError, UnknownSigner, WireError
from swarmnode.p2p.host import PeerGuard
from swarmnode.p2p.topics import (
    TOPIC_NAMES,
    GossipMessage,
    TopicPolicy,
    check_message,
    encode_body,
    safe_check,
    topic_id,
)

log = logging.getLogger(__name__)

Observer = Callable[[GossipMessage], None]


class Gossip:
    """The chain's gossip topics over one Pubsub; each topic's messages land in a bounded channel.

    Own publishes are not delivered back. A full channel drops the message (counted): subscriptions are
    drained continuously so py-libp2p's own 32-slot channel never overflows silently.
    """

    def __init__(self, pubsub: Pubsub, chain_id: int, policies: dict[str, TopicPolicy], *,
                 capacity: int = 256, observer: Observer | None = None, guard: PeerGuard | None = None) -> None:
        self._pubsub = pubsub
        self.chain_id = chain_id
        self.policies = dict(policies)
        self._observer = observer
        self._guard = guard
        self._scorer = getattr(pubsub.router, "scorer", None)
        self._channels = {name: trio.open_memory_channel[GossipMessage](capacity) for name in TOPIC_NAMES}
        self.counters: Counter[str] = Counter()

    def topic(self, name: str) -> str:
        return topic_id(self.chain_id, name)

    def set_policy(self, name: str, policy: TopicPolicy) -> None:
        """Replace topic `name`'s acceptance rules (effective for the next message)."""
        if name not in self.policies:
            raise P2PError(f"unknown topic {name!r}")
        self.policies[name] = policy

    def channel(self, name: str) -> trio.MemoryReceiveChannel[GossipMessage]:
        """Validated messages of topic `name` from other peers."""
        return self._channels[name][1]

    async def publish(self, name: str, body: Any) -> None:
        """Publish on topic `name`; raises WireError if the message breaks our own limits."""
        if name not in self.policies:
            raise P2PError(f"unknown topic {name!r}")
        data = wire.encode(wire.Envelope(self.chain_id, _kind(name), encode_body(name, body)),
                           self.policies[name].max_bytes)
        self.counters[f"published.{name}"] += 1
        await self._pubsub.publish(self.topic(name), data)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for name in TOPIC_NAMES:
                self._pubsub.set_topic_validator(self.topic(name), self._validator(name), False)
                subscription = await self._pubsub.subscribe(self.topic(name))
                nursery.start_soon(self._drain, name, subscription)
            task_status.started()

    def _validator(self, name: str) -> Callable[[ID, Any], bool]:
        topic = self.topic(name)

        def validate(forwarder: ID, msg: Any) -> bool:
            if forwarder == self._pubsub.my_id:  # our own publish: checked for our own sake only
                return safe_check(name, msg.data, msg.from_id, self.chain_id, self.policies[name])[0] is not None
            publisher = ID(msg.from_id)
            guard = self._guard
            if guard is not None and not guard.allow(
                    (forwarder, publisher), f"publisher {name}", guard.limits.gossip_originated,
                    blame=forwarder if forwarder == publisher else None):
                return self._reject(name, topic, forwarder, publisher, "past its publisher's rate", blame=False)
            try:
                check_message(name, msg.data, msg.from_id, self.chain_id, self.policies[name])
            except (OutsideWindow, UnknownSigner) as exc:  # well-formed and signed: ignored, not blamed
                self.counters[f"ignored.{name}"] += 1
                return self._reject(name, topic, forwarder, publisher, str(exc), blame=False)
            except (WireError, IdentityError) as exc:
                return self._reject(name, topic, forwarder, publisher, str(exc), blame=True)
            return True

        return validate

    def _reject(self, name: str, topic: str, forwarder: ID, publisher: ID, reason: str, *, blame: bool) -> bool:
        """Count a rejection; without `blame`, gossipsub is told not to count it against the forwarder."""
        self.counters[f"rejected.{name}"] += 1
        log.debug("rejected %s message of %s via %s: %s", name, publisher, forwarder, reason)
        if blame:
            if self._guard is not None:
                self._guard.penalize(forwarder, self._guard.limits.invalid_points, f"invalid {name} message: {reason}")
        elif self._scorer is not None and hasattr(self._scorer, "excuse"):
            self._scorer.excuse(forwarder, topic)
        return False

    async def _drain(self, name: str, subscription: Any) -> None:
        send = self._channels[name][0]
        me = self._pubsub.my_id.to_bytes()
        async for raw in subscription:
            if raw.from_id == me:
                continue
            msg, reason = safe_check(name, raw.data, raw.from_id, self.chain_id, self.policies[name], verify=False)
            if msg is None:  # the topic validator accepted it: cannot happen unless a validator is missing
                self.counters[f"late_rejected.{name}"] += 1
                log.warning("undecodable %s message reached the subscription: %s", name, reason)
                continue
            if self._observer is not None:
                self._observer(msg)
            try:
                send.send_nowait(msg)
                self.counters[f"delivered.{name}"] += 1
            except trio.WouldBlock:
                self.counters[f"overflow.{name}"] += 1

    def mesh_peers(self, name: str) -> set[ID]:
        """Peers in our gossipsub mesh for topic `name`."""
        return set(getattr(self._pubsub.router, "mesh", {}).get(self.topic(name), ()))

    def mesh_size(self, name: str) -> int:
        return len(self.mesh_peers(name))

    async def wait_mesh(self, name: str, peers: list[ID]) -> None:
        """Return once every one of `peers` is in our gossipsub mesh for topic `name` (event-driven:
        GossipSub.wait_for_mesh; bound it with trio.fail_after)."""
        for peer_id in peers:
            while True:
                try:
                    await cast(GossipSub, self._pubsub.router).wait_for_mesh(peer_id, self.topic(name), timeout=3600)
                    break
                except trio.TooSlowError:
                    continue

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)


def _kind(name: str) -> int:
    return {"tx": wire.TX, "consensus": wire.CONSENSUS, "updates": wire.ANNOUNCE}[name]
