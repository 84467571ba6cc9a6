"""Every decoder of bytes from a peer, as one table of fuzz targets with seed encodings and mutators.

Shared by the property tests (tests/unit/test_fuzz_decoders.py, hypothesis, bounded in time) and the
long-run fuzzer (scripts/fuzz.py). A target's `run(data)` feeds bytes down one real receive path and
raises; the contract under test is that it only ever raises the module's typed errors (`Target.typed`).
Any other exception is a crash, and so is `Mismatch`: a differential check (two readings of the same
bytes that must agree) failed.

Inputs come from three sources: random bytes (optionally behind a valid prefix), structured mutations of
valid seed encodings (bit flips, truncation, splicing, deep nesting, huge integers, huge declared lengths
and shapes), and, for formats that have them, generators of structurally plausible encodings.
"""

from __future__ import annotations

import functools
import logging
import random
import struct
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import msgpack
import rlp
import torch
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from consensus import messages as cmsg
from consensus import rlp_guard
from consensus import wire as cwire
from consensus.certificate import CommitCertificate, verify_certificate
from consensus.chain import ExecutionChain, InvalidBlock, InvalidTransaction, decode_block, decode_transaction
from consensus.chain_app import block_hash_of
from consensus.devtools import address_of, dev_genesis, dev_key, sign_tx
from consensus.engine.validators import ValidatorSet
from consensus.envelope import Envelope, EnvelopeError
from consensus.errors import ConsensusError
from consensus.evidence import make_evidence, slash_calldata, verify_evidence
from consensus.txpool import TxPool, TxRejected
from consensus.votes import NIL_HASH, STEP_PRECOMMIT, STEP_PREVOTE, STEP_PROPOSAL, sign_vote, vote_signer
from consensus.wire import MalformedMessage
from swarmnode.aggregation.codec import (
    GlobalModel,
    QTensor,
    decode_model,
    decode_update,
    encode_model,
    encode_update,
    quantize_delta,
)
from swarmnode.aggregation.compress import Compression, compress_delta, decode_compressed
from swarmnode.aggregation.errors import AggregationError
from swarmnode.node import txs as node_txs
from swarmnode.p2p import wire
from swarmnode.p2p.errors import IdentityError, P2PError, WireError
from swarmnode.p2p.handshake import Hello, decode_hello, encode_hello
from swarmnode.p2p.identity import key_pair_of, peer_id_of
from swarmnode.p2p.testing import TEST_CHAIN_ID, TEST_GENESIS, make_config, node_secret
from swarmnode.privacy import secagg as secagg_lib

CHAIN_ID = 7331  # dev_genesis
MAX_INPUT = 256 * 1024  # mutations keep inputs below this (deep-nesting tokens excepted)


class Mismatch(AssertionError):
    """Two readings of the same bytes that must agree do not: always a bug."""


@dataclass(frozen=True)
class Target:
    """One decoder: `run` raises only `typed` errors on any input, or the decoder is not total."""

    name: str
    run: Callable[[bytes], Any]
    typed: tuple[type[BaseException], ...]
    fmt: str  # which structured mutators apply: msgpack, rlp, tx, codec-update, codec-model, protobuf
    seeds: Callable[[], list[bytes]]
    roundtrip: Callable[[bytes], bytes] | None = None  # valid seed -> decode -> encode
    about: str = ""


def classify(target: Target, data: bytes) -> tuple[str, BaseException | None]:
    """("ok" | "typed" | "crash", exception) for one input."""
    try:
        target.run(data)
    except target.typed as exc:
        return "typed", exc
    except Exception as exc:  # noqa: BLE001 - anything else is exactly what the fuzzer looks for
        return "crash", exc
    return "ok", None


# ---------------------------------------------------------------- seed material


@dataclass(frozen=True)
class ChainMaterial:
    vm_class: Any
    gas_limit: int
    blocks: tuple[bytes, ...]
    raw_txs: tuple[bytes, ...]


