"""The consensus wire codec: versioned msgpack messages with strict decoding and size limits.

    [version, kind, ...fields]

kinds: 1 proposal [vote, valid_round + 1, block], 2 vote [vote], 3 sync request [height],
4 sync response [block, certificate]. A vote is [chain_id, height, round, step, block_hash, signature].
valid_round travels as valid_round + 1 so that the wire has no negative ints (-1 = none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consensus.certificate import CommitCertificate
from consensus.votes import STEP_PRECOMMIT, STEP_PREVOTE, STEP_PROPOSAL, SignedVote
from consensus.wire import MalformedMessage, as_bytes, as_int, as_list, pack, unpack

WIRE_VERSION = 1
MAX_MESSAGE_BYTES = 900 * 1024  # below gossipsub's silent 1 MiB drop
MAX_MESSAGE_OBJECTS = 32  # msgpack objects in a message: a proposal has 12 (the block travels as one binary)
KIND_PROPOSAL, KIND_VOTE, KIND_SYNC_REQUEST, KIND_SYNC_RESPONSE = 1, 2, 3, 4


@dataclass(frozen=True)
class ProposalMessage:
    vote: SignedVote  # step 0, signed by the proposer over the block hash
    valid_round: int
    block: bytes


@dataclass(frozen=True)
class VoteMessage:
    vote: SignedVote  # a prevote or precommit


@dataclass(frozen=True)
class SyncRequest:
    """I am at `height`; whoever has committed it, send it with its certificate."""

    height: int


@dataclass(frozen=True)
class SyncResponse:
    block: bytes
    certificate: CommitCertificate


Message = ProposalMessage | VoteMessage | SyncRequest | SyncResponse


def _vote_fields(v: SignedVote) -> list[Any]:
    return [v.chain_id, v.height, v.round, v.step, v.block_hash, v.signature]


def _decode_vote(value: Any, steps: tuple[int, ...]) -> SignedVote:
    f = as_list(value, 6, "vote")
    step = as_int(f[3], "vote step")
    if step not in steps:
        raise MalformedMessage(f"vote step {step} not allowed here (expected one of {steps})")
    return SignedVote(
        chain_id=as_int(f[0], "chain id"),
        height=as_int(f[1], "height", minimum=1),
        round=as_int(f[2], "round"),
        step=step,
        block_hash=as_bytes(f[4], "block hash", length=32),
        signature=as_bytes(f[5], "signature", length=65),
    )


def encode(msg: Message, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    if isinstance(msg, ProposalMessage):
        body = [KIND_PROPOSAL, _vote_fields(msg.vote), msg.valid_round + 1, msg.block]
    elif isinstance(msg, VoteMessage):
        body = [KIND_VOTE, _vote_fields(msg.vote)]
    elif isinstance(msg, SyncRequest):
        body = [KIND_SYNC_REQUEST, msg.height]
    elif isinstance(msg, SyncResponse):
        body = [KIND_SYNC_RESPONSE, msg.block, msg.certificate.encode()]
    else:
        raise TypeError(f"not a consensus message: {type(msg).__name__}")
    data = pack([WIRE_VERSION, *body])
    if len(data) > max_bytes:
        raise MalformedMessage(f"{type(msg).__name__} of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    return data


def decode(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Strictly decode one message; raises MalformedMessage for anything unexpected."""
    fields = as_list(unpack(data, max_bytes, max_objects=MAX_MESSAGE_OBJECTS), None, "message")
    if len(fields) < 2:
        raise MalformedMessage(f"message has {len(fields)} fields")
    version, kind = as_int(fields[0], "version"), as_int(fields[1], "kind")
    if version != WIRE_VERSION:
        raise MalformedMessage(f"unsupported wire version {version}")
    body = fields[2:]
    if kind == KIND_PROPOSAL:
        as_list(body, 3, "proposal")
        return ProposalMessage(
            _decode_vote(body[0], (STEP_PROPOSAL,)), as_int(body[1], "valid round") - 1,
            as_bytes(body[2], "block", max_len=max_bytes),
        )
    if kind == KIND_VOTE:
        as_list(body, 1, "vote message")
        return VoteMessage(_decode_vote(body[0], (STEP_PREVOTE, STEP_PRECOMMIT)))
    if kind == KIND_SYNC_REQUEST:
        as_list(body, 1, "sync request")
        return SyncRequest(as_int(body[0], "height", minimum=1))
    if kind == KIND_SYNC_RESPONSE:
        as_list(body, 2, "sync response")
        cert = CommitCertificate.decode(as_bytes(body[1], "certificate"))
        return SyncResponse(as_bytes(body[0], "block", max_len=max_bytes), cert)
    raise MalformedMessage(f"unknown message kind {kind}")
