"""Gossip topics and their validators: pure checks of signature, size, strict decoding, sender, window.

Topics are namespaced by chain id: /swarmnode/<chain id>/{tx,consensus,updates}. A validator decodes a
message into a `GossipMessage` or raises WireError naming what is wrong; `Gossip` turns that into a
rejection (not relayed, sender's score down).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from libp2p.peer.id import ID

from consensus.errors import ConsensusError
from consensus.messages import ProposalMessage, SyncResponse, VoteMessage
from consensus.messages import decode as decode_consensus
from consensus.votes import Address, vote_signer
from swarmnode.p2p import wire
from swarmnode.p2p.errors import IdentityError, OutsideWindow, UnknownSigner, WireError
from swarmnode.p2p.identity import address_of_peer

TX, CONSENSUS, UPDATES = "tx", "consensus", "updates"
TOPIC_NAMES = (TX, CONSENSUS, UPDATES)
MAX_TX_BYTES = 128 * 1024
MAX_ANNOUNCE_BYTES = 1024

KnownSender = Callable[[Address], bool]
Window = Callable[[], tuple[int, int]]  # inclusive (low, high) of acceptable heights / rounds


def topic_id(chain_id: int, name: str) -> str:
    return f"/swarmnode/{chain_id}/{name}"


@dataclass(frozen=True)
class Announcement:
    """`provider` holds blob `content_id` (`size` bytes), e.g. its update for learning round `round`."""

    round: int
    content_id: bytes
    size: int


@dataclass(frozen=True)
class GossipMessage:
    topic: str  # short name: tx / consensus / updates
    body: Any  # bytes for tx and consensus, Announcement for updates
    sender: ID  # the original publisher (pubsub-signed)
    address: Address  # the sender's chain address


@dataclass(frozen=True)
class TopicPolicy:
    """Per-topic acceptance rules; the callables are the pluggable parts (None = accept all)."""

    max_bytes: int
    known_sender: KnownSender | None = None  # consensus: the vote signer; others: the publisher
    window: Window | None = None  # consensus: vote height; updates: announcement round


def default_policies() -> dict[str, TopicPolicy]:
    return {
        TX: TopicPolicy(max_bytes=MAX_TX_BYTES + 64),
        CONSENSUS: TopicPolicy(max_bytes=wire.MAX_GOSSIP_BYTES),
        UPDATES: TopicPolicy(max_bytes=MAX_ANNOUNCE_BYTES),
    }


def encode_body(name: str, body: Any) -> Any:
    if name == UPDATES:
        if not isinstance(body, Announcement):
            raise WireError(f"updates topic carries Announcement, got {type(body).__name__}")
        return [body.round, body.content_id, body.size]
    return body


def check_message(name: str, data: bytes, from_id: bytes, chain_id: int, policy: TopicPolicy,
                  verify: bool = True) -> GossipMessage:
    """Validate one gossip message of topic `name`; raises WireError (or IdentityError) on any fault.

    verify=False only decodes (for messages the topic validator has already accepted)."""
    if len(data) > policy.max_bytes:
        raise WireError(f"{name} message of {len(data)} bytes exceeds {policy.max_bytes}")
    kind = {TX: wire.TX, CONSENSUS: wire.CONSENSUS, UPDATES: wire.ANNOUNCE}[name]
    env = wire.decode(data, policy.max_bytes, chain_id=chain_id, kinds=frozenset({kind}))
    sender = ID(from_id)
    address = address_of_peer(sender)
    if name == TX:
        body: Any = wire.as_bytes(env.body, "transaction", max_len=MAX_TX_BYTES)
        if verify:
            _check_known(policy, address, "transaction sender")
    elif name == CONSENSUS:
        body = wire.as_bytes(env.body, "consensus message", max_len=policy.max_bytes)
        if verify:
            check_consensus(body, chain_id, policy)
    else:
        body = _decode_announcement(env.body)
        if verify:
            _check_known(policy, address, "announcer")
            _check_window(policy, body.round, "round")
    return GossipMessage(name, body, sender, address)


def _decode_announcement(body: Any) -> Announcement:
    fields = wire.as_list(body, 3, "announcement")
    return Announcement(
        round=wire.as_int(fields[0], "round"),
        content_id=wire.as_bytes(fields[1], "content id", length=32),
        size=wire.as_int(fields[2], "blob size", minimum=1),
    )


def check_consensus(data: bytes, chain_id: int, policy: TopicPolicy) -> Address | None:
    """Strict decoding, chain id, vote signature, known signer and height window; returns the signer of
    a proposal or vote (None for sync messages). Raises WireError."""
    return check_consensus_message(data, chain_id, policy)[1]


def check_consensus_message(data: bytes, chain_id: int, policy: TopicPolicy) -> tuple[Any, Address | None]:
    """check_consensus, also returning the decoded message. The signer is checked before anything else
    about a proposal: its block is only looked at by the caller, once the signer is known."""
    if len(data) > policy.max_bytes:
        raise WireError(f"consensus message of {len(data)} bytes exceeds {policy.max_bytes}")
    try:
        msg = decode_consensus(data, policy.max_bytes)
    except ConsensusError as exc:
        raise WireError(f"consensus message: {exc}") from exc
    if isinstance(msg, SyncResponse):
        if msg.certificate.chain_id != chain_id:
            raise WireError(f"certificate for chain {msg.certificate.chain_id}, expected {chain_id}")
        return msg, None  # the driver verifies the certificate itself
    if not isinstance(msg, ProposalMessage | VoteMessage):
        return msg, None  # a sync request carries only a height
    vote = msg.vote
    if vote.chain_id != chain_id:
        raise WireError(f"vote for chain {vote.chain_id}, expected {chain_id}")
    try:
        signer = vote_signer(vote)
    except ConsensusError as exc:
        raise WireError(f"vote signature: {exc}") from exc
    _check_known(policy, signer, "vote signer")
    _check_window(policy, vote.height, "height")
    return msg, signer


def _check_known(policy: TopicPolicy, address: Address, what: str) -> None:
    if policy.known_sender is not None and not policy.known_sender(address):
        raise UnknownSigner(f"{what} 0x{address.hex()} is not known")


def _check_window(policy: TopicPolicy, value: int, what: str) -> None:
    if policy.window is None:
        return
    low, high = policy.window()
    if not low <= value <= high:
        raise OutsideWindow(what, value, low, high)


def safe_check(name: str, data: bytes, from_id: bytes, chain_id: int,
               policy: TopicPolicy, verify: bool = True) -> tuple[GossipMessage | None, str]:
    """check_message that never raises: (message, "") or (None, reason)."""
    try:
        return check_message(name, data, from_id, chain_id, policy, verify), ""
    except (WireError, IdentityError) as exc:
        return None, str(exc)