@cache
def chain_material() -> ChainMaterial:
    """Real Prague blocks and transactions (legacy, access list, dynamic fee), built once."""
    genesis = dev_genesis(1, 2)
    key = dev_key(0)
    to = b"\x11" * 20
    raws = [
        sign_tx(key, genesis.chain_id, 0, to=to, value=1),
        sign_tx(key, genesis.chain_id, 1, to=to, value=2, legacy=True),
        bytes(Account.sign_transaction({
            "chainId": genesis.chain_id, "nonce": 2, "gas": 60_000, "gasPrice": 2 * 10**9, "value": 0,
            "to": to_checksum_address(to), "data": b"\x01\x02", "type": 1,
            "accessList": [{"address": to_checksum_address(b"\x22" * 20),
                            "storageKeys": ["0x" + "00" * 31 + "01", "0x" + "ff" * 32]}],
        }, key).raw_transaction),
        sign_tx(key, genesis.chain_id, 3, to=node_txs.SWARM_ROUNDS_ADDRESS, data=node_txs.COMMIT_SELECTOR + bytes(160),
                gas=100_000),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        chain = ExecutionChain.open(tmp, genesis, sync_writes=False)
        try:
            vm_class = chain._vm_class  # noqa: SLF001 - the chain's own (Prague) VM class
            empty = chain.build_block([], coinbase=b"\x22" * 20, now=genesis.genesis_time + 1).encode()
            txs = [chain.decode_transaction(r) for r in raws[:3]]
            full = chain.build_block(txs, coinbase=b"\x22" * 20, now=genesis.genesis_time + 1).encode()
        finally:
            chain.close()
    return ChainMaterial(vm_class, genesis.block_gas_limit, (empty, full), tuple(raws))


@cache
def consensus_material() -> dict[str, Any]:
    """Signed votes, certificates and messages over the real blocks."""
    blocks = chain_material().blocks
    k0, k1 = dev_key(0), dev_key(1)
    block_hash = block_hash_of(blocks[1])
    proposal = sign_vote(k0, CHAIN_ID, 1, 0, STEP_PROPOSAL, block_hash)
    prevote = sign_vote(k1, CHAIN_ID, 1, 0, STEP_PREVOTE, block_hash)
    precommits = [sign_vote(k, CHAIN_ID, 1, 0, STEP_PRECOMMIT, block_hash) for k in (k0, k1)]
    cert = CommitCertificate.from_precommits(precommits)
    other = sign_vote(k0, CHAIN_ID, 1, 0, STEP_PRECOMMIT, keccak(b"another block"))
    nil = sign_vote(k1, CHAIN_ID, 1, 2, STEP_PRECOMMIT, NIL_HASH)
    msgs = [
        cmsg.ProposalMessage(proposal, -1, blocks[1]),
        cmsg.ProposalMessage(sign_vote(k0, CHAIN_ID, 1, 3, STEP_PROPOSAL, block_hash_of(blocks[0])), 1, blocks[0]),
        cmsg.VoteMessage(prevote), cmsg.VoteMessage(precommits[0]), cmsg.VoteMessage(nil),
        cmsg.SyncRequest(5), cmsg.SyncResponse(blocks[1], cert),
    ]
    return {
        "messages": [cmsg.encode(m) for m in msgs],
        "certificates": [cert.encode(), CommitCertificate.from_precommits(precommits[:1]).encode()],
        "validators": ValidatorSet.from_powers({address_of(k0): 1, address_of(k1): 1}),
        "evidence": [cwire.pack([cmsg.encode(cmsg.VoteMessage(precommits[0])), cmsg.encode(cmsg.VoteMessage(other))]),
                     cwire.pack([cmsg.encode(cmsg.VoteMessage(prevote)), cmsg.encode(cmsg.VoteMessage(nil))])],
        "block_hash": block_hash,
        "cert": cert,
    }


def _envelope(kind: int, body: Any, max_bytes: int = wire.MAX_GOSSIP_BYTES) -> bytes:
    return wire.encode(wire.Envelope(TEST_CHAIN_ID, kind, body), max_bytes)


def _hello(i: int, addrs: tuple[str, ...]) -> bytes:
    return wire.encode(encode_hello(Hello(TEST_CHAIN_ID, TEST_GENESIS, i, addrs)), wire.MAX_CONTROL_FRAME)


@cache
def p2p_seeds() -> list[bytes]:
    c, blocks, raws = consensus_material(), chain_material().blocks, chain_material().raw_txs
    peers = [[peer_id_of(node_secret(i)).to_bytes(), [f"/ip4/10.0.0.{i}/tcp/4001"]] for i in range(3)]
    return [
        _envelope(wire.TX, raws[0]),
        _envelope(wire.CONSENSUS, c["messages"][2]),
        _envelope(wire.ANNOUNCE, [3, keccak(b"update"), 12_345]),
        _hello(7, ("/ip4/127.0.0.1/tcp/4001",)),
        _envelope(wire.BLOB_REQUEST, [keccak(b"blob")]),
        _envelope(wire.SYNC_REQUEST, [1, 32]),
        _envelope(wire.SYNC_HEADER, [10, 2]),
        _envelope(wire.SYNC_BLOCK, [1, blocks[1], c["certificates"][0]]),
        _envelope(wire.PEERS, peers),
        _envelope(wire.PEERS_REQUEST, []),
    ]


@cache
def codec_seeds() -> dict[str, list[bytes]]:
    g = torch.Generator().manual_seed(7)
    delta = {"a.weight": torch.randn(3, 5, generator=g) * 0.02, "b.bias": torch.randn(7, generator=g) * 1e-3,
             "c.scalar": torch.tensor(0.5), "d.empty": torch.zeros(0, 4)}
    params = {"w": torch.randn(4, 2, generator=g), "b": torch.ones(3)}
    specs = [Compression("quantize", 8), Compression("quantize", 3), Compression("topk", 4, 0.3)]
    return {
        "update": [encode_update(quantize_delta(delta)), encode_update(quantize_delta({"x": torch.ones(1)}))],
        "compressed": [compress_delta(delta, spec, 11).blob for spec in specs],
        "model": [encode_model(GlobalModel(params)),
                  encode_model(GlobalModel(params, {"w": QTensor(torch.tensor([1, -2, 3, 2**40]), 32)}))],
    }


@cache
def record_material() -> dict[str, Any]:
    from libp2p.peer.envelope import seal_record
    from libp2p.peer.peer_record import PeerRecord
    from multiaddr import Multiaddr

    pair = key_pair_of(node_secret(1))
    peer_id = peer_id_of(node_secret(1))
    seeds = [seal_record(PeerRecord(peer_id, [Multiaddr(f"/ip4/127.0.0.1/tcp/{4000 + seq}")], seq),
                         pair.private_key).marshal_envelope() for seq in (1, 2)]
    return {"peer_id": peer_id, "seeds": seeds}


# ---------------------------------------------------------------- the decoders' receive paths


def _p2p_wire(data: bytes) -> None:
    wire.decode(data, wire.MAX_GOSSIP_BYTES)


def _handshake(data: bytes) -> None:
    decode_hello(data)


def _peers(data: bytes) -> None:
    from swarmnode.p2p.peers import decode_listing  # another owner's decoder: fuzzed, not edited here

    decode_listing(wire.decode(data, wire.MAX_CONTROL_FRAME, chain_id=TEST_CHAIN_ID, kinds=frozenset({wire.PEERS})))


@cache
def _gossip_policies() -> dict[str, Any]:
    from swarmnode.p2p.topics import default_policies

    return default_policies()


def _gossip(data: bytes) -> None:
    from swarmnode.p2p.topics import CONSENSUS, TX, UPDATES, check_message

    sender = peer_id_of(node_secret(2)).to_bytes()
    for name in (TX, CONSENSUS, UPDATES):
        try:
            check_message(name, data, sender, TEST_CHAIN_ID, _gossip_policies()[name])
        except (WireError, IdentityError):
            pass


class _FrameStream:
    """A stream that yields one length-prefixed frame, then end of stream."""

    def __init__(self, payload: bytes) -> None:
        self._data = memoryview(len(payload).to_bytes(wire.LENGTH_BYTES, "big") + payload)

    async def read(self, n: int | None = None) -> bytes:
        n = len(self._data) if n is None else n
        out, self._data = bytes(self._data[:n]), self._data[n:]
        return out

    async def write(self, data: bytes) -> None:
        raise AssertionError("the decoder must not write")


def _complete(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine that never really suspends (its stream answers at once) to its result."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the decoder suspended on a stream that never blocks")


@cache
def _sync() -> Any:
    from swarmnode.p2p.sync import ChainSync

    return ChainSync(None, None, make_config(0))  # type: ignore[arg-type]  # the decoder touches neither


def _sync_block(data: bytes) -> None:
    """A SYNC_BLOCK frame as ChainSync reads it, then the block's id as apply_certified takes it."""
    block, cert = _complete(_sync()._read_block(_FrameStream(data), 1))  # noqa: SLF001 - the sync decoder
    if cert.height != 1:
        return
    block_hash_of(block)


def _consensus_inbound(data: bytes) -> None:
    """What the driver does with a message off the wire: decode, authenticate, id the block."""
    msg = cmsg.decode(data)
    if isinstance(msg, cmsg.ProposalMessage | cmsg.VoteMessage):
        vote_signer(msg.vote)
    if isinstance(msg, cmsg.ProposalMessage | cmsg.SyncResponse):
        block_hash_of(msg.block)
    if isinstance(msg, cmsg.SyncResponse):
        verify_certificate(msg.certificate, consensus_material()["validators"], CHAIN_ID)


def _certificate(data: bytes) -> None:
    cert = CommitCertificate.decode(data)
    verify_certificate(cert, consensus_material()["validators"], CHAIN_ID)


def _evidence(data: bytes) -> None:
    """Two votes off the wire turned into slashing evidence: decode, recover, verify, calldata."""
    pair = cwire.as_list(cwire.unpack(data, 2 * cmsg.MAX_MESSAGE_BYTES), 2, "evidence")
    votes = [cmsg.decode(cwire.as_bytes(raw, "vote message")) for raw in pair]
    signed = [m.vote for m in votes if isinstance(m, cmsg.ProposalMessage | cmsg.VoteMessage)]
    if len(signed) != 2:
        return
    a, b = signed
    evidence = make_evidence(a, b, vote_signer(a))
    verify_evidence(evidence)
    slash_calldata(evidence)


def _envelope_decode(data: bytes) -> None:
    Envelope.decode(data)


def _block_hash(data: bytes) -> None:
    """block_hash_of against the old decode-and-re-encode reading, wherever the old one is safe."""
    got = block_hash_of(data)
    try:
        rlp_guard.scan(data, max_depth=64, max_items=1 << 20)
    except rlp_guard.MalformedRLP:
        return  # the header checked out but the body is junk or too deep: the old path cannot be asked
    fields = rlp.decode(data)
    if keccak(rlp.encode(fields[0])) != got:
        raise Mismatch("header slice hash differs from keccak(rlp.encode(decoded header))")


def _decode_block(data: bytes) -> None:
    m = chain_material()
    block = decode_block(data, m.vm_class, m.gas_limit)
    if rlp.encode(block, cache=False) != data:
        raise Mismatch("a decoded block does not re-encode to its bytes")
    if block_hash_of(data) != bytes(block.hash):
        raise Mismatch("block_hash_of differs from py-evm's hash of the decoded block")
    node_txs.commits_in(block.transactions)  # what the node does with a proposal before validating it


def _decode_tx(data: bytes) -> None:
    tx = decode_transaction(data, chain_material().vm_class)
    if tx.encode() != data:
        raise Mismatch("a decoded transaction does not re-encode to its bytes")
    node_txs.commits_in([tx])  # the gossip ingest path, outside its try block


class _State:
    def get_nonce(self, address: bytes) -> int:
        return 0

    def get_balance(self, address: bytes) -> int:
        return 10**30


def _txpool(data: bytes) -> None:
    vm_class = chain_material().vm_class
    pool = TxPool(CHAIN_ID, lambda raw: decode_transaction(raw, vm_class))
    pool.add_raw(data, _State(), 7)


def _pyrlp(data: bytes, keep: bool) -> tuple[str, Any]:
    try:
        return "ok", rlp_guard._original_decode_raw(data, True, keep)  # noqa: SLF001 - pyrlp's own decoder
    except rlp.DecodingError:
        return "error", None
    except RecursionError:  # the guard may stop early (trailing bytes) where pyrlp first walks it all
        return "too deep", None


def _linear(data: bytes, keep: bool) -> tuple[str, Any]:
    try:
        return "ok", rlp_guard.linear_decode_raw(data, True, keep)
    except rlp.DecodingError:
        return "error", None


def _rlp_scan(data: bytes) -> None:
    """The guard and the linear decoder against pyrlp itself: same verdicts, same values, within bounds."""
    try:
        rlp_guard.scan(data, max_depth=256, max_items=1 << 20)
        verdict: Exception | None = None
    except rlp_guard.RLPLimitExceeded:
        return  # pyrlp would recurse this deep: exactly what must not be asked
    except rlp_guard.MalformedRLP as exc:
        verdict = exc
    theirs, full = _pyrlp(data, True)
    if theirs == "too deep":
        if verdict is None:
            raise Mismatch("the guard accepts what pyrlp cannot walk within the recursion limit")
        raise verdict
    for keep in (True, False):
        ours, value = _linear(data, keep)
        if ours != theirs:
            raise Mismatch(f"linear_decode_raw says {ours}, pyrlp says {theirs}")
        if ours == "ok" and value != (full if keep else (full[0], full[1][:1])):
            raise Mismatch(f"linear_decode_raw (per-item encodings {keep}) differs from pyrlp's value")
    if (verdict is None) != (theirs == "ok"):
        raise Mismatch(f"the guard says {verdict}, pyrlp says {theirs}")
    if verdict is not None:
        raise verdict
    decoded = full[0]
    if isinstance(decoded, list) and decoded and isinstance(decoded[0], list) and all(
            isinstance(f, bytes) for f in decoded[0]) and len(decoded[0]) < rlp_guard.MAX_HEADER_ITEMS:
        if rlp_guard.header_rlp(data) != rlp.encode(decoded[0]):
            raise Mismatch("the header slice differs from pyrlp's re-encoding")


_MSGPACK_FRAMING = (msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError)


def _msgpack_structure(data: bytes) -> None:
    """check_structure against msgpack itself: same framing verdict (limits aside)."""
    try:
        cwire.check_structure(data, max_depth=512, max_objects=1 << 20)
        ours: Exception | None = None
    except MalformedMessage as exc:
        ours = exc
    try:
        msgpack.unpackb(data, raw=True, strict_map_key=False, use_list=True)
        theirs: Exception | None = None
    except Exception as exc:  # noqa: BLE001 - classified below
        theirs = exc
    framing = isinstance(theirs, _MSGPACK_FRAMING) or (
        isinstance(theirs, ValueError) and "incomplete input" in str(theirs))
    if ours is None and framing:
        raise Mismatch(f"check_structure accepts bytes msgpack cannot frame: {theirs!r}")
    if ours is not None and theirs is None and "deeper" not in str(ours) and "more than" not in str(ours):
        raise Mismatch(f"check_structure rejects what msgpack decodes: {ours}")
    if ours is not None:
        raise ours


def _codec_update(data: bytes) -> None:
    update = decode_update(data)
    if encode_update(update) != data:
        raise Mismatch("a decoded update does not re-encode to its bytes")


def _codec_compressed(data: bytes) -> None:
    """A compressed update read without and with the form its first tensor declares: the same values."""
    update = decode_compressed(data)
    if len(data) > 16 and update:
        name_len = struct.unpack_from("<H", data, 10)[0]
        ndim = data[12 + name_len]
        bits, layout = data[12 + name_len + 1 + 4 * ndim + 4], data[12 + name_len + 1 + 4 * ndim + 5]
        spec = Compression("topk" if layout else "quantize", bits)
        try:
            again = decode_compressed(data, spec)
        except AggregationError:
            return  # a later tensor in another form: refused, as it must be
        if any(not torch.equal(again[n].values, q.values) or again[n].exponent != q.exponent
               for n, q in update.items()):
            raise Mismatch("a compressed update decodes differently with its own form given")


def _codec_model(data: bytes) -> None:
    model = decode_model(data)
    if encode_model(model) != data:
        raise Mismatch("a decoded model does not re-encode to its bytes")


class _Host:
    def __init__(self) -> None:
        from libp2p.peer.peerstore import PeerStore

        self._store = PeerStore()

    def get_peerstore(self) -> Any:
        return self._store


@cache
def _record_host() -> _Host:
    return _Host()  # one host, so the module's accepted-record cache is exercised too


def _pubsub_record(data: bytes) -> None:
    from libp2p.pubsub.pb import rpc_pb2

    from swarmnode.p2p import pubsub_records

    msg = rpc_pb2.RPC()
    msg.senderRecord = data
    log = logging.getLogger("libp2p.pubsub.utils")  # logs every rejected record at ERROR
    disabled, log.disabled = log.disabled, True
    try:
        result = pubsub_records.consume_signed_record(msg, _record_host(), record_material()["peer_id"])
    finally:
        log.disabled = disabled
    if not isinstance(result, bool):
        raise Mismatch(f"consume_signed_record returned {result!r}")


@functools.lru_cache(maxsize=1)
def secagg_seeds() -> dict[str, list[bytes]]:
    """A real bundle and reveal of a 3-participant round (swarmnode/privacy/secagg.py), and the calldata of
    the SwarmRounds calls that carry them."""
    from swarmnode.node import txs
    from swarmnode.privacy import secagg

    secrets_ = [bytes([i + 1]) * 32 for i in range(3)]
    shares = [(i, secagg.share_keypair(s, 7)[1]) for i, s in enumerate(secrets_)]
    posts = [secagg.make_round_keys(s, i, 7, 2, shares, 2)[0] for i, s in enumerate(secrets_)]
    ks, _ = secagg.build_keyset(7, 2, posts, dict(shares))
    reveal = secagg.reveal(0, secagg.share_keypair(secrets_[0], 7)[0], ks, [0, 1])
    return {"bundle": [p.bundle for p in posts], "reveal": [reveal],
            "calldata": [txs.post_keys_data(2, posts[0].mask_pk, posts[0].commit, posts[0].bundle),
                         txs.reveal_data(2, reveal)]}


def _secagg_calldata(data: bytes) -> None:
    from swarmnode.node import txs

    post, rv = txs.decode_post_keys(data), txs.decode_reveal_call(data)
    if post is not None and not (isinstance(post[3], bytes) and isinstance(post[0], int)):
        raise Mismatch(f"decode_post_keys returned {post!r}")
    if rv is not None and not isinstance(rv[1], bytes):
        raise Mismatch(f"decode_reveal_call returned {rv!r}")


def _roundtrip_wire(data: bytes) -> bytes:
    env = wire.decode(data, wire.MAX_GOSSIP_BYTES)
    return wire.encode(env, wire.MAX_GOSSIP_BYTES)


def _roundtrip_block(data: bytes) -> bytes:
    m = chain_material()
    return rlp.encode(decode_block(data, m.vm_class, m.gas_limit), cache=False)


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("p2p.wire", _p2p_wire, (WireError,), "msgpack", p2p_seeds, _roundtrip_wire,
           "swarmnode.p2p.wire.decode: every envelope (gossip, streams)"),
    Target("p2p.handshake", _handshake, (WireError,), "msgpack", lambda: [
               _hello(7, ("/ip4/127.0.0.1/tcp/4001",)), _hello(0, ()), _hello(2**40, ("/dns4/x/tcp/1",) * 8)],
           lambda d: wire.encode(encode_hello(decode_hello(d)), wire.MAX_CONTROL_FRAME),
           "swarmnode.p2p.handshake.decode_hello"),
    Target("p2p.peers", _peers, (WireError,), "msgpack", p2p_seeds, None,
           "swarmnode.p2p.peers.decode_listing (peer exchange)"),
    Target("p2p.gossip", _gossip, (), "msgpack", p2p_seeds, None,
           "swarmnode.p2p.topics.check_message on the tx, consensus and updates topics"),
    Target("p2p.sync_block", _sync_block, (P2PError, ConsensusError), "msgpack", lambda: [
               _envelope(wire.SYNC_BLOCK, [1, b, consensus_material()["certificates"][0]], 1 << 24)
               for b in chain_material().blocks], None,
           "swarmnode.p2p.sync.ChainSync._read_block, then the block's id"),
    Target("p2p.pubsub_record", _pubsub_record, (), "protobuf", lambda: record_material()["seeds"], None,
           "swarmnode.p2p.pubsub_records.consume_signed_record (signed peer records on every pubsub RPC)"),
    Target("consensus.messages", _consensus_inbound, (ConsensusError,), "msgpack",
           lambda: consensus_material()["messages"], lambda d: cmsg.encode(cmsg.decode(d)),
           "consensus.messages.decode, vote signer, block id, certificate"),
    Target("consensus.certificate", _certificate, (ConsensusError,), "msgpack",
           lambda: consensus_material()["certificates"], lambda d: CommitCertificate.decode(d).encode(),
           "consensus.certificate.CommitCertificate.decode and verify_certificate"),
    Target("consensus.evidence", _evidence, (ConsensusError,), "msgpack",
           lambda: consensus_material()["evidence"], None,
           "two wire votes -> consensus.evidence make/verify_evidence, slash_calldata"),
    Target("consensus.envelope", _envelope_decode, (EnvelopeError,), "rlp",
           lambda: [Envelope(b, b"consensus").encode() for b in chain_material().blocks],
           lambda d: Envelope.decode(d).encode(), "consensus.envelope.Envelope.decode"),
    Target("consensus.block_hash", _block_hash, (MalformedMessage,), "rlp", lambda: list(chain_material().blocks),
           None, "consensus.chain_app.block_hash_of (proposals, sync responses)"),
    Target("chain.decode_block", _decode_block, (InvalidBlock,), "rlp", lambda: list(chain_material().blocks),
           _roundtrip_block, "consensus.chain.decode_block (validation, import, sync)"),
    Target("chain.decode_transaction", _decode_tx, (InvalidTransaction,), "tx",
           lambda: list(chain_material().raw_txs), lambda d: decode_transaction(d, chain_material().vm_class).encode(),
           "consensus.chain.decode_transaction (gossip ingest, RPC eth_sendRawTransaction)"),
    Target("txpool.add_raw", _txpool, (TxRejected,), "tx", lambda: list(chain_material().raw_txs), None,
           "consensus.txpool.TxPool.add_raw"),
    Target("rlp_guard.scan", _rlp_scan, (rlp_guard.MalformedRLP,), "rlp",
           lambda: list(chain_material().blocks) + [r for r in chain_material().raw_txs if r[0] >= 0x80], None,
           "consensus.rlp_guard.scan, differential against pyrlp"),
    Target("msgpack.check_structure", _msgpack_structure, (MalformedMessage,), "msgpack",
           lambda: p2p_seeds() + consensus_material()["messages"], None,
           "consensus.wire.check_structure, differential against msgpack"),
    Target("codec.update", _codec_update, (AggregationError,), "codec-update", lambda: codec_seeds()["update"],
           lambda d: encode_update(decode_update(d)), "swarmnode.aggregation.codec.decode_update"),
    Target("codec.compressed", _codec_compressed, (AggregationError,), "codec-update",
           lambda: codec_seeds()["compressed"], None, "swarmnode.aggregation.compress.decode_compressed"),
    Target("codec.model", _codec_model, (AggregationError,), "codec-model", lambda: codec_seeds()["model"],
           lambda d: encode_model(decode_model(d)), "swarmnode.aggregation.codec.decode_model"),
    Target("secagg.bundle", lambda d: secagg_lib.decode_bundle(d), (secagg_lib.MalformedSecAgg,), "bytes",
           lambda: secagg_seeds()["bundle"], lambda d: secagg_lib.encode_bundle(secagg_lib.decode_bundle(d)),
           "swarmnode.privacy.secagg.decode_bundle (postMaskKeys calldata of any participant)"),
    Target("secagg.reveal", lambda d: secagg_lib.decode_reveal(d), (secagg_lib.MalformedSecAgg,), "bytes",
           lambda: secagg_seeds()["reveal"], lambda d: secagg_lib.encode_reveal(secagg_lib.decode_reveal(d)),
           "swarmnode.privacy.secagg.decode_reveal (revealShares calldata of any participant)"),
    Target("secagg.calldata", _secagg_calldata, (), "bytes", lambda: secagg_seeds()["calldata"], None,
           "swarmnode.node.txs.decode_post_keys / decode_reveal_call (calldata read out of blocks)"),
]}


# ---------------------------------------------------------------- inputs


def rand_bytes(rng: random.Random, n: int) -> bytes:
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n > 0 else b""


def _size(rng: random.Random) -> int:
    return rng.choice((rng.randint(0, 8), rng.randint(0, 64), rng.randint(0, 1024), rng.randint(0, 16_384)))


def random_input(rng: random.Random, seeds: Sequence[bytes]) -> bytes:
    """Random bytes, half the time behind the first bytes of a valid encoding (to get past magic/headers)."""
    if seeds and rng.random() < 0.5:
        seed = rng.choice(seeds)
        return seed[: rng.randint(0, min(len(seed), 64))] + rand_bytes(rng, _size(rng))
    return rand_bytes(rng, _size(rng))


_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0x81, 0xB7, 0xB8, 0xBF, 0xC0, 0xC1, 0xF7, 0xF8, 0xFF,
                0x90, 0x9F, 0xC4, 0xC6, 0xCC, 0xCF, 0xD3, 0xDC, 0xDD, 0xDE, 0xDF)
_WORDS = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1)


def _at(rng: random.Random, data: bytes) -> int:
    return rng.randint(0, len(data))


def _flip(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    if not data:
        return bytes([rng.getrandbits(8)])
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]


def _interesting_byte(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    if not data:
        return bytes([rng.choice(_INTERESTING)])
    i = rng.randrange(len(data))
    return data[:i] + bytes([rng.choice(_INTERESTING)]) + data[i + 1:]


def _word(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    size = rng.choice((1, 2, 4, 8))
    value = rng.choice(_WORDS) & ((1 << (8 * size)) - 1)
    raw = value.to_bytes(size, rng.choice(("big", "little")))
    i = _at(rng, data)
    return data[:i] + raw + data[i + (size if rng.random() < 0.7 else 0):]


def _truncate(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    return data[: _at(rng, data)]


def _extend(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    return data + rand_bytes(rng, rng.choice((1, 2, 8, 64, 1024)))


def _delete(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    i = _at(rng, data)
    return data[:i] + data[i + rng.randint(1, 64):]


def _duplicate(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    i = _at(rng, data)
    j = min(len(data), i + rng.randint(1, 256))
    return data[:j] + data[i:j] * rng.randint(1, 8) + data[j:]


def _insert(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    i = _at(rng, data)
    return data[:i] + rand_bytes(rng, rng.randint(1, 16)) + data[i:]


def _splice(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    other = rng.choice(seeds) if seeds else data
    return data[: _at(rng, data)] + other[_at(rng, other):]


GENERIC = (_flip, _interesting_byte, _word, _truncate, _extend, _delete, _duplicate, _insert, _splice)


# ---- RLP

def rlp_prefix(length: int, offset: int) -> bytes:
    """RLP length prefix (offset 0x80 for strings, 0xc0 for lists)."""
    if length < 56:
        return bytes([offset + length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([offset + 55 + len(raw)]) + raw


def rlp_nested(depth: int, inner: bytes = b"\xc0") -> bytes:
    """`depth` lists around `inner`, built iteratively and in linear time (rlp.encode would recurse)."""
    prefixes = []
    length = len(inner)
    for _ in range(depth):
        prefix = rlp_prefix(length, 0xC0)
        prefixes.append(prefix)
        length += len(prefix)
    return b"".join(reversed(prefixes)) + inner


def _rlp_tokens(rng: random.Random) -> bytes:
    return rng.choice((
        lambda: rlp_nested(rng.choice((rlp_guard.MAX_RLP_DEPTH, rlp_guard.MAX_RLP_DEPTH + 1, 64, 3000, 9000))),
        lambda: b"\xbf" + b"\xff" * 8, lambda: b"\xff" + b"\x7f" + b"\xff" * 7, lambda: b"\xb8\x00",
        lambda: b"\xb8\x37", lambda: b"\x81\x05", lambda: b"\xf8\x00", lambda: b"\xf9\x00\x40", lambda: b"\xc1",
        lambda: rlp_prefix(33, 0x80) + b"\xff" * 33, lambda: rlp_prefix(rng.randint(0, 2**20), 0x80),
        lambda: rlp_prefix(4000, 0xC0) + b"\x01" * 4000,
    ))()


def _rlp_insert(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    i = _at(rng, data)
    return data[:i] + _rlp_tokens(rng) + data[i + (rng.randint(1, 4) if rng.random() < 0.5 else 0):]


def _rlp_wrap(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    return rlp_nested(rng.choice((1, 2, rlp_guard.MAX_RLP_DEPTH, 5000)), data)


@dataclass
class _Raw:
    """Pre-encoded RLP inside a tree being re-encoded."""

    data: bytes


def _rlp_encode_tree(node: Any) -> bytes:
    if isinstance(node, _Raw):
        return node.data
    if isinstance(node, bytes):
        return node if len(node) == 1 and node[0] < 0x80 else rlp_prefix(len(node), 0x80) + node
    payload = b"".join(_rlp_encode_tree(child) for child in node)
    return rlp_prefix(len(payload), 0xC0) + payload


def _rlp_replace(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    """Decode (if shallow), replace one node with something hostile, re-encode with correct lengths."""
    try:
        rlp_guard.scan(data, max_depth=16, max_items=1 << 16)
        tree = rlp.decode(data)
    except (rlp_guard.MalformedRLP, rlp.DecodingError):
        return _rlp_insert(rng, data, seeds)
    paths: list[tuple[int, ...]] = []
    stack: list[tuple[tuple[int, ...], Any]] = [((), tree)]
    while stack and len(paths) < 4096:
        path, node = stack.pop()
        paths.append(path)
        if isinstance(node, list):
            stack.extend((path + (i,), child) for i, child in enumerate(node))
    path = rng.choice(paths)
    replacement: Any = rng.choice((
        lambda: _Raw(rlp_nested(rng.choice((9, 100, 4000, 12_000)))), lambda: b"\xff" * rng.choice((9, 32, 33, 64, 300)),
        lambda: b"\x00" + b"\x01", lambda: b"", lambda: [], lambda: [b"\x01"] * rng.choice((2, 100, 5000)),
        lambda: rand_bytes(rng, rng.randint(0, 70)), lambda: [[b""]] * 3,
    ))()
    if not path:
        return _rlp_encode_tree(replacement)
    parent = tree
    for i in path[:-1]:
        parent = parent[i]
    parent[path[-1]] = replacement
    return _rlp_encode_tree(tree)


def _rlp_noncanonical(rng: random.Random, payload: bytes) -> bytes:
    """A string encoded in a way pyrlp's strict decoder refuses (or, by chance, the canonical way)."""
    return rng.choice((
        lambda: b"\x81" + bytes([rng.randrange(0x80)]),  # a single byte as a one-byte string
        lambda: b"\xb8" + bytes([len(payload) % 56]) + payload[:55],  # long form for a short string
        lambda: b"\xb9\x00" + bytes([len(payload) % 256]) + payload[:255],  # a length with a leading zero
        lambda: b"\xf8" + bytes([len(payload) % 56]) + payload[:55],  # long form for a short list
        lambda: rlp_prefix(len(payload), 0x80) + payload,
    ))()


def rlp_tree(rng: random.Random, depth: int = 0) -> Any:
    """A random RLP value: strings around the encoding's boundaries (1, 55, 56 bytes), nested lists,
    now and then a pre-encoded non-canonical string."""
    if depth < 6 and rng.random() < 0.35:
        return [rlp_tree(rng, depth + 1) for _ in range(rng.choice((0, 1, 2, 3, 5, 17)))]
    if rng.random() < 0.05:
        return _Raw(_rlp_noncanonical(rng, rand_bytes(rng, rng.randint(0, 70))))
    return rand_bytes(rng, rng.choice((0, 1, 1, 2, 20, 32, 55, 56, 57, 300)))


def _rlp_gen(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    return _rlp_encode_tree(rlp_tree(rng))


RLP_OPS = (_rlp_insert, _rlp_wrap, _rlp_replace, _rlp_replace, _rlp_gen)


def _tx_type(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    t = bytes([rng.choice((0, 1, 2, 3, 4, 5, 0x7F, 0x80, 0xC0))])
    return t + (data[1:] if data and data[0] < 0x80 else data)


def _tx_payload(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    """An RLP mutation of a typed transaction's payload, keeping its type byte."""
    if data and data[0] < 0x80:
        return data[:1] + rng.choice(RLP_OPS)(rng, data[1:], [s[1:] for s in seeds if s and s[0] < 0x80])
    return rng.choice(RLP_OPS)(rng, data, seeds)


TX_OPS = (_tx_type, _tx_payload, _tx_payload, _tx_payload)


# ---- msgpack

def _mp_tokens(rng: random.Random) -> bytes:
    return rng.choice((
        lambda: b"\x91" * rng.choice((cwire.MAX_DEPTH, cwire.MAX_DEPTH + 1, 100, 1100, 5000)) + b"\xc0",
        lambda: b"\xdd\xff\xff\xff\xff", lambda: b"\xdc\xff\xff", lambda: b"\xc6\xff\xff\xff\xff",
        lambda: b"\xc5\xff\xff", lambda: b"\xdb\xff\xff\xff\xff", lambda: b"\xcf" + b"\xff" * 8,
        lambda: b"\xd3\x80" + b"\x00" * 7, lambda: b"\xc1", lambda: b"\x81\xa1a\x01", lambda: b"\x81\x90\x01",
        lambda: b"\xd4\x01\x00", lambda: b"\xc7\xff\x01", lambda: b"\xcb\x7f\xf8" + b"\x00" * 6,
        lambda: b"\xa3\xff\xfe\xfd", lambda: b"\xdc\x10\x00" + b"\x90" * 4096, lambda: b"\xde\xff\xff",
    ))()


def _mp_insert(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    i = _at(rng, data)
    return data[:i] + _mp_tokens(rng) + data[i + (rng.randint(1, 4) if rng.random() < 0.5 else 0):]


def _mp_value(rng: random.Random) -> Any:
    return rng.choice((
        lambda: rng.choice(_WORDS), lambda: -rng.choice(_WORDS[1:-1]), lambda: 2**64 - 1, lambda: -(2**63),
        lambda: b"", lambda: rand_bytes(rng, rng.choice((1, 31, 32, 33, 64, 65, 66))),
        lambda: b"\x00" * rng.choice((257, 70_000)), lambda: "x" * rng.choice((1, 257, 1025)), lambda: None,
        lambda: True, lambda: 1.5, lambda: float("nan"), lambda: [], lambda: [0] * rng.choice((2, 7, 4097)),
        lambda: {"k": 1}, lambda: [[[[[[[[[0]]]]]]]]], lambda: msgpack.ExtType(1, b"x"),
    ))()


def _mp_replace(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    """Decode (if it decodes), replace one node (or a byte string's nested msgpack), re-pack."""
    try:
        cwire.check_structure(data, max_depth=32, max_objects=1 << 16)
        tree = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - not ours to decode: fall back to a byte-level mutation
        return _mp_insert(rng, data, seeds)
    paths: list[tuple[int, ...]] = []
    stack: list[tuple[tuple[int, ...], Any]] = [((), tree)]
    while stack and len(paths) < 4096:
        path, node = stack.pop()
        paths.append(path)
        if isinstance(node, list):
            stack.extend((path + (i,), child) for i, child in enumerate(node))
    path = rng.choice(paths)
    node = tree
    for i in path:
        node = node[i]
    if isinstance(node, bytes) and node and rng.random() < 0.5:  # nested encodings (messages in envelopes)
        fmt_ops = MSGPACK_OPS[:2] + RLP_OPS[:2] + GENERIC
        replacement: Any = rng.choice(fmt_ops)(rng, node, [])
    else:
        replacement = _mp_value(rng)
    if not path:
        tree = replacement
    else:
        parent = tree
        for i in path[:-1]:
            parent = parent[i]
        parent[path[-1]] = replacement
    try:
        return msgpack.packb(tree, use_bin_type=True)
    except Exception:  # noqa: BLE001 - e.g. nesting beyond packb's own limit
        return _mp_insert(rng, data, seeds)


MSGPACK_OPS = (_mp_insert, _mp_replace, _mp_replace, _mp_replace)


# ---- the model/update codec

_CODEC_HEADER = struct.Struct("<4sBBI")


def codec_blob(rng: random.Random, kind: int) -> bytes:
    """A structurally plausible blob with hostile fields: shapes with zero and huge dimensions, declared
    counts and name lengths that lie, wrong dtypes and exponents, data missing, short or too long."""
    n = rng.choice((0, 1, 1, 2, 3))
    declared = rng.choice((n, n, n, n + 1, 2**32 - 1, 1025))
    out = [_CODEC_HEADER.pack(b"SWNM" if rng.random() < 0.95 else b"SWNX", 1 if rng.random() < 0.95 else 2,
                              kind if rng.random() < 0.95 else 3 - kind, declared)]
    names = sorted(rng.choice(("a", "b", "c", "~server/x", "é", "w" * 256)) for _ in range(n))
    valid_codes = (2,) if kind == 2 else (1, 3)
    for name in names:
        raw = name.encode() if rng.random() < 0.95 else b"\xff\xfe"
        name_len = len(raw) if rng.random() < 0.9 else rng.choice((0, 257, 0xFFFF))
        code = rng.choice(valid_codes) if rng.random() < 0.9 else rng.choice((0, 1, 2, 3, 4, 255))
        ndim = rng.choice((0, 1, 2, 3, 8)) if rng.random() < 0.9 else rng.choice((9, 255))
        dims = [rng.choice((0, 1, 2, 3, 5, 2**16, 2**31, 2**32 - 1, rng.getrandbits(32))) for _ in range(min(ndim, 8))]
        if dims and rng.random() < 0.5:
            dims[rng.randrange(len(dims))] = 0  # the zero dimension that hid the others
        exponent = (0 if code == 1 else rng.randint(-80, 80)) if rng.random() < 0.9 else rng.choice((-32768, 81, 32767))
        out.append(struct.pack("<H", name_len) + raw + struct.pack("<BB", code, ndim))
        out.append(struct.pack(f"<{len(dims)}I", *dims) + struct.pack("<h", exponent))
        count = 1
        for d in dims:
            count *= d
        size = count * (8 if code == 3 else 4)
        if size <= 1 << 16 and rng.random() < 0.8:
            out.append(rand_bytes(rng, size) if code != 1 or rng.random() < 0.5 else struct.pack("<f", 1.5) * count)
        else:
            out.append(rand_bytes(rng, rng.choice((0, 3, 64))))
    return b"".join(out)


def _codec_update_gen(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    return codec_blob(rng, 2)


def _codec_model_gen(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    return codec_blob(rng, 1)


def _codec_shape(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    """Rewrite the first tensor's shape in place (header 10 bytes, name, dtype, ndim, dims)."""
    if len(data) < 13:
        return data
    name_len = int.from_bytes(data[10:12], "little")
    at = 12 + name_len + 1  # ndim byte
    if at >= len(data):
        return data
    ndim = data[at]
    dims = b"".join(struct.pack("<I", rng.choice((0, 1, 2**31, 2**32 - 1))) for _ in range(min(ndim, 8)))
    return data[: at + 1] + dims + data[at + 1 + 4 * min(ndim, 8):]


CODEC_UPDATE_OPS = (_codec_update_gen, _codec_update_gen, _codec_shape)
CODEC_MODEL_OPS = (_codec_model_gen, _codec_model_gen, _codec_shape)


# ---- protobuf (signed peer records)

def _pb_insert(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    token = rng.choice((b"\xff" * 10, b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x80\x80\x80\x80\x10", b"\x0a\x00",
                        b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x0b" * 200, b"\x22" + b"\x22\x10" * 60))
    i = _at(rng, data)
    return data[:i] + token + data[i:]


PROTOBUF_OPS = (_pb_insert,)

FORMAT_OPS: dict[str, tuple[Callable[[random.Random, bytes, Sequence[bytes]], bytes], ...]] = {
    "msgpack": MSGPACK_OPS, "rlp": RLP_OPS, "tx": TX_OPS, "codec-update": CODEC_UPDATE_OPS,
    "codec-model": CODEC_MODEL_OPS, "protobuf": PROTOBUF_OPS,
}


def mutate(rng: random.Random, data: bytes, fmt: str, seeds: Sequence[bytes]) -> bytes:
    """One to four mutations, structured (for `fmt`) or byte-level; the result stays below MAX_INPUT
    unless a deep-nesting token alone makes it larger."""
    structured = FORMAT_OPS.get(fmt, ())
    for _ in range(rng.choice((1, 1, 2, 4))):
        ops = structured if structured and rng.random() < 0.6 else GENERIC
        data = rng.choice(ops)(rng, data, seeds)
        if len(data) > MAX_INPUT:
            data = data[:MAX_INPUT]
    return data


def next_input(rng: random.Random, target: Target, seeds: Sequence[bytes]) -> bytes:
    """The fuzzer's input mix: 20% random bytes, 80% mutated seeds."""
    if not seeds or rng.random() < 0.2:
        return random_input(rng, seeds)
    return mutate(rng, rng.choice(seeds), target.fmt, seeds)
